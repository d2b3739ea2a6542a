"""How data worker processes start (DataLoader workers, the shard writer's pool).

Default ``forkserver``: workers are forked from a small server process that never ran a thread,
instead of from the caller. Forking the caller is unsafe once it runs threads: a training process
does (DeepSpeed, CUDA, torch's pools), and OpenCV's thread pool in particular deadlocks in the child
(``cv2.setNumThreads`` or a parallel resize waits forever on a condition variable owned by a thread
that does not exist after the fork). The server preloads torch, OpenCV and WebDataset once, so a
worker still starts in milliseconds, unlike ``spawn``.

A worker dies with the process it works for (:func:`worker_initializer`). Without that, a rank
that is killed leaves its workers and their server behind for good: each worker holds the server's
liveness pipe open, and PyTorch's worker watchdog watches the worker's parent, which is the server,
not the rank; the resource tracker lives as long as any of them.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import select
import threading
import time
from multiprocessing.context import BaseContext
from typing import Any, Callable

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


def on_exit_of(pid: int, action: Callable[[], None], name: str = "rsfm-watch") -> None:
    """Call ``action`` in a daemon thread as soon as process ``pid`` has exited (at once if it has).

    Waits on a pidfd (Linux 5.3+): no polling, no race with the pid being reused; elsewhere it
    checks once a second.
    """
    def wait() -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd here, or the process is already gone
            while _alive(pid):
                time.sleep(1.0)
        else:
            try:
                select.select([fd], [], [])  # readable when the process exits
            finally:
                os.close(fd)
        action()

    threading.Thread(target=wait, name=name, daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def init_worker(owner_pid: int, *_: Any) -> None:
    """Initialise a data worker of process ``owner_pid``: one OpenCV thread (there is one worker per
    core already), and exit as soon as the owner exits."""
    cv2.setNumThreads(1)
    on_exit_of(owner_pid, lambda: os._exit(1), name="rsfm-owner-watch")


def worker_initializer() -> Callable[..., None]:
    """The initializer for workers of this process (DataLoader ``worker_init_fn``, a pool's
    ``initializer``): picklable, so it reaches workers started by the fork server."""
    return functools.partial(init_worker, os.getpid())
