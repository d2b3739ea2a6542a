"""End a process that ran torch and DeepSpeed as a normal exit would, without the interpreter's
teardown.

After the work is done, CPython's own teardown of a process that imported torch and DeepSpeed and
built a model (module and C++ static destructors, thread pools) takes 1.5-3 s, during which a
launcher waits for its ranks and a job its launcher. It can also abort: when a ZeRO-3 rank's
process group is torn down by static destructors, a C++ thread may still be joinable and the
process ends with ``terminate called without an active exception`` (SIGABRT) after its results
were written, so the launcher reports a failed job. Nothing of ours needs that teardown, so
:func:`finish_process` ends the process as a normal exit would up to that point (non-daemon
threads joined, unreachable objects finalized, every atexit handler run: multiprocessing's
children, DeepSpeed's, ours; the standard streams flushed) and then leaves with ``os._exit``.

Every entry point of a rank process ends through it: the ``rsfm`` command
(:mod:`rsfm_ds.cli.entry`), the memory measurement (:mod:`rsfm_ds.planning.measure`), the
benchmarks' rank workers and the distributed tests' workers.
"""
from __future__ import annotations

import atexit
import gc
import os
import sys
import threading


def finish_process(status: int) -> None:
    """End this process with ``status`` as a normal exit would, without the interpreter's
    teardown (module docstring). Does not return."""
    # What the interpreter's own exit does first: join the non-daemon threads after threading's
    # exit hooks ran (concurrent.futures' executors stop their idle workers there; joining them
    # by hand before that would wait forever).
    threading._shutdown()
    gc.collect()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe whose reader left
            pass
    os._exit(status)
