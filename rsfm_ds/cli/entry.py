"""The ``rsfm`` process's entry point (the console script and ``python -m rsfm_ds.cli``).

After a command, CPython's own teardown of a process that imported torch and DeepSpeed and
built a model (module and C++ static destructors, thread pools) takes 1.5-3 s, during which a
launcher waits for its ranks and a job its launcher. Nothing of ours needs it, so the process ends
as a normal exit would up to that point (non-daemon threads joined, unreachable objects finalized,
every atexit handler run: multiprocessing's children, DeepSpeed's, ours; the standard streams
flushed) and then leaves with ``os._exit``. :func:`rsfm_ds.cli.main` itself returns normally, for
callers that run it in their own process.
"""
from __future__ import annotations

import atexit
import gc
import os
import sys
import threading

from . import main


def finish_process(status: int) -> None:
    """End this process with ``status`` as a normal exit would, without the interpreter's
    teardown (module docstring)."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    gc.collect()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe whose reader left
            pass
    os._exit(status)


def run() -> None:
    """Run ``rsfm`` on the command line and end the process with its status."""
    finish_process(main())
