"""``rsfm convert reshard``: a ZeRO checkpoint -> a DeepSpeed universal checkpoint, resumable anywhere.

A ZeRO checkpoint stores each rank's flat partition of the fp32 master weights and Adam moments;
it only loads at the world size that wrote it. DeepSpeed's ``ds_to_universal`` rewrites it per
parameter (``zero/<param>/{fp32,exp_avg,exp_avg_sq}.pt``, ``zero/optimizer_state.pt``) and keeps
the model-states files (with our client state); with ``"checkpoint": {"load_universal": true}`` in
the DeepSpeed config any world size re-partitions it on load. We call DeepSpeed's converter rather
than re-implementing it (it owns the layouts), and add our conventions around it: the input tag is
resolved from our ``COMPLETE`` markers, the output is a tag directory with the same name and a
``COMPLETE`` marker, so that ``rsfm pretrain --resume <OUT tag dir>`` (or ``--resume auto`` with
``run_dir`` set to the folder above it) continues from it. The pretraining engine sees the
``zero/`` layout, turns ``load_universal`` on, corrects two slips of DeepSpeed's universal loader
(per-group optimizer hyperparameters, a shared Adam step counter), and, when the world size
differs from the one in the client state, moves the data position and reseeds the RNG streams
(see :func:`rsfm_ds.engine.loop.restore`). DeepSpeed also writes ``latest_universal`` next to the
output tag.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import shutil
from pathlib import Path
from typing import Optional, Union

from ..errors import CheckpointError
from . import layout


def reshard(ckpt_dir: Union[str, Path], out: Union[str, Path], tag: Optional[str] = None, workers: int = 1) -> Path:
    """Convert a ZeRO checkpoint to a universal one; returns the output tag directory.

    Args:
        ckpt_dir: a tag directory or a checkpoints folder (newest complete tag, or ``tag``).
        out: the output tag directory when its name is a tag (``step_XXXXXXXX``), else a folder in
            which the tag is written under the source tag's name (e.g. a new run's
            ``checkpoints/``).
        tag: tag within a checkpoints folder.
        workers: processes DeepSpeed uses to extract and merge the parameter files (each holds
            one rank's optimizer file in memory).

    Raises:
        FileExistsError: the output tag exists (remove it first); CheckpointError: the input is
            already universal.
    """
    src = layout.resolve_tag_dir(ckpt_dir, tag)
    if layout.is_universal(src):
        raise CheckpointError(f"{src}: already a universal checkpoint")
    out = Path(out)
    dst = out if layout.is_tag_name(out.name) else out / src.name
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(errno.EEXIST, "exists and is not empty; remove it or choose another output", str(dst))
    step = layout.client_state(src).get("step")
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(src), output_folder=str(dst), num_extract_workers=workers,
                              num_merge_workers=workers, keep_temp_folder=False, strict=True,
                              inject_missing_state=False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed narrates every stage
            ds_to_universal.main(args)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)  # never leave a half-written tag behind
        raise
    layout.mark_complete(dst, step)
    return dst


__all__ = ["reshard"]
