"""Proof of scale on one CPU machine: vit_2b4 (2.4B) built under ``zero.Init`` and run forward.

Two CPU ranks (gloo, one OpenMP thread each) build the MAE of the paper's largest model under
``deepspeed.zero.Init`` (every module is partitioned over the ranks as soon as it is built, so no
rank ever holds the 9.8 GB fp32 replica), initialise it without an optimizer (its 16 B/parameter of
training states would not fit this machine) and run forward passes without gradients, gathering
each module's parameters on the fly (``rsfm_ds.planning.measure``, ``--forward-only``).

Prints the build, initialisation and forward times and the peak resident memory per rank and
phase, next to what ``rsfm plan --forward-only`` predicts (and the ratio). Takes the shared
heavy-run lock (bench/heavy_lock.py) and waits for enough free memory first.

    python bench/scale_vit_2b4_init.py                      # fp32, micro batch 2 per rank
    python bench/scale_vit_2b4_init.py --precision bf16

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
    p.add_argument("--preset", default="vit_2b4")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    p.add_argument("--micro-batch", type=int, default=2, help="images per rank")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--passes", type=int, default=2,
                   help="forward passes; the first is not timed (it records the fetch trace)")
    p.add_argument("--ds-config", default="ds_configs/cpu_scale.json")
    p.add_argument("--need-gb", type=float, default=15.0,
                   help="GiB of available memory to wait for before starting")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    req = PlanRequest(preset=args.preset, task="pretrain", gpus=args.ranks, gpu_mem_gb=11.0,
                      micro_batch=args.micro_batch, dtype=args.precision, device="cpu",
                      ds_config=args.ds_config, zero_init=True, mode="forward")
    plan = plan_memory(req)
    print(format_plan(plan), flush=True)
    with heavy_run(args.need_gb):
        t0 = time.perf_counter()
        results = launch(args.preset, ranks=args.ranks, micro_batch=args.micro_batch,
                         precision=args.precision, ds_config=args.ds_config, steps=args.passes,
                         zero_init=True, forward_only=True)
        wall = time.perf_counter() - t0
    rows = compare(results, plan)
    print(f"\n{args.preset} under zero.Init + forward, {args.ranks} CPU ranks x 1 thread, "
          f"{args.precision}, micro batch {args.micro_batch} per rank, {args.ds_config}; "
          f"wall {wall:.0f} s with start-up")
    for r in results:
        print(f"rank {r['rank']}: build {r['phases']['build']['seconds']:.1f} s, initialize "
              f"{r['phases']['initialize']['seconds']:.1f} s, forward {r['step_seconds']:.1f} s "
              "(passes: " + ", ".join(f"{t:.1f}" for t in r["step_times"])
              + f"), runtime RSS {r['runtime_bytes'] / 1e9:.2f} GB")
    print(format_comparison(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results=results, comparison=rows,
                                                   plan=plan.to_dict()), indent=2, default=str))


if __name__ == "__main__":
    main()
