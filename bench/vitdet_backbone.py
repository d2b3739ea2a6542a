"""Forward+backward time and peak memory of ViTDet backbones at detection resolution, on CPU.

Every configuration (preset x activation checkpointing) runs in its own subprocess, so its peak
resident set size (``ru_maxrss``) is its own: torch allocates outside Python's heap, which
``tracemalloc`` cannot see. A configuration is one warm-up step and ``--iters`` timed steps of
batch ``--batch``: forward of backbone + pyramid, a scalar loss over all levels, backward (the
optimizer step is left out: it is the engine's, and its memory depends on ZeRO). Model FLOPs come
from ``torch.utils.flop_counter`` on the meta device (forward + backward, recomputation by
checkpointing not counted, the MFU convention), next to what a plain matmul reaches at the time
(the CPU is shared and its speed varies). A parent watchdog stops a configuration whose RSS
passes ``--mem-limit-gb`` (the machine is shared) and reports it instead of risking the OOM killer.

The vit_b12x1 run (ViT-B, ViTDet's own size) is the baseline the ratios refer to. Figures are
printed, never asserted.

    python bench/vitdet_backbone.py --dtype bf16                      # debug, vit_b12x1, vit_l12x4
    python bench/vitdet_backbone.py --presets vit_l12x4 --no-compare-off --iters 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional

GB = 1024 ** 3


def current_rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (FileNotFoundError, ProcessLookupError):
        return 0


def model_flops(preset: str, img_size: int, batch: int, window_size: int) -> int:
    """Forward + backward FLOPs of one step, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rsfm_ds.models.vitdet import create_vitdet

    with torch.device("meta"):
        model = create_vitdet(preset, img_size=img_size, window_size=window_size)
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(torch.empty(batch, 3, img_size, img_size))
            sum(v.float().mean() for v in out.values()).backward()
    return counter.get_total_flops()


def matmul_gflops(dtype, size: int = 2048, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of a square matmul: what the (shared, so variable) CPU delivers
    right now, to read the model's GFLOP/s against."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def worker(args: argparse.Namespace) -> Dict:
    """One configuration, in this process: returns its figures."""
    import torch

    from rsfm_ds.models.presets import count_trainable
    from rsfm_ds.models.vitdet import create_vitdet

    if args.threads:
        torch.set_num_threads(args.threads)
    flops = model_flops(args.preset, args.img_size, args.batch, args.window_size)
    rss_start = current_rss()
    torch.manual_seed(0)
    model = create_vitdet(args.preset, img_size=args.img_size, window_size=args.window_size).train()
    model.set_grad_checkpointing(args.ckpt)
    rss_model = current_rss()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    mm_gflops = matmul_gflops(dtype)
    fwd, bwd = [], []
    for _ in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=args.dtype == "bf16"):
            out = model(x)
            loss = sum(v.float().mean() for v in out.values())
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        del out, loss
        # Gradients stay allocated (zeroed, not freed), as between optimizer steps.
        model.zero_grad(set_to_none=False)
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    fwd, bwd = fwd[args.warmup:], bwd[args.warmup:]
    return dict(preset=args.preset, ckpt=args.ckpt, dtype=args.dtype, img_size=args.img_size,
                batch=args.batch, params=count_trainable(model), gflop=flops / 1e9,
                fwd_s=sum(fwd) / len(fwd), bwd_s=sum(bwd) / len(bwd),
                step_s=(sum(fwd) + sum(bwd)) / len(fwd),
                model_gb=(rss_model - rss_start) / GB,
                peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB,
                mm_gflops=mm_gflops, load=os.getloadavg()[0], threads=torch.get_num_threads())


def run_config(args: argparse.Namespace, preset: str, ckpt: bool) -> Dict:
    """Run one configuration in a subprocess under the RSS watchdog."""
    cmd = [sys.executable, __file__, "--worker", "--preset", preset, "--dtype", args.dtype,
           "--img-size", str(args.img_size), "--batch", str(args.batch), "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--window-size", str(args.window_size),
           "--threads", str(args.threads)] + (["--ckpt"] if ckpt else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    limit, seen = args.mem_limit_gb * GB, 0
    while proc.poll() is None:
        seen = max(seen, rss_of(proc.pid))
        if seen > limit:
            proc.kill()
            proc.wait()
            return dict(preset=preset, ckpt=ckpt,
                        error=f"stopped: RSS passed {args.mem_limit_gb:.1f} GB")
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return dict(preset=preset, ckpt=ckpt, error=f"exit {proc.returncode}: {err.strip()[-300:]}")
    return json.loads(out.strip().splitlines()[-1])


def format_rows(rows: List[Dict], baseline: Optional[Dict]) -> str:
    header = (f"{'preset':<10} {'ckpt':>4} {'params M':>9} {'GFLOP':>8} {'fwd s':>7} {'bwd s':>7} "
              f"{'step s':>7} {'GFLOP/s':>8} {'mm GF/s':>8} {'load':>5} {'model GB':>8} "
              f"{'peak GB':>8} {'x time':>7} {'x peak':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['preset']:<10} {'on' if r['ckpt'] else 'off':>4}  {r['error']}")
            continue
        rel_t = rel_m = float("nan")
        if baseline is not None and "error" not in baseline:
            rel_t = r["step_s"] / baseline["step_s"]
            rel_m = r["peak_rss_gb"] / baseline["peak_rss_gb"]
        lines.append(
            f"{r['preset']:<10} {'on' if r['ckpt'] else 'off':>4} {r['params'] / 1e6:>9.1f} "
            f"{r['gflop']:>8.0f} {r['fwd_s']:>7.2f} {r['bwd_s']:>7.2f} {r['step_s']:>7.2f} "
            f"{r['gflop'] / r['step_s']:>8.0f} {r['mm_gflops']:>8.0f} {r['load']:>5.1f} "
            f"{r['model_gb']:>8.2f} {r['peak_rss_gb']:>8.2f} {rel_t:>7.2f} {rel_m:>7.2f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="debug,vit_b12x1,vit_l12x4",
                        help="comma-separated presets; vit_b12x1 (if present) is the baseline")
    parser.add_argument("--img-size", type=int, default=1024)
    parser.add_argument("--window-size", type=int, default=14)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16",
                        help="bf16 = CPU autocast (fp32 master weights and gradients)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default)")
    parser.add_argument("--no-compare-off", dest="compare_off", action="store_false",
                        help="skip the runs with activation checkpointing off")
    parser.add_argument("--mem-limit-gb", type=float, default=None,
                        help="stop a configuration above this RSS (default: 85%% of MemAvailable)")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.mem_limit_gb is None:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        args.mem_limit_gb = 0.85 * avail * 1024 / GB
    presets = [p for p in args.presets.split(",") if p]
    rows = []
    for preset in presets:
        for ckpt in ([True, False] if args.compare_off else [True]):
            rows.append(run_config(args, preset, ckpt))
            print(f"done {preset} ckpt={'on' if ckpt else 'off'}", file=sys.stderr, flush=True)

    print(f"ViTDet backbone + pyramid, {args.img_size} px, batch {args.batch}, "
          f"window {args.window_size}, {args.dtype}, {args.iters} timed step(s) after "
          f"{args.warmup} warm-up; memory limit {args.mem_limit_gb:.1f} GB; {os.cpu_count()} CPUs")
    baseline = next((r for r in rows if r["preset"] == "vit_b12x1" and r["ckpt"]), None)
    print(format_rows(rows, baseline))
    print("GFLOP/s: model FLOPs per step / step time; mm GF/s: a 2048^3 matmul in the same dtype "
          "just before the run; load: 1-min load average at the end of the run (above the CPU "
          "count, other processes shared the cores and times are inflated).")
    print("x time / x peak: relative to vit_b12x1 with checkpointing. GB = 2^30 bytes. model GB: "
          "RSS growth from building the model; peak GB: process peak RSS (weights, gradients, "
          "activations, autocast weight copies, allocator caches).")
    done = {(r["preset"], r["ckpt"]): r for r in rows if "error" not in r}
    for preset in presets:
        on, off = done.get((preset, True)), done.get((preset, False))
        if on and off:
            slower = on["step_s"] / off["step_s"]
            print(f"{preset}: checkpointing costs x{slower:.2f} time and saves "
                  f"{off['peak_rss_gb'] - on['peak_rss_gb']:.2f} GB of peak RSS "
                  f"({off['peak_rss_gb']:.2f} -> {on['peak_rss_gb']:.2f} GB)")
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
