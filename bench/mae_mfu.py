"""MAE pretraining throughput and MFU per preset, at the largest micro batch that fits.

For each preset: ask the planner (``rsfm plan``) for the largest micro batch that fits the device,
then run the pretraining engine's pieces (``build_model`` with ``zero.Init`` above 700M backbone
parameters, ``deepspeed.initialize`` with the task's DeepSpeed config, bf16, fused attention,
activation checkpointing) on in-memory images on every device of the machine, and report
images/s, achieved TFLOP/s per device, MFU (model FLOPs of ``mae_train_flops`` over the device's
dense bf16 peak), and the peak device memory next to the planner's prediction.

GPU (one process per GPU, NCCL; the peak is looked up for the detected GPU, or ``--peak-tflops``)::

    python bench/mae_mfu.py --presets vit_b12x1,vit_l12x4,vit_1b3,vit_2b4 --ranks 8

CPU smoke check (2 ranks, gloo, bf16; the peak is a bf16 matmul measured on the spot)::

    python bench/mae_mfu.py --presets debug --ranks 2 --steps 3 --warmup 1

Prints figures and ratios, never asserts them.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsfm_ds.engine.process_end import finish_process  # noqa: E402


def matmul_peak_tflops(dtype_name: str = "bf16", n: int = 2048, repeats: int = 5) -> float:
    """Dense matmul TFLOP/s of this process on its device (the practical peak for MFU on CPU)."""
    import torch

    dtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype_name])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def seconds_per_step(step, warmup: int, steps: int, device) -> float:
    """Wall seconds per call of ``step()`` over ``steps`` calls after ``warmup`` ones (the device
    synchronised around the timed calls)."""
    import torch

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def worker(args: argparse.Namespace) -> None:
    import torch

    from rsfm_ds.engine.config import OptimConfig
    from rsfm_ds.engine.deepspeed_setup import (build_model, device_for, device_peak_tflops,
                                                init_distributed, initialize, load_ds_config,
                                                model_dtype, peak_memory_bytes, reconcile_ds_config)
    from rsfm_ds.engine.param_groups import build_param_groups
    from rsfm_ds.models.mae import create_mae, mae_train_flops

    rank, local_rank, world = init_distributed()
    device = device_for(local_rank)
    context = None
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        context = total - free  # CUDA context + NCCL so far, before any tensor of ours
    ds = reconcile_ds_config(load_ds_config(args.ds_config), micro_batch_size=args.micro_batch,
                             global_batch_size=args.micro_batch * world, world_size=world,
                             precision="bf16", clip_grad=1.0, source=args.ds_config)
    torch.manual_seed(0)
    model = build_model(lambda: create_mae(args.preset, fused_attn=True), ds, args.zero_init)
    model.set_grad_checkpointing(True)
    engine, _ = initialize(model, build_param_groups(model, 0.05), ds, OptimConfig())
    images = torch.randn(args.micro_batch, 3, 224, 224, device=device, dtype=model_dtype("bf16"))

    def step():
        loss, _, _ = engine(images)
        engine.backward(loss)
        engine.step()

    seconds = seconds_per_step(step, args.warmup, args.steps, device)
    peak_tflops = device_peak_tflops(device, args.peak_tflops) or matmul_peak_tflops()
    images_per_s = args.micro_batch * world / seconds
    tflops = images_per_s * mae_train_flops(args.preset) / 1e12 / world
    result = dict(rank=rank, world=world, preset=args.preset, micro_batch=args.micro_batch,
                  step_seconds=seconds, images_per_s=images_per_s, tflops_per_device=tflops,
                  peak_tflops=peak_tflops, mfu=tflops / peak_tflops,
                  # The planner's figure includes the framework overhead: add the context on GPU.
                  peak_memory_bytes=peak_memory_bytes(device) + (context or 0),
                  context_bytes=context,
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if rank == 0:
        Path(args.out).write_text(json.dumps(result))


def run_preset(preset: str, args: argparse.Namespace) -> dict:
    from rsfm_ds.planning import PlanRequest, default_ds_config, plan_memory

    import torch

    device = "gpu" if torch.cuda.is_available() else "cpu"
    ds_config = args.ds_config or default_ds_config("pretrain", device, "bf16", offload=False)
    req = PlanRequest(preset=preset, task="pretrain", gpus=args.ranks, gpu_mem_gb=args.gpu_mem,
                      micro_batch=args.micro_batch, dtype="bf16", device=device,
                      ds_config=ds_config)
    plan = plan_memory(req)
    micro_batch = args.micro_batch or plan.max_micro_batch
    if micro_batch < 1:
        return dict(preset=preset, error="does not fit (planner)")
    plan = plan_memory(req.__class__(**{**req.__dict__, "micro_batch": micro_batch}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp(prefix="rsfm_mfu_")) / "result.json"
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(args.ranks),
           "--master_port", str(port), str(Path(__file__).resolve()), "--worker",
           "--preset", preset, "--micro-batch", str(micro_batch), "--ds-config", ds_config,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(out)]
    if plan.zero_init:
        cmd.append("--zero-init")
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    env = dict(os.environ)
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // args.ranks))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for leftover in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        leftover.unlink(missing_ok=True)
    if proc.returncode != 0 or not out.is_file():
        return dict(preset=preset, micro_batch=micro_batch,
                    error=f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    result = json.loads(out.read_text())
    result["predicted_peak_bytes"] = plan.peak
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="vit_b12x1,vit_l12x4,vit_1b3,vit_2b4")
    p.add_argument("--ranks", type=int, default=1, help="devices (processes)")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="memory per device, GB (planner)")
    p.add_argument("--micro-batch", type=int, default=None, help="default: the largest that fits")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ds-config", default=None, help="default: the shipped pretraining config")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak per device (default: known GPU, or a measured matmul)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--zero-init", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        finish_process(0)  # without the teardown that can abort a rank
    rows = [run_preset(name, args) for name in args.presets.split(",")]
    print(f"MAE pretraining, 224 px, bf16, fused attention, activation checkpointing, "
          f"{args.ranks} device(s)")
    print(f"{'preset':<10} {'mb':>4} {'img/s':>9} {'TFLOP/s/dev':>11} {'MFU':>6} "
          f"{'peak GB':>8} {'planned GB':>10} {'ratio':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:<10} {r.get('micro_batch', '-'):>4} error: {r['error'][:300]}")
            continue
        print(f"{r['preset']:<10} {r['micro_batch']:>4} {r['images_per_s']:>9.1f} "
              f"{r['tflops_per_device']:>11.2f} {r['mfu']:>6.1%} {r['peak_memory_bytes'] / 1e9:>8.2f} "
              f"{r['predicted_peak_bytes'] / 1e9:>10.2f} "
              f"{r['peak_memory_bytes'] / r['predicted_peak_bytes']:>6.2f}")
        if r.get("context_bytes"):
            print(f"{'':<10} CUDA context + NCCL before any tensor: {r['context_bytes'] / 1e9:.2f} GB "
                  f"on {r['device']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
