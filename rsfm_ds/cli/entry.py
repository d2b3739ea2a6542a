"""The ``rsfm`` process's entry point (the console script and ``python -m rsfm_ds.cli``).

The process ends through :func:`rsfm_ds.engine.process_end.finish_process`: as a normal exit
would, without the interpreter's slow (and, for ZeRO-3 ranks, occasionally aborting) teardown.
:func:`rsfm_ds.cli.main` itself returns normally, for callers that run it in their own process.
"""
from __future__ import annotations

from ..engine.process_end import finish_process
from . import main


def run() -> None:
    """Run ``rsfm`` on the command line and end the process with its status."""
    finish_process(main())
