"""Proof of scale on one CPU machine: vit_2b4 (2.4B) built under ``zero.Init`` and run forward.

Two CPU ranks (gloo, one OpenMP thread each) build the MAE of the paper's largest model under
``deepspeed.zero.Init`` (every module is partitioned over the ranks as soon as it is built, so no
rank ever holds the 9.8 GB fp32 replica), initialise it without an optimizer (its 16 B/parameter of
training states would not fit this machine) and run forward passes without gradients, gathering
each module's parameters on the fly (``rsfm_ds.planning.measure``, ``--forward-only``).

First, the build against its baseline: the same ranks alternate a plain ``zero.Init`` build
(``deepspeed.zero.Init`` around the constructor, no re-initialisation: the least any build can
cost) with the engine's ``build_model`` (the same plus each rank initialising its partitions in
place, rsfm_ds/engine/zero_inplace_init.py), ``--builds`` times each, and print the medians and
their ratio. Then (unless ``--no-forward``) the build, initialisation and forward times and the
peak resident memory per rank and phase, next to what ``rsfm plan --forward-only`` predicts (and
the ratio). Takes the shared heavy-run lock (bench/heavy_lock.py) and waits for enough free
memory first.

    python bench/scale_vit_2b4_init.py                      # fp32, micro batch 2 per rank
    python bench/scale_vit_2b4_init.py --precision bf16
    python bench/scale_vit_2b4_init.py --no-forward --builds 2   # the build ratio only

Never asserts anything: the figures go to docs/benchmarks.md and docs/planning.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from heavy_lock import heavy_run  # noqa: E402
from rsfm_ds.planning.measure import compare, format_comparison, launch  # noqa: E402
from rsfm_ds.planning import PlanRequest, format_plan, plan_memory  # noqa: E402


def build_worker(args) -> None:
    """One rank: alternate plain ``zero.Init`` builds with ``build_model``; rank 0 prints JSON."""
    import deepspeed
    import torch

    from rsfm_ds.engine.deepspeed_setup import build_model, init_distributed, load_ds_config, reconcile_ds_config
    from rsfm_ds.models.mae import create_mae

    rank, _, world = init_distributed()
    ds = reconcile_ds_config(load_ds_config(args.ds_config), micro_batch_size=args.micro_batch,
                             global_batch_size=args.micro_batch * world, world_size=world,
                             precision=args.precision, clip_grad=None)

    def plain():
        with deepspeed.zero.Init(config_dict_or_path=ds):
            return create_mae(args.preset)

    def ours():
        return build_model(lambda: create_mae(args.preset), ds, zero_init=True, seed=0)

    times = {"plain zero.Init": [], "build_model (in-place init)": []}
    for i in range(args.builds):
        # Alternate which goes first, so neither always pays the first build's warm-up.
        order = [("plain zero.Init", plain), ("build_model (in-place init)", ours)][::1 if i % 2 == 0 else -1]
        for name, build in order:
            torch.distributed.barrier()
            t0 = time.perf_counter()
            model = build()
            torch.distributed.barrier()
            times[name].append(time.perf_counter() - t0)
            del model
            gc.collect()
    if rank == 0:
        print("RESULT " + json.dumps(times), flush=True)
    torch.distributed.destroy_process_group()


def compare_builds(args) -> dict:
    """Run :func:`build_worker` on ``--ranks`` processes; returns its timings."""
    from rsfm_ds.engine.deepspeed_setup import _free_port

    port = str(_free_port())
    procs = []
    for r in range(args.ranks):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(args.ranks),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, "--build-worker", *sys.argv[1:]], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT))
    logs = [p.communicate()[0] for p in procs]
    for line in logs[0].splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError("build comparison failed:\n" + "\n".join(log[-3000:] for log in logs))


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
    p.add_argument("--builds", type=int, default=2, help="alternating builds of each kind")
    p.add_argument("--no-forward", action="store_true", help="only the build comparison")
    p.add_argument("--build-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build_worker:
        build_worker(args)
        return

    req = PlanRequest(preset=args.preset, task="pretrain", gpus=args.ranks, gpu_mem_gb=11.0,
                      micro_batch=args.micro_batch, dtype=args.precision, device="cpu",
                      ds_config=args.ds_config, zero_init=True, mode="forward")
    plan = plan_memory(req)
    print(format_plan(plan), flush=True)
    with heavy_run(args.need_gb):
        builds = compare_builds(args)
        base = statistics.median(builds["plain zero.Init"])
        print(f"\n{args.preset} builds under zero.Init, {args.ranks} CPU ranks x 1 thread, {args.precision}, "
              f"median of {args.builds} alternating builds each:")
        for name, ts in builds.items():
            med = statistics.median(ts)
            print(f"  {name:<28} {med:7.1f} s ({', '.join(f'{t:.1f}' for t in ts)}), "
                  f"{med / base:.2f}x plain zero.Init", flush=True)
        if args.no_forward:
            if args.json:
                Path(args.json).write_text(json.dumps(dict(builds=builds), indent=2))
            return
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
        Path(args.json).write_text(json.dumps(dict(builds=builds, results=results, comparison=rows,
                                                   plan=plan.to_dict()), indent=2, default=str))


if __name__ == "__main__":
    main()
