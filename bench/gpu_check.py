"""One prepared GPU check: every figure docs/benchmarks.md still lacks, in one run of at most 8 minutes.

Parts (each in its own subprocess, with its own time budget inside one overall deadline; a part
that runs over, or that the hardware cannot run, is recorded as skipped with the reason):

- ``mae``: MAE pretraining images/s and MFU per preset (``debug``, ``vit_b12x1``, ``vit_l12x4``,
  ``vit_1b3``, ``vit_2b4``, smallest first, as many as the budget allows) at the planner's largest
  micro batch for the detected device (:func:`rsfm_ds.planning.plan_memory` with ``micro_batch``
  unset, ``gpu_mem_gb`` = the device's memory), bf16 and fp16, activation checkpointing on and off.
  Engine pieces as ``bench/mae_mfu.py``: ``build_model`` (``zero.Init`` where the planner says),
  ``deepspeed.initialize`` with the shipped ZeRO-3 config of the precision, in-memory images.
- ``memory``: the peak device memory of each ``mae`` row against the planner's prediction (ratio).
- ``loader``: the pretraining loader (:mod:`rsfm_ds.data.pretrain.loader`) with one worker per core
  on synthetic MillionAID shards, against the decode-only bound in as many processes; with
  ``data.decode_device=cuda`` too where a GPU is present.
- ``rotated_ops``: ``box_iou_rotated`` and ``nms_rotated`` (:mod:`rsfm_ds.ops`) on CUDA against
  CPU, same boxes.
- ``finetune``: a few steps of ``rsfm finetune det`` (``configs/det/dota2_debug.yaml``) and ``rsfm
  finetune seg`` (``configs/seg/potsdam_debug.yaml``) on synthetic data, images/s from the run's
  ``metrics.jsonl``.

Everything runs from the repository and a temporary folder: synthetic data is written by the
project's own generators, nothing is downloaded. Writes one JSON (``--out``) and prints a markdown
table per part. ``--smoke`` runs every part at toy sizes on the CPU (under a minute), which is what
``tests/test_gpu_check.py`` checks. Figures, never assertions.

    bash bench/gpu_check.sh                 # on the GPU machine, from the repository root
    bash bench/gpu_check.sh --smoke         # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("environment", "mae", "memory", "loader", "rotated_ops", "finetune")
GPU_PRESETS = ("debug", "vit_b12x1", "vit_l12x4", "vit_1b3", "vit_2b4")


@dataclass(frozen=True)
class Sizes:
    """What each part runs at: the GPU sizes, or the toy sizes of ``--smoke``."""

    presets: tuple
    """MAE presets, smallest first."""
    img_size: int
    """MAE input side, px."""
    max_micro_batch: int
    """Cap on the planner's micro batch: the tiny presets would fit tens of thousands of images,
    where a step only measures the same kernels longer (rows record the planner's figure too)."""
    warmup: int
    steps: int
    """MAE steps timed per row, after ``warmup``."""
    loader_images: int
    loader_image_side: tuple
    """(min, max) side of the synthetic JPEGs, px."""
    ops_boxes: int
    """Boxes per side of the rotated IoU matrix and in NMS."""
    finetune_steps: int
    finetune_image: int
    """Detection image side and segmentation crop side, px."""
    budgets: Dict[str, float]
    """Seconds per part; the overall deadline is their sum."""


GPU = Sizes(presets=GPU_PRESETS, img_size=224, max_micro_batch=2048, warmup=2, steps=5, loader_images=1500,
            loader_image_side=(256, 1024), ops_boxes=2000, finetune_steps=30, finetune_image=512,
            budgets={"mae": 270, "loader": 60, "rotated_ops": 30, "finetune": 90})
SMOKE = Sizes(presets=("debug",), img_size=32, max_micro_batch=2, warmup=1, steps=1, loader_images=48,
              loader_image_side=(64, 160), ops_boxes=64, finetune_steps=1, finetune_image=128,
              budgets={"mae": 40, "loader": 25, "rotated_ops": 15, "finetune": 60})


# --------------------------------------------------------------------------------------- parts

def part_environment(sizes: Sizes, work: Path) -> Dict[str, Any]:
    import torch

    info: Dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cores": os.cpu_count(),
                            "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, bf16=torch.cuda.is_bf16_supported(),
                    multiprocessors=props.multi_processor_count)
    return info


def _precisions() -> Dict[str, Optional[str]]:
    """Precision -> None if DeepSpeed runs it on this hardware, else why not."""
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    name = acc.device_name()
    return {"bf16": None if acc.is_bf16_supported() else f"DeepSpeed has no bf16 on {name} here",
            "fp16": None if acc.is_fp16_supported() else f"DeepSpeed has no fp16 on {name} here"}


def _plan(preset: str, precision: str, checkpointing: bool, sizes: Sizes, micro_batch: Optional[int] = None):
    """The planner's prediction for one MAE row on this device (its largest micro batch by default)."""
    import torch

    from rsfm_ds.planning import PlanRequest, default_ds_config, plan_memory

    device = "gpu" if torch.cuda.is_available() else "cpu"
    mem_gb = (torch.cuda.get_device_properties(0).total_memory / 1e9 if device == "gpu"
              else 8.0)  # CPU smoke: any figure that fits the toy model
    req = PlanRequest(preset=preset, task="pretrain", gpus=1, gpu_mem_gb=mem_gb, micro_batch=micro_batch,
                      img_size=sizes.img_size, checkpointing=checkpointing, dtype=precision, device=device,
                      ds_config=default_ds_config("pretrain", device, precision, offload=False))
    return plan_memory(req)


def part_mae_preset(preset: str, sizes: Sizes, work: Path) -> Dict[str, Any]:
    """All rows of one preset (precision x checkpointing) in this process: one engine per precision,
    checkpointing switched on the same model (the planner's micro batch differs between the two)."""
    import gc

    import torch

    from rsfm_ds.engine.deepspeed_setup import device_for, init_distributed

    _, local_rank, _ = init_distributed()
    device = device_for(local_rank)
    context = 0
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        context = total - free  # CUDA context + NCCL; the planner's overhead term includes it
    rows: List[Dict[str, Any]] = []
    out = work / f"mae_{preset}.json"
    for precision, why_not in _precisions().items():
        if why_not:
            rows.append(dict(preset=preset, precision=precision, skipped=why_not))
            continue
        try:
            rows += _mae_rows(preset, precision, sizes, device, context, out, rows)
        except Exception as e:  # noqa: BLE001 - one precision failing must not lose the other's rows
            rows.append(dict(preset=preset, precision=precision, error=f"{type(e).__name__}: {e}"[:500]))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out.write_text(json.dumps(rows))
    return {"rows": rows}


def _mae_rows(preset: str, precision: str, sizes: Sizes, device, context: int, out: Path,
              done: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows of one precision: checkpointing off, then on, on one engine."""
    import torch

    from rsfm_ds.engine.config import OptimConfig
    from rsfm_ds.engine.deepspeed_setup import (build_model, device_peak_tflops, initialize, load_ds_config,
                                                model_dtype, peak_memory_bytes, reconcile_ds_config)
    from rsfm_ds.engine.param_groups import build_param_groups
    from rsfm_ds.models.mae import create_mae, mae_train_flops

    from mae_mfu import matmul_peak_tflops

    plans = {ckpt: _plan(preset, precision, ckpt, sizes) for ckpt in (False, True)}
    mbs = {ckpt: min(p.max_micro_batch, sizes.max_micro_batch) for ckpt, p in plans.items()}
    if max(mbs.values()) < 1:
        return [dict(preset=preset, precision=precision, skipped="does not fit (planner)")]
    ds_path = plans[True].ds_config
    ds = reconcile_ds_config(load_ds_config(ds_path), micro_batch_size=max(mbs.values()),
                             global_batch_size=max(mbs.values()), world_size=1, precision=precision,
                             clip_grad=1.0, source=ds_path)
    torch.manual_seed(0)
    model = build_model(lambda: create_mae(preset, img_size=sizes.img_size, fused_attn=True), ds,
                        plans[True].zero_init)
    engine, _ = initialize(model, build_param_groups(model, 0.05), ds, OptimConfig())
    dtype = model_dtype(precision)
    rows: List[Dict[str, Any]] = []
    for ckpt in (False, True):  # off first: its peak is the higher, measured before on's
        mb = mbs[ckpt]
        row: Dict[str, Any] = dict(preset=preset, precision=precision, checkpointing=ckpt, micro_batch=mb,
                                   planner_max_micro_batch=plans[ckpt].max_micro_batch)
        if mb < 1:
            rows.append({**row, "skipped": "does not fit (planner)"})
            continue
        plan = _plan(preset, precision, ckpt, sizes, micro_batch=mb)
        model.set_grad_checkpointing(ckpt)
        images = torch.randn(mb, 3, sizes.img_size, sizes.img_size, device=device, dtype=dtype)
        try:
            seconds = _time_steps(engine, images, sizes, device)
        except torch.OutOfMemoryError as e:
            rows.append({**row, "skipped": f"out of memory: {str(e)[:200]}"})
            torch.cuda.empty_cache()
            continue
        peak_tflops = device_peak_tflops(device, None) or matmul_peak_tflops(precision)
        tflops = mb / seconds * mae_train_flops(preset, img_size=sizes.img_size) / 1e12
        peak = peak_memory_bytes(device) + context
        rows.append({**row, "step_seconds": seconds, "images_per_s": mb / seconds, "tflops": tflops,
                     "peak_tflops": peak_tflops, "mfu": tflops / peak_tflops, "peak_memory_bytes": peak,
                     "predicted_peak_bytes": plan.peak, "memory_ratio": peak / plan.peak})
        out.write_text(json.dumps(done + rows))  # what is done survives a kill at the budget
    return rows


def _time_steps(engine, images, sizes: Sizes, device) -> float:
    """Seconds per training step on ``images`` (after ``sizes.warmup`` steps), peak memory reset first."""
    import torch

    def step() -> None:
        loss, _, _ = engine(images)
        engine.backward(loss)
        engine.step()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        from rsfm_ds.planning.measure import reset_peak_rss
        reset_peak_rss()
    from mae_mfu import seconds_per_step

    return seconds_per_step(step, sizes.warmup, sizes.steps, device)


def part_loader(sizes: Sizes, work: Path) -> Dict[str, Any]:
    """Loader images/s with one worker per core (uint8 batches moved and normalised on the device,
    as the engine consumes them), against decode-only in as many processes; GPU decoding too."""
    import torch

    from rsfm_ds.data.pretrain.loader import PretrainDataConfig, build_pretrain_loader
    from rsfm_ds.data.pretrain.shards import write_millionaid_shards
    from rsfm_ds.data.synth.millionaid import synth_millionaid

    from data_throughput import decode_only

    tree, shards = work / "millionaid", work / "shards"
    lo, hi = sizes.loader_image_side
    synth_millionaid(tree, images=sizes.loader_images, seed=0, min_size=lo, max_size=hi)
    cores = os.cpu_count() or 1
    write_millionaid_shards(tree, shards, maxcount=64, workers=min(cores, 8))
    paths = sorted(str(p) for p in (tree / "train").rglob("*.jpg"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: List[Dict[str, Any]] = []
    t = time.perf_counter()
    n = decode_only(paths, cores)
    bound = n / (time.perf_counter() - t)
    rows.append(dict(pipeline="decode-only cv2", workers=cores, images_per_s=bound))
    modes = ["cpu"] + (["cuda"] if device.type == "cuda" else [])
    for decode in modes:
        cfg = PretrainDataConfig(shards=str(shards / "manifest.json"), num_workers=cores, decode_device=decode,
                                 img_size=min(224, lo), pin_memory=device.type == "cuda")
        t, n = time.perf_counter(), 0
        for batch in build_pretrain_loader(cfg, 64, rank=0, world_size=1):
            n += batch.normalized(device, torch.bfloat16, non_blocking=True).shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = n / (time.perf_counter() - t)
        rows.append(dict(pipeline=f"loader, decode on {decode}", workers=cores, images_per_s=rate,
                         ratio_to_decode_only=rate / bound))
    if device.type != "cuda":
        rows.append(dict(pipeline="loader, decode on cuda", skipped="no GPU"))
    return {"rows": rows}


def part_rotated_ops(sizes: Sizes, work: Path) -> Dict[str, Any]:
    """Rotated IoU matrix and rotated NMS on the same random boxes, CPU then CUDA."""
    import torch

    from rsfm_ds.ops import box_iou_rotated, nms_rotated

    g = torch.Generator().manual_seed(0)
    n = sizes.ops_boxes
    side = 1024.0
    # Dense-ish scene: centres in a 1024 px square, sides 8-128 px, any angle in le90.
    boxes = torch.cat([torch.rand(n, 2, generator=g) * side, 8 + torch.rand(n, 2, generator=g) * 120,
                       (torch.rand(n, 1, generator=g) - 0.5) * torch.pi], dim=1)
    scores = torch.rand(n, generator=g)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    timings: Dict[str, Dict[str, float]] = {}
    for dev in devices:
        b, s = boxes.to(dev), scores.to(dev)
        timings[dev] = {"box_iou_rotated": _best_time(lambda: box_iou_rotated(b, b), dev),
                        "nms_rotated": _best_time(lambda: nms_rotated(b, s, 0.1), dev)}
    rows = []
    for op in ("box_iou_rotated", "nms_rotated"):
        row: Dict[str, Any] = dict(op=op, boxes=n, cpu_seconds=timings["cpu"][op])
        if "cuda" in timings:
            row.update(cuda_seconds=timings["cuda"][op], cuda_speedup=timings["cpu"][op] / timings["cuda"][op])
        else:
            row.update(cuda_skipped="no GPU")
        rows.append(row)
    return {"rows": rows}


def _best_time(fn: Callable[[], Any], device: str, repeats: int = 2) -> float:
    import torch

    fn()  # warm-up: allocator, kernels, lazy imports (and a JIT-built extension, if any)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def part_finetune(sizes: Sizes, work: Path, deadline: float) -> Dict[str, Any]:
    """A few steps of each fine-tuning task on synthetic data; images/s from the run's metrics."""
    import torch

    from rsfm_ds.data.seg.potsdam import prepare_potsdam
    from rsfm_ds.data.synth.detection import synth_dota
    from rsfm_ds.data.synth.segmentation import synth_potsdam

    gpu = torch.cuda.is_available()
    s = sizes.finetune_image
    synth_dota(work / "det_train", images=8, seed=0, size=s)
    synth_dota(work / "det_val", images=2, seed=1, size=s, first_id=1000)
    synth_potsdam(work / "seg_raw", tiles=2, seed=0, size=2 * s)  # the last tile is held out
    prepare_potsdam(work / "seg_raw", work / "seg", protocol=5, crop=s, stride=s)
    common = ["--resume", "none", "schedule.by=iter", f"schedule.length={sizes.finetune_steps}",
              "schedule.warmup=0", "eval.keep_best=false", f"checkpoint.every_steps={10 ** 6}",
              f"log.every_steps={max(1, sizes.finetune_steps // 2)}", "log.progress=false", f"eval.every={10 ** 6}"]
    if gpu:
        common += ["train.precision=bf16", "train.ds_config=ds_configs/finetune_bf16.json", "train.num_workers=4"]
    runs = {
        "det": ["det", "--config", "configs/det/dota2_debug.yaml", f"run_dir={work / 'run_det'}",
                f"data.train_dirs=[{work / 'det_train'}]", f"data.val_dir={work / 'det_val'}",
                f"backbone.img_size={s}"],
        "seg": ["seg", "--config", "configs/seg/potsdam_debug.yaml", f"run_dir={work / 'run_seg'}",
                f"data.root={work / 'seg'}", f"backbone.img_size={s}", f"data.crop_size={s}", f"data.eval_stride={s}"],
    }
    rows = []
    for task, args in runs.items():
        left = deadline - time.time()
        if left < 5:
            rows.append(dict(task=task, skipped="over the part's time budget"))
            continue
        cmd = [sys.executable, "-m", "rsfm_ds.cli", "finetune", *args, *common]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            rows.append(dict(task=task, skipped="over the part's time budget"))
            continue
        wall = time.perf_counter() - t
        metrics = _last_metrics(Path(args[3].split("=", 1)[1]) / "metrics.jsonl")
        if proc.returncode != 0 or "perf/images_per_s" not in metrics:
            rows.append(dict(task=task, error=f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"))
            continue
        rows.append(dict(task=task, steps=sizes.finetune_steps, precision="bf16" if gpu else "fp32",
                         images_per_s=metrics["perf/images_per_s"], wall_seconds=wall))
    return {"rows": rows}


def _last_metrics(path: Path) -> Dict[str, Any]:
    """The last record of a run's metrics.jsonl that has throughput (the steady window)."""
    last: Dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "perf/images_per_s" in record:
                last = record
    return last


# ------------------------------------------------------------------------------------- driver

_SCALE = 1.0  # --budget-scale


def _sizes(smoke: bool) -> Sizes:
    """The sizes of this run, budgets multiplied by ``--budget-scale``."""
    base = SMOKE if smoke else GPU
    return replace(base, budgets={k: v * _SCALE for k, v in base.budgets.items()})


def _run_part(name: str, sizes: Sizes, work: Path, smoke: bool, timeout: float,
              extra: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run one part in a subprocess (a crash, a hang or CUDA state stays there); its JSON or why not."""
    out = work / f"{name}{'_' + extra[0] if extra else ''}.result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--work", str(work), "--result", str(out)]
    cmd += ["--smoke"] if smoke else []
    cmd += ["--budget-scale", str(_SCALE)]
    cmd += ["--preset", extra[0]] if extra else []
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]))
    if name == "mae":  # one rank, no launcher: torch.distributed from the environment
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(_free_port()))
        if not smoke:
            env.pop("OMP_NUM_THREADS", None)
    # Its own process group, so that a part killed at its budget takes its children along (the
    # fine-tuning runs it starts, data workers).
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"skipped": f"over its time budget ({timeout:.0f} s)"}
    finally:
        if name == "mae":  # DeepSpeed's CPU all-reduce buffers outlive their process
            for leftover in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{env['MASTER_PORT']}_*"):
                leftover.unlink(missing_ok=True)
    if out.is_file():
        return json.loads(out.read_text())
    return {"error": f"exit {proc.returncode}: {output[-2000:]}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(smoke: bool, out_path: Path, work: Path) -> Dict[str, Any]:
    """Every part within its budget; returns (and writes to ``out_path``) the report."""
    sizes = _sizes(smoke)
    t_start = time.time()
    report: Dict[str, Any] = {"mode": "smoke" if smoke else "gpu", "sections": {}}
    sections = report["sections"]
    sections["environment"] = part_environment(sizes, work)
    if not smoke and not sections["environment"]["gpu"]:
        print("no GPU visible to torch: use --smoke for the CPU run", file=sys.stderr)

    mae_rows: List[Dict[str, Any]] = []
    mae_deadline = time.time() + sizes.budgets["mae"]
    for preset in sizes.presets:
        left = mae_deadline - time.time()
        if left < 10:
            mae_rows.append(dict(preset=preset, skipped="over the part's time budget"))
            continue
        t = time.time()
        result = _run_part("mae", sizes, work, smoke, left, [preset])
        partial = work / f"mae_{preset}.json"
        if "rows" in result:
            mae_rows += result["rows"]
        else:  # killed or failed: keep the rows it finished
            done = json.loads(partial.read_text()) if partial.is_file() else []
            mae_rows += done + [dict(preset=preset, **result, seconds=time.time() - t)]
    sections["mae"] = {"rows": mae_rows, "budget_s": sizes.budgets["mae"]}
    sections["memory"] = {"rows": [
        {k: r[k] for k in ("preset", "precision", "checkpointing", "micro_batch", "peak_memory_bytes",
                           "predicted_peak_bytes", "memory_ratio")} for r in mae_rows if "memory_ratio" in r]}
    for name in ("loader", "rotated_ops", "finetune"):
        t = time.time()
        sections[name] = {**_run_part(name, sizes, work, smoke, sizes.budgets[name]),
                          "budget_s": sizes.budgets[name], "seconds": time.time() - t}
    report["seconds"] = time.time() - t_start
    out_path.write_text(json.dumps(report, indent=1))
    return report


def format_report(report: Dict[str, Any]) -> str:
    """Markdown: one table per part (skips and errors as rows with their reason)."""
    lines = [f"# GPU check ({report['mode']}), {report.get('seconds', 0):.0f} s", ""]
    env = report["sections"]["environment"]
    lines.append(", ".join(f"{k} {v}" for k, v in env.items()))
    for name in SECTIONS[1:]:
        section = report["sections"].get(name, {})
        lines += ["", f"## {name}", ""]
        rows = section.get("rows")
        if not rows:
            lines.append(f"no rows: {section.get('skipped') or section.get('error') or 'nothing measured'}")
            continue
        keys: List[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = str(v).replace("\n", " ").replace("|", "/")
    return text if len(text) <= 160 else text[:157] + "..."


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (under a minute)")
    p.add_argument("--out", default=None, help="JSON report (default: gpu_check.json in the work folder)")
    p.add_argument("--workdir", default=None, help="data and runs go here (default: a temporary folder)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every part's time budget (e.g. on a machine shared with other jobs)")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global _SCALE
    _SCALE = args.budget_scale
    sizes = _sizes(args.smoke)
    if args.part:  # one part, in its own process (see _run_part)
        work = Path(args.work)
        if args.part == "mae":
            result = part_mae_preset(args.preset, sizes, work)
        elif args.part == "finetune":
            result = part_finetune(sizes, work, time.time() + sizes.budgets["finetune"] - 2)
        else:
            result = {"loader": part_loader, "rotated_ops": part_rotated_ops}[args.part](sizes, work)
        Path(args.result).write_text(json.dumps(result))
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsfm_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else work / "gpu_check.json"
    report = run_all(args.smoke, out, work)
    print(format_report(report))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
