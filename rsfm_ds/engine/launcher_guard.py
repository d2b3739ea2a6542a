"""A rank's life tied to its launcher's: no rank trains on after the job was stopped.

DeepSpeed's ``deepspeed`` command (the runner) starts ``deepspeed.launcher.launch`` on each node,
which starts the ranks and, on SIGINT or SIGTERM, terminates every rank's process tree. The runner
passes Ctrl-C on (the whole foreground process group gets it) but not a SIGTERM sent to it alone,
which is what ``timeout``, a batch scheduler's time limit or a cancelled job send: the runner exits
with 143 and the launch process, re-parented, keeps its ranks training and writing checkpoints.
A resubmitted ``--resume auto`` job would then write into the same run directory at the same time.

So every rank started by ``deepspeed.launcher.launch`` watches (without polling, on pidfds):

- the runner: when it exits, the rank sends the launch process the SIGTERM it never got, and the
  launch process ends every rank and its children as on Ctrl-C;
- the launch process: when it exits (killed), the rank exits too.

Ranks started otherwise (torchrun, srun, a plain ``python``) are left as they are.

A command that starts launchers itself (``rsfm study`` runs one per cell) starts them with
:func:`tied_child`: killed, it takes its running launcher (and so every rank) with it.
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from typing import Any, Dict, Optional

from ..data.processes import on_exit_of

LAUNCH_MODULE = "deepspeed.launcher.launch"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


_following = False


def follow_launcher() -> bool:
    """Tie this rank to DeepSpeed's launcher (module docstring; once per process); returns whether
    it was started by one."""
    global _following
    launch = os.getppid()
    if LAUNCH_MODULE not in _cmdline(launch):
        return False
    if _following:
        return True
    _following = True
    on_exit_of(launch, lambda: os._exit(1), name="rsfm-launch-watch")
    runner = _parent(launch)
    if runner not in (None, 0, 1) and "deepspeed" in _cmdline(runner) and LAUNCH_MODULE not in _cmdline(runner):
        on_exit_of(runner, lambda: _signal(launch, signal.SIGTERM), name="rsfm-runner-watch")
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """In a child between fork and exec: get SIGTERM when ``parent`` exits (it may have already)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def tied_child() -> Dict[str, Any]:
    """Keyword arguments for ``subprocess.run``/``Popen``: the child gets SIGTERM when this process
    exits, however it exits (SIGKILL included), instead of living on re-parented (Linux; elsewhere
    nothing)."""
    if not sys.platform.startswith("linux"):
        return {}
    return {"preexec_fn": functools.partial(_die_with, os.getpid())}


__all__ = ["follow_launcher", "tied_child"]
