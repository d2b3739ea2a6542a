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

Following the launcher also records the job's layout, which the launch process received from the
runner as ``--world_info`` (host -> local slots, in hostfile order; ranks are numbered host by
host, as deepspeed/launcher/launch.py numbers them). When a collective fails because a peer closed
its connection, gloo names the peer's address (``Connection closed by peer [10.1.2.3]:port``);
:func:`lost_peer` turns that address back into the lost rank(s) and host, so the survivors' error
says which rank on which host went, not only that one did.

A command that starts launchers itself (``rsfm study`` runs one per cell) starts them with
:func:`tied_child`: killed, it takes its running launcher (and so every rank) with it.
"""
from __future__ import annotations

import base64
import ctypes
import functools
import json
import os
import re
import signal
import socket
import sys
from typing import Any, Dict, List, Optional

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
# host (as the hostfile names it) -> the global ranks it runs, in launch order; {} without launcher.
_layout: Dict[str, List[int]] = {}


def world_layout(launch_cmdline: str) -> Dict[str, List[int]]:
    """Host -> global ranks from a ``deepspeed.launcher.launch`` command line's ``--world_info``
    (base64 JSON ``{host: [slot, ...]}``); ranks run host after host, slot after slot
    (deepspeed/launcher/launch.py's ``global_rank_mapping``). {} when the line has none."""
    match = re.search(r"--world_info[= ](\S+)", launch_cmdline)
    if not match:
        return {}
    try:
        info = json.loads(base64.urlsafe_b64decode(match.group(1)))
    except ValueError:
        return {}
    layout, rank = {}, 0
    for host, slots in info.items():
        layout[host] = list(range(rank, rank + len(slots)))
        rank += len(slots)
    return layout


def _ranks_text(ranks: List[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"one of ranks {', '.join(map(str, ranks))}"


def lost_peer(error_text: str, layout: Optional[Dict[str, List[int]]] = None,
              own_rank: Optional[int] = None) -> Optional[str]:
    """Which rank(s) and host a collective error's peer address belongs to, e.g. ``"rank 1 on
    hostb (10.77.0.2)"``; None when the text names no address or there is no layout.

    Args:
        error_text: the backend's message; gloo writes the peer as ``[ADDR]:PORT``.
        layout: host -> global ranks (default: the one recorded by :func:`follow_launcher`).
        own_rank: the reporting rank, never the lost one (it shares a host with its peers).
    """
    layout = _layout if layout is None else layout
    match = re.search(r"\[([0-9A-Fa-f.:]+)\]:\d+", error_text)
    if not match or not layout:
        return None
    addr = match.group(1)
    for host, ranks in layout.items():
        try:
            addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            continue
        others = [r for r in ranks if r != own_rank]
        if addr in addrs and others:
            return f"{_ranks_text(others)} on {host} ({addr})"
    return None


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
    _layout.update(world_layout(_cmdline(launch)))
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


__all__ = ["follow_launcher", "lost_peer", "tied_child", "world_layout"]
