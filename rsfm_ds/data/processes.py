"""How data worker processes start (DataLoader workers, the shard writer's pool).

Default ``forkserver``: workers are forked from a small server process that never ran a thread,
instead of from the caller. Forking the caller is unsafe once it runs threads: a training process
does (DeepSpeed, CUDA, torch's pools), and OpenCV's thread pool in particular deadlocks in the child
(``cv2.setNumThreads`` or a parallel resize waits forever on a condition variable owned by a thread
that does not exist after the fork). The server preloads torch, OpenCV and WebDataset once, so a
worker still starts in milliseconds, unlike ``spawn``.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext
from typing import Any

import cv2

START_METHODS = ("forkserver", "spawn", "fork")
_PRELOAD = ["rsfm_ds.data.pretrain.loader"]  # imports everything a data worker needs


def process_context(method: str = "forkserver") -> BaseContext:
    """The multiprocessing context for data workers started with ``method``."""
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {START_METHODS}, got {method!r}")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)  # no effect once the server runs; then it is set
    return ctx


def init_worker(*_: Any) -> None:
    """Initialise a data worker: one OpenCV thread (there is one worker per core already)."""
    cv2.setNumThreads(1)
