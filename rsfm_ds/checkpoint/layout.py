"""The on-disk layout of training checkpoints: tag names, completeness, the DeepSpeed files in a tag.

A training run writes ``<run_dir>/checkpoints/step_XXXXXXXX/`` tags (:func:`tag_for`), one
DeepSpeed ``save_checkpoint`` each: per rank a ``*_model_states.pt`` (module placeholders,
parameter shapes and the engine's client state: step, epoch, samples seen, RNG, config, world
size, preset) and a ``*_optim_states.pt`` (that rank's fp32 master partition and Adam moments). A
tag counts as complete only once its ``COMPLETE`` marker exists (:func:`mark_complete`), which the
training engine writes after every rank has finished writing; a run killed mid-save leaves a tag
without the marker, which resumption and conversion skip. ``rsfm convert reshard`` turns a tag
into a DeepSpeed *universal* checkpoint: the model-states files plus
``zero/<param>/{fp32,exp_avg,exp_avg_sq}.pt`` and ``zero/optimizer_state.pt``, no
``*_optim_states.pt``.

This module is the one place that knows these names; the engine (which saves and prunes) and the
converters (which read) both import it.

Why this module exists next to DeepSpeed's own readers: DeepSpeed picks a tag from its ``latest``
file, which DeepSpeed itself writes before the other ranks have finished, so a run killed while
saving leaves it pointing at a half-written tag; we pick the newest *complete* tag, and fall back to
``latest`` only for checkpoints written without our markers. The engine still writes ``latest``
(:func:`point_latest`), but only once a tag is complete and whole, atomically, and again after
pruning, so DeepSpeed's own tools (the ``zero_to_fp32.py`` it copies into the folder,
``engine.load_checkpoint(dir)`` without a tag) find the newest complete tag too.

Safety: DeepSpeed checkpoint files are pickles and can hold DeepSpeed objects (``ZeroStageEnum``,
``LossScaler``) and NumPy RNG arrays, which ``torch.load(weights_only=True)`` refuses. Unpickling
runs code, so a DeepSpeed checkpoint must be trusted like code. :func:`load_deepspeed_pickle` is the
only place in rsfm-ds that calls ``torch.load(..., weights_only=False)``; DeepSpeed's own
``zero_to_fp32``, ``ds_to_universal`` and ``load_checkpoint`` do the same internally.
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from ..errors import CheckpointError

COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest"  # DeepSpeed's: the tag its tools load when given only the folder
log = logging.getLogger(__name__)
_OPTIM_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_ZERO3_MODEL_FILE = "zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
_ZERO3_MODEL_RANK = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$")
_LEGACY_MODEL_FILE = "mp_rank_00_model_states.pt"


def tag_for(step: int) -> str:
    """The tag name of the checkpoint saved at optimizer step ``step``."""
    return f"step_{step:08d}"


def is_tag_name(name: str) -> bool:
    """True for our tag names (``step_XXXXXXXX``)."""
    digits = name[len("step_"):]
    return name.startswith("step_") and digits.isdigit() and tag_for(int(digits)) == name


def is_complete(tag_dir: Path) -> bool:
    """True once every rank finished writing ``tag_dir`` (its ``COMPLETE`` marker exists)."""
    return (tag_dir / COMPLETE_MARKER).is_file()


def mark_complete(tag_dir: Path, step: int) -> None:
    """Write ``tag_dir``'s ``COMPLETE`` marker; call once every rank has finished writing it."""
    (tag_dir / COMPLETE_MARKER).write_text(f"{step}\n")


def point_latest(ckpt_dir: Path) -> Optional[str]:
    """Make DeepSpeed's ``ckpt_dir/latest`` name the newest complete, whole tag (remove it when there
    is none); returns that tag. Atomic: a reader sees the old or the new name, never a partial one.
    Call on one rank, after :func:`mark_complete` and after pruning."""
    latest = ckpt_dir / LATEST_FILE
    newest = next((t for t in reversed(complete_tags(ckpt_dir)) if tag_damage(ckpt_dir / t) is None), None)
    if newest is None:
        latest.unlink(missing_ok=True)
        return None
    staged = ckpt_dir / f".{LATEST_FILE}.tmp{os.getpid()}"
    staged.write_text(newest)
    os.replace(staged, latest)
    return newest


def tag_dirs(ckpt_dir: Path) -> List[Path]:
    """Every tag directory in ``ckpt_dir``, complete or not, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and is_tag_name(p.name))


def complete_tags(ckpt_dir: Path) -> List[str]:
    """Complete checkpoint tags in ``ckpt_dir``, oldest first."""
    return [p.name for p in tag_dirs(ckpt_dir) if is_complete(p)]


def load_deepspeed_pickle(path: Path) -> Any:
    """Unpickle a DeepSpeed checkpoint file on the CPU (memory-mapped, tensors read lazily).

    The one call of ``torch.load(weights_only=False)`` in rsfm-ds: DeepSpeed's format needs it.
    Only use it on checkpoints you trust like code (docs/checkpoints.md).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # torch's "failed reading zip archive" and kin
        raise CheckpointError(f"{path}: cannot be read, the file is damaged or cut short ({e})") from None


def is_tag_dir(path: Path) -> bool:
    """True when ``path`` holds DeepSpeed model-state files (a tag directory)."""
    return path.is_dir() and any(path.glob("*model_states.pt"))


def resolve_tag_dir(path: Union[str, Path], tag: Optional[str] = None, verify: bool = True) -> Path:
    """The tag directory meant by ``path``.

    Args:
        path: a tag directory (``.../checkpoints/step_00000020``) or a checkpoints folder.
        tag: with a checkpoints folder, the tag to use; default the newest tag with a
            ``COMPLETE`` marker, or DeepSpeed's ``latest`` file when no tag has a marker
            (checkpoints written by other DeepSpeed programs).
        verify: check the tag's files (:func:`tag_damage`); a tag of ours without its
            ``COMPLETE`` marker (cut off while saving) is used with a warning.

    Raises:
        CheckpointError: naming the folder when no checkpoint is found, or the damaged file.
    """
    tag_dir = _find_tag_dir(Path(path), tag)
    if verify:
        damage = tag_damage(tag_dir)
        if damage is not None:
            older = [t for t in complete_tags(tag_dir.parent) if t < tag_dir.name]
            hint = f"; an older complete checkpoint: --tag {older[-1]}" if older else ""
            raise CheckpointError(f"damaged checkpoint: {damage}{hint}")
        if not is_complete(tag_dir) and complete_tags(tag_dir.parent):
            log.warning("%s has no %s marker: it was cut off while saving (or is still being written); "
                        "its files look whole, using it", tag_dir, COMPLETE_MARKER)
    return tag_dir


def _find_tag_dir(path: Path, tag: Optional[str]) -> Path:
    if tag is not None:
        tag_dir = path / tag
        if not is_tag_dir(tag_dir):
            raise CheckpointError(f"{tag_dir}: no DeepSpeed checkpoint (no *model_states.pt files)")
        return tag_dir
    if is_tag_dir(path):
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    tags = complete_tags(path)
    if tags:
        return path / tags[-1]
    latest = path / LATEST_FILE
    if latest.is_file() and is_tag_dir(path / latest.read_text().strip()):
        return path / latest.read_text().strip()
    raise CheckpointError(f"{path}: neither a DeepSpeed tag directory nor a checkpoints folder with a "
                          f"complete tag ({COMPLETE_MARKER} marker) or a 'latest' file")


def is_universal(tag_dir: Path) -> bool:
    """True for a DeepSpeed universal checkpoint (written by ``ds_to_universal``)."""
    return (tag_dir / "zero" / "optimizer_state.pt").is_file()


def optim_state_files(tag_dir: Path) -> List[Path]:
    """The per-rank ZeRO optimizer files of a (non-universal) tag, in rank order."""
    files = [(int(m.group(1)), p) for p in tag_dir.iterdir() if (m := _OPTIM_FILE.match(p.name))]
    return [p for _, p in sorted(files)]


def model_state_file(tag_dir: Path, rank: int = 0) -> Path:
    """Rank ``rank``'s model-states file (ZeRO-3 layout; ZeRO-1/2 have one for all ranks)."""
    zero3 = tag_dir / _ZERO3_MODEL_FILE.format(rank=rank)
    if zero3.is_file():
        return zero3
    legacy = tag_dir / _LEGACY_MODEL_FILE
    if legacy.is_file():
        return legacy
    raise CheckpointError(f"{tag_dir}: no model-states file for rank {rank} ({zero3.name})")


def saved_world_size(tag_dir: Path) -> int:
    """Data-parallel world size that wrote a non-universal tag: the one its client state records,
    else one optimizer file per rank."""
    recorded = client_state(tag_dir).get("world_size")
    if recorded:
        return int(recorded)
    n = len(optim_state_files(tag_dir))
    if n == 0:
        raise CheckpointError(f"{tag_dir}: no *_optim_states.pt files (a universal checkpoint, or "
                              f"not a ZeRO checkpoint)")
    return n


def tag_damage(tag_dir: Path) -> Optional[str]:
    """What makes the tag ``tag_dir`` unusable, naming the file, or None when its files look whole.

    Checks that read no tensor data: every rank's files are there (a ZeRO tag holds one optimizer
    file per rank, and under ZeRO-3 one model-states file per rank; as many as the world size its
    client state records) and each ``.pt`` file is a whole archive (torch saves zip archives whose
    directory sits at the end, so a file cut short has none). A universal tag needs its model-states
    files and ``zero/optimizer_state.pt``.
    """
    model_files = sorted(tag_dir.glob("*model_states.pt"))
    if not model_files:
        return f"{tag_dir}: no *model_states.pt files"
    if is_universal(tag_dir):
        files = model_files + [tag_dir / "zero" / "optimizer_state.pt"]
    else:
        optim = optim_state_files(tag_dir)
        if not optim:
            return f"{tag_dir}: no *_optim_states.pt files"
        files = model_files + optim
        ranks = {int(m.group(1)) for p in optim if (m := _OPTIM_FILE.match(p.name))}
        zero3 = {int(m.group(1)) for p in model_files if (m := _ZERO3_MODEL_RANK.match(p.name))}
        world = max(ranks | zero3) + 1
        first = tag_dir / _ZERO3_MODEL_FILE.format(rank=0)
        first = first if first.is_file() else tag_dir / _LEGACY_MODEL_FILE
        if first.is_file() and _unreadable(first) is None:  # the world size the run recorded
            world = max(world, int(client_state(tag_dir).get("world_size") or 0))
        for rank in range(world):
            if rank not in ranks:
                name = re.sub(r"zero_pp_rank_\d+_", f"zero_pp_rank_{rank}_", optim[0].name)
                return f"{tag_dir / name}: missing (rank {rank} of {world})"
            if zero3 and rank not in zero3:
                return f"{tag_dir / _ZERO3_MODEL_FILE.format(rank=rank)}: missing (rank {rank} of {world})"
    for f in files:
        problem = _unreadable(f)
        if problem:
            return f"{f}: {problem}"
    return None


def _unreadable(path: Path) -> Optional[str]:
    """Why the torch file ``path`` is not a whole archive, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except FileNotFoundError:
        return "missing"
    except (zipfile.BadZipFile, OSError) as e:
        return f"not a whole torch file (cut short or damaged: {e})"
    return None


def read_model_states(tag_dir: Path, rank: int = 0) -> Dict[str, Any]:
    """Rank ``rank``'s model-states dictionary: DeepSpeed's entries plus our client state."""
    return load_deepspeed_pickle(model_state_file(tag_dir, rank))


def client_state(tag_dir: Path, rank: int = 0) -> Dict[str, Any]:
    """Our client state of rank ``rank`` (keys ``step``, ``epoch``, ``micro_in_epoch``,
    ``samples_seen``, ``rng``, ``config``, ``world_size``, ``preset``, ``bands``); empty when the
    checkpoint was written by another program."""
    keys = ("step", "epoch", "micro_in_epoch", "samples_seen", "best", "rng", "config", "world_size", "preset",
            "bands")
    states = read_model_states(tag_dir, rank)
    return {k: states[k] for k in keys if k in states}


__all__ = ["COMPLETE_MARKER", "LATEST_FILE", "tag_for", "is_tag_name", "is_complete", "mark_complete",
           "point_latest", "tag_dirs", "tag_damage", "complete_tags", "load_deepspeed_pickle", "is_tag_dir",
           "resolve_tag_dir", "is_universal", "optim_state_files", "model_state_file", "saved_world_size",
           "read_model_states", "client_state"]
