"""Measure what a ZeRO-3 MAE run really holds in memory, per rank and per phase.

The planner's predictions (:mod:`rsfm_ds.planning.memory`) are checked against this. A measurement
runs the pretraining engine's own pieces (``reconcile_ds_config``, ``build_model``,
``build_param_groups``, ``initialize``, ``engine(images)`` / ``backward`` / ``step``) on in-memory
images, one process per rank under the ``deepspeed`` launcher, and reports per rank:

* ``runtime``: resident memory once torch, DeepSpeed and the process group are up (what the
  planner calls the framework overhead on CPU);
* the peak resident memory of each phase (``build``: constructing the model; ``initialize``:
  ``deepspeed.initialize``, which partitions the model and creates the optimizer states;
  ``step<i>``: the i-th forward, backward and optimizer step; ``forward<i>``: the i-th forward pass
  without gradients when there is no optimizer), and the largest of them (``peak_bytes``); on CPU also
  glibc's heap statistics at the end of each phase;
* the mean time of the measured steps (the first step is excluded when there are several: it
  records DeepSpeed's parameter-fetch trace and allocates lazily).

On CPU "memory" is the resident set size, read from ``/proc/self/status`` (``VmRSS``, and the
high-water mark ``VmHWM``, which is reset between phases through ``/proc/self/clear_refs`` so each
phase gets its own peak). On a GPU it is ``torch.cuda.max_memory_allocated``.

Run it as a module under the launcher (:func:`launch` does this and collects the ranks' result files)::

    deepspeed --num_gpus 2 --module rsfm_ds.planning.measure --preset debug --micro-batch 8
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from ..engine.launcher_guard import tied_child
from ..engine.process_end import finish_process

ROOT = Path(__file__).resolve().parents[2]


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line (not Linux?)")
    return int(match.group(1))


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or since :func:`reset_peak_rss`."""
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: writing 5 to ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def malloc_stats() -> Optional[Dict[str, int]]:
    """glibc's view of this process's heap: ``heap`` (arena bytes obtained with brk/sbrk, main
    arena), ``heap_free`` (of which free, kept by the allocator), ``mmapped`` (chunks served by
    mmap); ``None`` where ``mallinfo2`` is not available (not glibc >= 2.33)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks",
                                                    "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    m = libc.mallinfo2()
    return dict(heap=m.arena, heap_free=m.fordblks, mmapped=m.hblkhd)


@contextmanager
def phase(record: Dict[str, Dict[str, float]], name: str, device) -> Iterator[None]:
    """Record the peak memory and the wall time of the enclosed code under ``record[name]``."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss_bytes()
    record[name] = dict(peak_bytes=peak, seconds=time.perf_counter() - t0)
    if device.type == "cpu":
        record[name].update(end_rss_bytes=rss_bytes(), malloc=malloc_stats())


def track_gathered(model) -> List[int]:
    """Record the most ZeRO-3 parameter elements gathered at once (persistent ones excluded),
    sampled before and after every module's forward (recomputation included); returns a
    one-element list that the hooks keep updating."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    params = [p for p in model.parameters() if hasattr(p, "ds_status")]
    peak = [0]

    def sample(*_):
        n = sum(p.ds_numel for p in params
                if p.ds_status != ZeroParamStatus.NOT_AVAILABLE and not p.ds_persist)
        peak[0] = max(peak[0], n)

    for m in model.modules():
        m.register_forward_pre_hook(sample)
        m.register_forward_hook(sample)
    return peak


def worker(args: argparse.Namespace) -> None:
    """One rank: build, initialise and step the MAE as the pretraining engine does; print a line."""
    import torch

    from ..engine.config import OptimConfig
    from ..engine.deepspeed_setup import (build_model, device_for, init_distributed, initialize,
                                          load_ds_config, model_dtype, reconcile_ds_config)
    from ..engine.param_groups import build_param_groups
    from ..models.mae import create_mae

    t_start = time.perf_counter()
    rank, local_rank, world = init_distributed()
    device = device_for(local_rank)
    # One collective so that the backend's buffers exist before the baseline is read.
    torch.distributed.barrier()
    runtime = rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    ds = reconcile_ds_config(load_ds_config(args.ds_config), micro_batch_size=args.micro_batch,
                             global_batch_size=args.micro_batch * world, world_size=world,
                             precision=args.precision, clip_grad=1.0, source=args.ds_config)
    if args.forward_only:
        ds.pop("optimizer", None)
    phases: Dict[str, Dict[str, float]] = {}
    torch.manual_seed(0)
    with phase(phases, "build", device):
        model = build_model(lambda: create_mae(args.preset, img_size=args.img_size,
                                               fused_attn=not args.no_fused_attn), ds, args.zero_init)
    model.set_grad_checkpointing(not args.no_checkpointing)
    dtype = model_dtype(args.precision)
    with phase(phases, "initialize", device):
        if args.forward_only:
            import deepspeed

            engine = deepspeed.initialize(model=model, config=ds)[0]
        else:
            engine, _ = initialize(model, build_param_groups(model, 0.05), ds, OptimConfig())
    gathered = track_gathered(model) if args.track_gathered else None
    gen = torch.Generator().manual_seed(rank)
    images = torch.randn(args.micro_batch, 3, args.img_size, args.img_size, generator=gen)
    images = images.to(device=device, dtype=dtype)
    step_times: List[float] = []
    # One phase per step: the peaks show whether memory still grows from step to step.
    for i in range(1, args.steps + 1):
        t0 = time.perf_counter()
        if args.forward_only:
            with phase(phases, f"forward{i}", device), torch.no_grad():
                engine(images)
        else:
            with phase(phases, f"step{i}", device):
                loss, _, _ = engine(images)
                engine.backward(loss)
                engine.step()
        step_times.append(time.perf_counter() - t0)
    timed = step_times[1:] if len(step_times) > 1 else step_times
    result = dict(
        rank=rank, world=world, preset=args.preset, micro_batch=args.micro_batch,
        img_size=args.img_size, precision=args.precision, ds_config=args.ds_config,
        checkpointing=not args.no_checkpointing, zero_init=args.zero_init,
        forward_only=args.forward_only, fused_attn=not args.no_fused_attn,
        device=device.type, runtime_bytes=runtime, phases=phases,
        peak_bytes=max(p["peak_bytes"] for p in phases.values()),
        step_seconds=sum(timed) / len(timed), step_times=step_times,
        gathered_peak_numel=gathered[0] if gathered else None,
        total_seconds=time.perf_counter() - t_start)
    if args.out_dir:
        # A file per rank: the launcher interleaves the ranks' stdout, even within a line.
        (Path(args.out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    else:
        print(json.dumps(result), flush=True)
    # Leave together: a rank must not exit while a peer's ZeRO-3 collectives are still in flight.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remove_shm_leftovers(port: int) -> List[str]:
    """Delete DeepSpeed's CPU all-reduce segments of the job on ``port`` left in ``/dev/shm``
    (``deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``, 66 MB each); returns their names."""
    removed = []
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        try:
            path.unlink()
            removed.append(path.name)
        except FileNotFoundError:
            pass
    return removed


def launch(preset: str, *, ranks: int = 2, micro_batch: int = 2, img_size: int = 224,
           precision: str = "fp32", ds_config: str = "ds_configs/cpu_debug.json",
           checkpointing: bool = True, fused_attn: bool = True, zero_init: bool = False,
           forward_only: bool = False, steps: int = 2, threads_per_rank: int = 1,
           track_gathered: bool = False,
           timeout: Optional[float] = None, log_path: Optional[Path] = None) -> List[dict]:
    """Run :func:`worker` on ``ranks`` CPU ranks (or GPUs) under the ``deepspeed`` launcher.

    Returns one result dict per rank, sorted by rank (see :func:`worker` for the fields; bytes are
    per rank). Raises ``RuntimeError`` with the output's tail when a rank fails or reports nothing.
    ``OMP_NUM_THREADS`` is pinned to ``threads_per_rank`` so that ranks do not oversubscribe cores.
    """
    import tempfile

    port = _free_port()
    out_dir = Path(tempfile.mkdtemp(prefix="rsfm_measure_"))
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks),
           "--master_port", str(port), "--module", "rsfm_ds.planning.measure",
           "--preset", preset, "--micro-batch", str(micro_batch), "--img-size", str(img_size),
           "--precision", precision, "--ds-config", ds_config, "--steps", str(steps),
           "--out-dir", str(out_dir)]
    cmd += [flag for flag, on in [("--no-checkpointing", not checkpointing),
                                  ("--no-fused-attn", not fused_attn), ("--zero-init", zero_init),
                                  ("--forward-only", forward_only),
                                  ("--track-gathered", track_gathered)] if on]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_rank)}
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **tied_child())
    finally:
        remove_shm_leftovers(port)
    text = out.stdout + out.stderr
    if log_path is not None:
        Path(log_path).write_text(text)
    results = [json.loads(f.read_text()) for f in sorted(out_dir.glob("rank*.json"))]
    for f in out_dir.glob("rank*.json"):
        f.unlink()
    out_dir.rmdir()
    if out.returncode != 0 or len(results) != ranks:
        raise RuntimeError(f"measurement of {preset} failed (exit {out.returncode}, {len(results)} of "
                           f"{ranks} ranks reported):\n{text[-4000:]}")
    return sorted(results, key=lambda r: r["rank"])


def compare(results: List[dict], plan) -> List[dict]:
    """Measured against predicted, per rank and phase.

    Args:
        results: :func:`launch`'s output.
        plan: the :class:`~rsfm_ds.planning.memory.MemoryPlan` of the same run.

    Returns:
        One row per rank and measured phase: ``rank``, ``phase``, ``measured`` and ``predicted``
        bytes, ``ratio`` = measured / predicted, and ``seconds`` the phase took; plus a ``peak``
        row per rank (the largest phase of each).
    """
    rows = []
    for r in results:
        for name, ph in r["phases"].items():
            key = "step" if name.startswith(("step", "forward")) else name
            pred = plan.phase_peaks[key]
            rows.append(dict(rank=r["rank"], phase=name, measured=ph["peak_bytes"], predicted=pred,
                             ratio=ph["peak_bytes"] / pred, seconds=ph["seconds"]))
        rows.append(dict(rank=r["rank"], phase="peak", measured=r["peak_bytes"], predicted=plan.peak,
                         ratio=r["peak_bytes"] / plan.peak, seconds=r["total_seconds"]))
    return rows


def format_comparison(rows: List[dict]) -> str:
    out = [f"{'rank':>4} {'phase':<11} {'measured GB':>11} {'predicted GB':>12} {'ratio':>6} {'seconds':>8}"]
    for r in rows:
        out.append(f"{r['rank']:>4} {r['phase']:<11} {r['measured'] / 1e9:>11.2f} "
                   f"{r['predicted'] / 1e9:>12.2f} {r['ratio']:>6.2f} {r['seconds']:>8.1f}")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description="one rank of a ZeRO-3 MAE memory measurement "
                                            "(run under the deepspeed launcher)")
    p.add_argument("--preset", required=True)
    p.add_argument("--micro-batch", type=int, default=2, help="images per rank")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--ds-config", default="ds_configs/cpu_debug.json")
    p.add_argument("--steps", type=int, default=2, help="training steps (forward passes with --forward-only)")
    p.add_argument("--no-checkpointing", action="store_true", help="no activation checkpointing")
    p.add_argument("--no-fused-attn", action="store_true", help="explicit softmax attention")
    p.add_argument("--zero-init", action="store_true", help="build the model under deepspeed.zero.Init")
    p.add_argument("--forward-only", action="store_true",
                   help="no optimizer: initialise for inference and time forward passes")
    p.add_argument("--track-gathered", action="store_true",
                   help="record the most ZeRO-3 parameter elements gathered at once")
    p.add_argument("--out-dir", help="write rank<r>.json here instead of printing")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    worker(p.parse_args(argv))


if __name__ == "__main__":
    main()
    # Without the interpreter's teardown, which can abort a rank after it reported
    # ("terminate called without an active exception"): rsfm_ds.engine.process_end.
    finish_process(0)
