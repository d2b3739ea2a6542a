"""MAE training-step throughput: DeepSpeed ZeRO-3 vs a plain single-process PyTorch loop.

Both run the same model, global batch and precision on in-memory images (the data path has its own
benchmark, bench/data_throughput.py), so the ratio isolates what ZeRO-3 sharding and its
collectives cost or save.

``--ranks 1`` (ZeRO-3's own overhead): one process with the same threads builds the plain model
and one DeepSpeed engine per ``--ds-config`` (configured as the engine does for one rank) and per
``--untuned-ds-config`` (the config as given to DeepSpeed as it comes: no one-rank settings and
none of the exact shortcuts of rsfm_ds/engine/zero3_fastpaths.py; the before), and alternates
single steps of each for ``--rounds`` rounds, so a load change on a shared machine hits every
contender alike; it prints the median wall and CPU time per step and each one's ratio to the
plain loop.

    python bench/pretrain_step.py --preset debug_l --ranks 1 --threads 2 --batch 32 --rounds 7 \
        --ds-config ds_configs/cpu_debug.json --untuned-ds-config ds_configs/cpu_debug.json

``--ranks N`` > 1: N ZeRO-3 ranks under the ``deepspeed`` launcher (splitting the cores) against
the plain loop with every core.

    python bench/pretrain_step.py --preset debug --batch 32 --steps 10
    python bench/pretrain_step.py --preset vit_b12x1 --batch 16 --steps 4 --precision bf16

Never asserts times.
"""
from __future__ import annotations

import argparse
import copy
from contextlib import nullcontext
import json
import statistics
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsfm_ds.engine.process_end import finish_process  # noqa: E402
from rsfm_ds.models.mae import create_mae, mae_train_flops  # noqa: E402


def timed_steps(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def plain(args) -> dict:
    torch.manual_seed(0)
    model = create_mae(args.preset, img_size=args.img_size)
    model.set_grad_checkpointing(args.grad_ckpt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    imgs = torch.randn(args.batch, 3, args.img_size, args.img_size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        with autocast:
            loss, _, _ = model(imgs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return dict(step_s=timed_steps(step, args.warmup, args.steps))


def worker(args) -> None:
    from rsfm_ds.engine.config import OptimConfig
    from rsfm_ds.engine.deepspeed_setup import (build_model, init_distributed, initialize, load_ds_config,
                                                model_dtype, reconcile_ds_config)
    from rsfm_ds.engine.param_groups import build_param_groups

    rank, _, world = init_distributed()
    ds = reconcile_ds_config(load_ds_config(args.ds_config), micro_batch_size=args.batch // world,
                             global_batch_size=args.batch, world_size=world, precision=args.precision,
                             clip_grad=1.0)
    torch.manual_seed(0)
    model = build_model(lambda: create_mae(args.preset, img_size=args.img_size), ds, zero_init=False)
    model.set_grad_checkpointing(args.grad_ckpt)
    engine, _ = initialize(model, build_param_groups(model, 0.05), ds, OptimConfig())
    imgs = torch.randn(args.batch // world, 3, args.img_size, args.img_size, dtype=model_dtype(args.precision))

    def step():
        loss, _, _ = engine(imgs)
        engine.backward(loss)
        engine.step()

    step_s = timed_steps(step, args.warmup, args.steps)
    import resource

    rss = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    torch.distributed.all_reduce(rss, op=torch.distributed.ReduceOp.MAX)
    if rank == 0:
        print("RESULT " + json.dumps(dict(step_s=step_s, peak_rss_gb=rss.item())), flush=True)


def zero3(args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(args.ranks), "--master_port",
           str(port), str(Path(__file__).resolve()), "--worker", *sys.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.ranks))}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if "RESULT " in line:
            return json.loads(line.split("RESULT ", 1)[1])
    raise RuntimeError(f"ZeRO-3 worker failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def one_rank(args) -> None:
    """ZeRO-3 on one rank against the plain loop, alternating steps in one process."""
    from rsfm_ds.engine import zero3_fastpaths
    from rsfm_ds.engine.config import OptimConfig
    from rsfm_ds.engine.deepspeed_setup import (init_distributed, initialize, load_ds_config,
                                                reconcile_ds_config)
    from rsfm_ds.engine.param_groups import build_param_groups

    torch.set_num_threads(args.threads)
    init_distributed()
    imgs = torch.randn(args.batch, 3, args.img_size, args.img_size)
    original_linear = torch.nn.functional.linear
    steps = {}
    contenders = [(p, True) for p in args.ds_config] + [(p, False) for p in args.untuned_ds_config or []]
    for path, tuned in contenders:
        ds = reconcile_ds_config(load_ds_config(path), micro_batch_size=args.batch, global_batch_size=args.batch,
                                 world_size=1, precision="fp32", clip_grad=args.clip_grad, tune_one_rank=tuned)
        torch.manual_seed(0)
        model = create_mae(args.preset, img_size=args.img_size)
        engine, _ = initialize(model, build_param_groups(model, 0.05), copy.deepcopy(ds), OptimConfig())
        # DeepSpeed's memory-efficient linear replaces torch.nn.functional.linear for the whole
        # process (zero/partition_parameters.py); give each contender the linear it would have
        # had in a process of its own.
        linear = torch.nn.functional.linear
        torch.nn.functional.linear = original_linear

        def zstep(engine=engine, linear=linear, tuned=tuned):
            torch.nn.functional.linear = linear
            try:
                # The untuned contender is DeepSpeed as it comes: without the exact shortcuts too.
                with nullcontext() if tuned else zero3_fastpaths.disabled():
                    loss, _, _ = engine(imgs)
                    engine.backward(loss)
                    engine.step()
            finally:
                torch.nn.functional.linear = original_linear

        steps[f"ZeRO-3 {Path(path).name}{'' if tuned else ' (untuned)'}"] = zstep
    torch.manual_seed(0)
    model = create_mae(args.preset, img_size=args.img_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def pstep():
        loss, _, _ = model(imgs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad:  # the engine clips when asked, so the plain loop does the same work
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        opt.step()

    steps["plain PyTorch"] = pstep
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in steps}
    base = med["plain PyTorch"]
    print(f"MAE {args.preset} @{args.img_size}px, batch {args.batch}, fp32, 1 rank, {args.threads} threads, "
          f"clip {args.clip_grad or 'off'}, median of {args.rounds} alternating rounds")
    print(f"{'run':<36} {'wall (s)':>9} {'ratio':>6} {'CPU (s)':>8} {'ratio':>6}")
    for name, (w, c) in med.items():
        print(f"{name:<36} {w:>9.3f} {w / base[0]:>6.3f} {c:>8.3f} {c / base[1]:>6.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="debug")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="global batch (split over the ZeRO-3 ranks)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing in both runs")
    p.add_argument("--ds-config", action="append",
                   help="DeepSpeed config (default ds_configs/cpu_debug.json); repeat to compare "
                        "several with --ranks 1")
    p.add_argument("--untuned-ds-config", action="append",
                   help="--ranks 1: also compare this config as given, without the engine's one-rank "
                        "ZeRO-3 settings (rsfm_ds.engine.deepspeed_setup.one_rank_zero3) and without "
                        "its exact shortcuts (rsfm_ds.engine.zero3_fastpaths): the before")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="--ranks 1: threads of the one process (both loops)")
    p.add_argument("--rounds", type=int, default=7, help="--ranks 1: alternating timed rounds")
    p.add_argument("--clip-grad", type=float, default=0.0,
                   help="--ranks 1: gradient clipping in both loops (0 = off, as MAE pretraining)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.ds_config = args.ds_config or [str(ROOT / "ds_configs" / "cpu_debug.json")]
    if args.ranks == 1 and not args.worker:
        one_rank(args)
        return
    if len(args.ds_config) > 1:
        p.error("several --ds-config are compared with --ranks 1 only")
    args.ds_config = args.ds_config[0]
    if args.worker:
        worker(args)
        finish_process(0)  # without the teardown that can abort a rank

    flops = mae_train_flops(args.preset, args.img_size)
    z = zero3(args)
    b = plain(args)
    print(f"MAE {args.preset} @{args.img_size}px, global batch {args.batch}, {args.precision}, "
          f"activation checkpointing {'on' if args.grad_ckpt else 'off'}, {os.cpu_count()} cores")
    print(f"{'run':<28} {'step (s)':>9} {'images/s':>9} {'TFLOP/s':>8}")
    for name, r in [(f"ZeRO-3, {args.ranks} ranks (gloo)", z), ("plain PyTorch, 1 process", b)]:
        ips = args.batch / r["step_s"]
        print(f"{name:<28} {r['step_s']:>9.3f} {ips:>9.1f} {ips * flops / 1e12:>8.3f}")
    print(f"ratio ZeRO-3 / plain (images/s): {b['step_s'] / z['step_s']:.2f}; "
          f"ZeRO-3 peak RSS per rank {z['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
