"""Proof of scale on one CPU machine: a complete ZeRO-3 MAE training step of vit_l12x4 (605M).

Two CPU ranks (gloo, one OpenMP thread each) run what the pretraining engine runs: the MAE built
by every rank, ``deepspeed.initialize`` partitioning it (ZeRO-3), then forward, backward and
optimizer step on in-memory images (``rsfm_ds.planning.measure``). The DeepSpeed config has small
buckets (``ds_configs/cpu_scale.json``: reduce / all-gather / prefetch buckets 2e7, at most 1e8
live and reuse elements, optimizer sub-groups of 1e8): with DeepSpeed's default 5e8 buckets a
rank is OOM-killed on a 24 GB machine (docs/deepspeed.md).

Prints the time per step and the peak resident memory per rank and phase, next to what
``rsfm plan`` predicts (and the ratio). The run needs most of a 24 GB machine, so it takes the
shared heavy-run lock (bench/heavy_lock.py) and waits for enough free memory first.

    python bench/scale_vit_l12x4.py                      # bf16, micro batch 4 per rank
    python bench/scale_vit_l12x4.py --precision fp32 --micro-batch 4

Never asserts anything: the figures go to docs/benchmarks.md and docs/planning.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from heavy_lock import heavy_run  # noqa: E402
from rsfm_ds.planning.measure import compare, format_comparison, launch  # noqa: E402
from rsfm_ds.planning import PlanRequest, format_plan, plan_memory  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vit_l12x4")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--micro-batch", type=int, default=4, help="images per rank")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=2,
                   help="training steps; the first is not timed (it records the fetch trace)")
    p.add_argument("--ds-config", default="ds_configs/cpu_scale.json")
    p.add_argument("--need-gb", type=float, default=21.0,
                   help="GiB of available memory to wait for before starting")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    req = PlanRequest(preset=args.preset, task="pretrain", gpus=args.ranks, gpu_mem_gb=11.0,
                      micro_batch=args.micro_batch, dtype=args.precision, device="cpu",
                      ds_config=args.ds_config)
    plan = plan_memory(req)
    print(format_plan(plan), flush=True)
    with heavy_run(args.need_gb):
        t0 = time.perf_counter()
        results = launch(args.preset, ranks=args.ranks, micro_batch=args.micro_batch,
                         precision=args.precision, ds_config=args.ds_config, steps=args.steps)
        wall = time.perf_counter() - t0
    rows = compare(results, plan)
    print(f"\nZeRO-3 MAE step, {args.preset}, {args.ranks} CPU ranks x 1 thread, {args.precision}, "
          f"micro batch {args.micro_batch} per rank, {args.ds_config}; wall {wall:.0f} s with start-up")
    for r in results:
        print(f"rank {r['rank']}: step {r['step_seconds']:.1f} s (steps: "
              + ", ".join(f"{t:.1f}" for t in r["step_times"])
              + f"), build {r['phases']['build']['seconds']:.1f} s, initialize "
              f"{r['phases']['initialize']['seconds']:.1f} s, runtime RSS {r['runtime_bytes'] / 1e9:.2f} GB")
    print(format_comparison(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results=results, comparison=rows,
                                                   plan=plan.to_dict()), indent=2, default=str))


if __name__ == "__main__":
    main()
