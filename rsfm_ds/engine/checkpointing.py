"""Training checkpoints on top of DeepSpeed's ``save_checkpoint``: when, which to keep, resuming.

:class:`CheckpointManager` owns the policy: a checkpoint every ``checkpoint.every_steps`` and at
the end, the newest ``keep_last`` complete ones kept, the best evaluation kept apart, the
``COMPLETE`` marker written by rank 0 once every rank has finished writing (a barrier), and the
checkpoint to resume from. Where the files are and what makes a tag complete is
:mod:`rsfm_ds.checkpoint.layout`'s.

The client state (:class:`~rsfm_ds.engine.state.TrainState` plus every RNG state, the run config,
the world size and the preset) holds what DeepSpeed does not.

Another world size: a ZeRO checkpoint only loads at the world size that wrote it, which
:func:`resume_ds_config` checks before DeepSpeed is initialised (naming ``rsfm convert reshard``).
A universal checkpoint (``rsfm convert reshard``, a ``zero/`` folder in the tag) loads at any world
size with DeepSpeed's ``load_universal``, which :func:`resume_ds_config` turns on;
:meth:`CheckpointManager.load` corrects two slips of DeepSpeed's universal loader (per-group
hyperparameters, a shared Adam step counter). At the same world size the resume stays exact (each
rank takes its own RNG state, :func:`rank_rng_state`). At another one the data position is kept in
samples (:func:`resharded_position`) and every RNG stream is reseeded from ``(seed, step, rank)``
(:func:`resharded_seed`): the old ranks' streams have no counterpart in the new world.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from ..checkpoint import layout
from ..config import ConfigError
from ..errors import CheckpointError

# Fault injection for the crash-safety test: rank 0 SIGKILLs itself while saving this step, after
# the shards are written and before the checkpoint is marked complete.
FAULT_KILL_DURING_SAVE = "RSFM_FAULT_KILL_DURING_SAVE"
BEST_PREFIX = "best_"
_FULL_DISK_BYTES = 16 * 2 ** 20  # less free than this after a failed write: the disk was full


class CheckpointManager:
    """Saves, prunes and finds the checkpoints of one run in ``ckpt_dir``.

    Args:
        ckpt_dir: ``<run_dir>/checkpoints``.
        every_steps: save when the step is a multiple of this (and at the last step).
        keep_last: complete checkpoints kept (best-evaluation checkpoints are kept apart).
        resume: ``"auto"`` (the newest complete checkpoint, if any), a tag directory, or None.
    """

    def __init__(self, ckpt_dir: Path, every_steps: int, keep_last: int, resume: Optional[str]):
        self.ckpt_dir = Path(ckpt_dir)
        self.every_steps, self.keep_last, self.resume = every_steps, keep_last, resume
        self.passed_over: List[str] = []
        """Why :meth:`resume_path` did not take newer complete checkpoints (for the log)."""

    @classmethod
    def for_run(cls, run_dir: Path, cfg) -> "CheckpointManager":
        """The manager of ``run_dir`` configured by a ``checkpoint`` config section."""
        return cls(Path(run_dir) / "checkpoints", cfg.every_steps, cfg.keep_last, cfg.resume)

    def due(self, step: int, stop_step: int) -> bool:
        return step % self.every_steps == 0 or step == stop_step

    def resume_path(self) -> Optional[Path]:
        """The tag directory to resume from: ``auto`` = the newest complete tag whose files are
        whole (or None; damaged ones are passed over, :attr:`passed_over` says why), a path = that
        tag directory (which must be complete and whole), None = start fresh."""
        if self.resume is None:
            return None
        if self.resume == "auto":
            for tag in reversed(layout.complete_tags(self.ckpt_dir)):
                damage = layout.tag_damage(self.ckpt_dir / tag)
                if damage is None:
                    return self.ckpt_dir / tag
                self.passed_over.append(f"not resuming from {tag}, it is damaged: {damage}")
            return None
        path = Path(self.resume)
        if not layout.is_complete(path):
            raise CheckpointError(f"checkpoint.resume: {path} is not a complete checkpoint (no "
                                  f"{layout.COMPLETE_MARKER} marker: missing, or cut off while saving)")
        damage = layout.tag_damage(path)
        if damage is not None:
            raise CheckpointError(f"checkpoint.resume: damaged checkpoint: {damage}")
        return path

    def save(self, engine, step: int, client_state: Dict[str, Any]) -> Path:
        """Save a DeepSpeed checkpoint for ``step`` on every rank, mark it complete, prune old ones."""
        path = self.ckpt_dir / layout.tag_for(step)
        if dist.get_rank() == 0 and path.exists():  # a leftover of a run killed while saving this step
            shutil.rmtree(path)
        dist.barrier()
        self._save_files(engine, path, client_state)
        if os.environ.get(FAULT_KILL_DURING_SAVE) == str(step) and dist.get_rank() == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        dist.barrier()
        if dist.get_rank() == 0:
            layout.mark_complete(path, step)
            self.prune()
            layout.point_latest(self.ckpt_dir)  # for DeepSpeed's own tools; COMPLETE stays our truth
        dist.barrier()
        return path

    def save_best(self, engine, step: int, client_state: Dict[str, Any], best: Dict[str, Any]) -> Path:
        """Save the best model so far as ``best_step_XXXXXXXX`` (complete-marked, with ``best.json``),
        then delete the previous best. Resumption never picks these up by itself."""
        path = self.ckpt_dir / f"{BEST_PREFIX}{layout.tag_for(step)}"
        dist.barrier()
        self._save_files(engine, path, client_state)
        dist.barrier()
        if dist.get_rank() == 0:
            (path / "best.json").write_text(json.dumps(best, indent=2))
            layout.mark_complete(path, step)
            for old in self.ckpt_dir.glob(f"{BEST_PREFIX}step_*"):
                if old.name != path.name:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return path

    def _save_files(self, engine, path: Path, client_state: Dict[str, Any]) -> None:
        """This rank's files of the tag ``path``. A full disk surfaces from torch's writer as a bare
        "iostream error" or "file write failed"; it becomes an ENOSPC error naming the tag (the
        incomplete tag is left without its marker, so the last complete checkpoint stays the
        resume point and the next save removes the leftover)."""
        try:
            engine.save_checkpoint(str(self.ckpt_dir), tag=path.name, client_state=client_state, save_latest=False)
        except (RuntimeError, OSError) as e:
            full = isinstance(e, OSError) and e.errno == errno.ENOSPC
            if not full and shutil.disk_usage(self.ckpt_dir).free > _FULL_DISK_BYTES:
                raise
            raise OSError(errno.ENOSPC, "no space left on the device while saving this checkpoint; the last "
                                        "complete checkpoint is kept: free space, then resume with "
                                        "--resume auto", str(path)) from e

    def prune(self) -> None:
        """Delete all but the newest ``keep_last`` complete tags, and incomplete tags older than the
        newest complete one (leftovers of interrupted saves)."""
        complete = layout.complete_tags(self.ckpt_dir)
        for tag in complete[:-self.keep_last]:
            shutil.rmtree(self.ckpt_dir / tag, ignore_errors=True)
        if complete:
            for tag_dir in layout.tag_dirs(self.ckpt_dir):
                if tag_dir.name < complete[-1] and not layout.is_complete(tag_dir):
                    shutil.rmtree(tag_dir, ignore_errors=True)

    @staticmethod
    def load(engine, path: Path) -> Dict[str, Any]:
        """Load model, optimizer and client state of the tag directory ``path``; returns the client
        state."""
        groups = engine.optimizer.param_groups if engine.optimizer is not None else []
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        _, client_state = engine.load_checkpoint(str(path.parent), tag=path.name,
                                                 load_optimizer_states=True, load_lr_scheduler_states=False)
        if client_state is None:
            raise CheckpointError(f"{path}: DeepSpeed found no checkpoint for this rank")
        if layout.is_universal(path):
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


def resume_ds_config(ds_config: Dict[str, Any], path: Optional[Path], world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config for resuming from the tag directory ``path`` (None: a fresh start, the
    config unchanged) with ``world_size`` ranks.

    A universal checkpoint gets ``"checkpoint": {"load_universal": true}`` (DeepSpeed must know
    before it builds the optimizer). A ZeRO checkpoint written by another world size is refused
    here, before anything is built, with the conversion that makes it loadable.
    """
    if path is None:
        return ds_config
    if layout.is_universal(path):
        return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
    saved = layout.saved_world_size(path)
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
    if not layout.is_universal(path):
        return state["rng"]
    return layout.client_state(path, rank)["rng"]


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


__all__ = ["CheckpointManager", "FAULT_KILL_DURING_SAVE", "resume_ds_config", "rank_rng_state",
           "resharded_position", "resharded_seed"]
