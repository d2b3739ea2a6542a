"""``rsfm plan``: predicted per-device memory of a run, the largest micro batch, a ZeRO choice.

Thin: parse, build a :class:`~rsfm_ds.planning.request.PlanRequest`, call the library, print.
Errors a user can fix are raised as :class:`~rsfm_ds.errors.ConfigError` naming the flag.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

from ..errors import ConfigError
from .common import verb

# PlanRequest field -> the flag that sets it, so errors name what the user typed.
_FLAGS = {"preset": "--preset", "task": "--task", "gpus": "--gpus", "gpu_mem_gb": "--gpu-mem",
          "micro_batch": "--micro-batch", "img_size": "--img-size", "dtype": "--dtype",
          "device": "--device", "zero_stage": "--zero-stage", "window_size": "--window-size",
          "rel_pos": "--no-rel-pos",
          "num_classes": "--num-classes", "objects": "--objects", "overhead_gb": "--overhead-gb",
          "offload": "--offload", "zero_init": "--zero-init", "ds_config": "--ds-config",
          "mode": "--forward-only"}


def _flag_error(e: ConfigError) -> ConfigError:
    field, sep, message = str(e).partition(": ")
    return ConfigError(f"{_FLAGS.get(field, field)}: {message}") if sep else e


def add(sub: argparse._SubParsersAction) -> None:
    from ..planning import DTYPES, TASKS

    p = sub.add_parser(
        "plan", help="predict per-GPU memory: model states under ZeRO, buffers, activations; "
                     "largest micro batch; recommended ZeRO stage and offload",
        description="Predict what one device holds at the peak of a training step of rsfm-ds, "
                    "term by term (docs/planning.md says what is modelled and how it was checked). "
                    "Example: rsfm plan --preset vit_2b4 --task pretrain --gpus 8 --gpu-mem 80")
    # Checked by the plan, not by argparse: listing the presets here would import the models
    # (and torch) for every rsfm command.
    p.add_argument("--preset", help="backbone preset (`rsfm models` lists them)")
    p.add_argument("--task", choices=TASKS, default="pretrain",
                   help="pretrain (MAE), det (Oriented R-CNN) or seg (UperNet); default pretrain")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel devices (default 1)")
    p.add_argument("--gpu-mem", type=float, default=80.0,
                   help="memory per device in GB (default 80); with --device cpu, host memory per rank")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="samples per device per step (default: the largest that fits)")
    p.add_argument("--img-size", type=int, default=None,
                   help="input side in pixels (default 224 pretrain, 1024 det, 512 seg)")
    p.add_argument("--no-checkpointing", action="store_true", help="no activation checkpointing")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="training precision (default bf16)")
    p.add_argument("--offload", action="store_true", help="ZeRO optimizer-state offload to host memory")
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu",
                   help="device profile: CUDA GPUs (default) or CPU ranks (resident memory)")
    p.add_argument("--ds-config", default=None,
                   help="DeepSpeed JSON to read the buckets from (default: the task's shipped one)")
    p.add_argument("--zero-stage", type=int, default=None,
                   help="ZeRO stage (default: the DeepSpeed config's, else the fine-tuning rule)")
    p.add_argument("--no-fused-attn", action="store_true",
                   help="explicit-softmax attention (stores the L x L probabilities)")
    p.add_argument("--zero-init", choices=["auto", "on", "off"], default="auto",
                   help="model built under deepspeed.zero.Init (default: on above 700M backbone parameters)")
    p.add_argument("--window-size", type=int, default=None, help="ViTDet window (default 7 det, 14 seg)")
    p.add_argument("--no-rel-pos", action="store_true",
                   help="ViTDet without relative position bias (backbone.use_rel_pos=false)")
    p.add_argument("--num-classes", type=int, default=None, help="head classes (default 18 det, 6 seg)")
    p.add_argument("--objects", type=int, default=100,
                   help="ground-truth boxes per image for the detector's anchor assignment (default 100)")
    p.add_argument("--overhead-gb", type=float, default=None,
                   help="framework overhead per device in GB (default: the device profile's)")
    p.add_argument("--forward-only", action="store_true",
                   help="a forward pass without gradients or optimizer (evaluation)")
    p.add_argument("--all", action="store_true",
                   help="table of every preset and task on 1 x 80 GB and 8 x 80 GB (other flags "
                        "except --dtype ignored)")
    p.add_argument("--json", action="store_true", help="print JSON")
    verb(p, run)


def run(args: argparse.Namespace) -> int:
    from ..planning import PlanRequest, format_plan, format_table, plan_memory, plan_table, recommend

    if args.all:
        rows = plan_table(gpu_counts=(1, 8), gpu_mem_gb=80.0, dtype=args.dtype)
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
        return 0
    if args.preset is None:
        raise ConfigError("--preset: required (or use --all)")
    try:
        req = PlanRequest(
            preset=args.preset, task=args.task, gpus=args.gpus, gpu_mem_gb=args.gpu_mem,
            micro_batch=args.micro_batch, img_size=args.img_size,
            checkpointing=not args.no_checkpointing, dtype=args.dtype, offload=args.offload,
            device=args.device, ds_config=args.ds_config, zero_stage=args.zero_stage,
            fused_attn=not args.no_fused_attn,
            zero_init={"auto": None, "on": True, "off": False}[args.zero_init],
            window_size=args.window_size, rel_pos=False if args.no_rel_pos else None,
            num_classes=args.num_classes, objects=args.objects,
            overhead_gb=args.overhead_gb, mode="forward" if args.forward_only else "train")
        plan = plan_memory(req)
        rec = recommend(replace(req, zero_stage=None, offload=False)) \
            if req.mode == "train" else None
    except ConfigError as e:
        raise _flag_error(e) from None
    if args.json:
        out = plan.to_dict()
        if rec is not None:
            out["recommendation"] = dict(stage=rec.stage, offload=rec.offload,
                                         micro_batch=rec.micro_batch, reason=rec.reason)
        print(json.dumps(out, indent=2, default=str))
    else:
        print(format_plan(plan, rec))
    return 0
