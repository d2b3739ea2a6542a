"""Training checkpoints on top of DeepSpeed's ``save_checkpoint``: completeness, retention, RNG.

Layout: ``<run_dir>/checkpoints/step_00000100/`` is one DeepSpeed tag (its ZeRO shards and
per-rank model-state files, which carry our client state). A tag counts as complete only once
``COMPLETE`` exists in it; rank 0 writes that marker after every rank has finished writing (a
barrier), so a run killed mid-save leaves a tag without the marker, which resumption skips and the
next successful save deletes. DeepSpeed's own ``latest`` file is not trusted for that reason.

The client state holds what DeepSpeed does not: step, epoch, samples seen, the data loader's
position, every RNG state (Python, NumPy, torch CPU and CUDA, the masking generator) and the run
config.

Another world size: a ZeRO checkpoint only loads at the world size that wrote it, which
:func:`resume_ds_config` checks before DeepSpeed is initialised (naming ``rsfm convert reshard``).
A universal checkpoint (``rsfm convert reshard``, a ``zero/`` folder in the tag) loads at any world
size with DeepSpeed's ``load_universal``, which :func:`resume_ds_config` turns on; :func:`load`
corrects two slips of DeepSpeed's universal loader (per-group hyperparameters, a shared Adam step
counter). At the same world size the resume stays exact (each rank takes its own RNG state,
:func:`rank_rng_state`). At another
one the data position is kept in samples (:func:`resharded_position`) and every RNG stream is
reseeded from ``(seed, step, rank)`` (:func:`resharded_seed`): the old ranks' streams have no
counterpart in the new world.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..config import ConfigError

COMPLETE_MARKER = "COMPLETE"
# Fault injection for the crash-safety test: rank 0 SIGKILLs itself while saving this step, after
# the shards are written and before the checkpoint is marked complete.
FAULT_KILL_DURING_SAVE = "RSFM_FAULT_KILL_DURING_SAVE"
_TAG = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_tags(ckpt_dir: Path) -> List[str]:
    """Complete checkpoint tags in ``ckpt_dir``, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir()
            if p.is_dir() and _TAG.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(tags)


def resolve_resume(resume: Optional[str], ckpt_dir: Path) -> Optional[Path]:
    """The checkpoint directory to resume from: ``auto`` = newest complete tag (or None),
    a path = that tag directory (which must be complete), None = start fresh."""
    if resume is None:
        return None
    if resume == "auto":
        tags = complete_tags(ckpt_dir)
        return ckpt_dir / tags[-1] if tags else None
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"checkpoint.resume: {path} is not a complete checkpoint "
                                f"(no {COMPLETE_MARKER} marker: missing, or cut off while saving)")
    return path


def rng_state(generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: Dict[str, Any], generator: Optional[torch.Generator] = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def save(engine, ckpt_dir: Path, step: int, client_state: Dict[str, Any], keep_last: int) -> Path:
    """Save a DeepSpeed checkpoint for ``step`` on every rank, mark it complete, prune old ones."""
    tag = tag_for(step)
    path = ckpt_dir / tag
    if dist.get_rank() == 0 and path.exists():  # a leftover of a run killed while saving this step
        shutil.rmtree(path)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    if os.environ.get(FAULT_KILL_DURING_SAVE) == str(step) and dist.get_rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()
    if dist.get_rank() == 0:
        (path / COMPLETE_MARKER).write_text(f"{step}\n")
        prune(ckpt_dir, keep_last)
    dist.barrier()
    return path


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete tags, and incomplete tags older than the
    newest complete one (leftovers of interrupted saves)."""
    complete = complete_tags(ckpt_dir)
    for tag in complete[:-keep_last]:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    if complete:
        newest = complete[-1]
        for p in ckpt_dir.iterdir():
            if p.is_dir() and _TAG.match(p.name) and p.name < newest and not (p / COMPLETE_MARKER).exists():
                shutil.rmtree(p, ignore_errors=True)


def load(engine, path: Path) -> Dict[str, Any]:
    """Load model, optimizer and client state of the tag directory ``path``; returns client state."""
    from ..checkpoint import ds_layout

    groups = engine.optimizer.param_groups if engine.optimizer is not None else []
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    _, client_state = engine.load_checkpoint(str(path.parent), tag=path.name,
                                             load_optimizer_states=True, load_lr_scheduler_states=False)
    if client_state is None:
        raise FileNotFoundError(f"{path}: DeepSpeed found no checkpoint for this rank")
    if ds_layout.is_universal(path):
        # Two slips of DeepSpeed's universal loader (0.19) break an exact resume. It gives every
        # parameter group the hyperparameters of the first (weight decay then reaches norms and
        # biases, or leaves the weights): put this run's back. And it puts one `step` tensor into
        # every group's Adam state, which torch's Adam increments in place once per group and step
        # (wrong bias correction from the first step on): give each state its own copy.
        for group, saved in zip(groups, hyper):
            group.update(saved)
        for state in (engine.optimizer.state.values() if engine.optimizer is not None else ()):
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
    return client_state


def resume_ds_config(ds_config: Dict[str, Any], path: Path, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config for resuming from the tag directory ``path`` with ``world_size`` ranks.

    A universal checkpoint gets ``"checkpoint": {"load_universal": true}`` (DeepSpeed must know
    before it builds the optimizer). A ZeRO checkpoint written by another world size is refused
    here, before anything is built, with the conversion that makes it loadable.
    """
    from ..checkpoint import ds_layout

    if ds_layout.is_universal(path):
        return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
    saved = ds_layout.saved_world_size(path)
    if saved != world_size:
        raise ConfigError(f"checkpoint.resume: {path} was saved by {saved} ranks and this run has {world_size}; "
                          f"convert it with `rsfm convert reshard {path} <new run_dir>/checkpoints` and resume "
                          f"from the result")
    return ds_config


def rank_rng_state(path: Path, rank: int, state: Dict[str, Any]) -> Dict[str, Any]:
    """This rank's saved RNG state, for a resume at the world size that saved ``path``.

    DeepSpeed hands every rank its own client state from a ZeRO checkpoint (``state``), but rank
    0's from a universal one, whose model-states files still hold each rank's own.
    """
    from ..checkpoint import ds_layout

    if not ds_layout.is_universal(path):
        return state["rng"]
    return ds_layout.client_state(path, rank)["rng"]


def resharded_position(state: Dict[str, Any], global_batch_size: int, steps_per_epoch: int,
                       accum: int) -> Tuple[int, int]:
    """``(epoch, micro_in_epoch)`` continuing ``state``'s epoch at another world size.

    The loader's per-rank sample ranges depend on the world size, so the old position cannot be
    continued sample for sample. It is kept *in samples*: the samples of the epoch consumed at the
    save (micro-batches x micro batch size x old world size) become whole optimizer steps of this
    run (rounded down when the global batch changed), so epochs keep their length in steps, the
    schedule and ``samples_seen`` continue unchanged, and the next epoch is exact again. Within the
    resumed epoch some samples repeat and as many are skipped (at most the part consumed before
    the save). A position at or past the end of the epoch moves to the start of the next.
    """
    old_micro = state["config"]["train"]["micro_batch_size"]
    consumed = state["micro_in_epoch"] * old_micro * state["world_size"]
    steps = consumed // global_batch_size
    if steps >= steps_per_epoch:
        return state["epoch"] + 1, 0
    return state["epoch"], steps * accum


def resharded_seed(seed: int, step: int, rank: int) -> int:
    """Seed of every RNG stream of ``rank`` (Python, NumPy, torch, masking generator) after a resume
    at ``step`` with another world size: a function of ``(seed, step, rank)`` only, so a resharded
    resume is itself reproducible."""
    return ((seed * 1_000_003 + step) * 1_000_003 + rank) % 2 ** 63
