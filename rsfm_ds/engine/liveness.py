"""Which rank is hung: heartbeats in the job's rendezvous store, read when a collective times out.

A rank that dies closes its sockets, and gloo names the peer's address (launcher_guard.lost_peer).
A rank that hangs (stopped, stuck in I/O, spinning) keeps its sockets open: the others wait for the
collective timeout, and gloo's timeout names no peer. So every rank of a multi-rank job beats:

- at start it writes its host name under ``rsfm/liveness/host/<rank>`` in the rendezvous store
  (the TCPStore that ``MASTER_ADDR:MASTER_PORT`` names and rank 0's process serves);
- a daemon thread adds 1 to ``rsfm/liveness/beat/<rank>`` every :data:`BEAT_INTERVAL_S` seconds.

A rank whose main thread is stuck outside any collective (I/O, a kernel) never reaches the
collective timeout; its heartbeat thread also notices when the store is gone for
:data:`ORPHAN_GRACE_S` (rank 0's process ended: the job failed or stopped) and ends the rank, so
the job ends on every host.

When a collective times out, :func:`stalled_ranks` reads every rank's counter twice, a few beats
apart: the ranks whose counter did not move are hung, named with their hosts. Counters, not
clocks, so skew between hosts does not matter. When the store itself does not answer, rank 0's
process (which serves it) is the hung one, on the master address's host.

Heartbeats show that a process lives, not that its training thread moves. So the training thread
also marks where it is (:func:`mark_phase`: ``"data"`` while it waits for its data loader,
``"train"`` otherwise; a variable, no I/O) and the heartbeat thread publishes a change under
``rsfm/liveness/phase/<rank>``. When every rank beats, the survivors (inside a collective) name
the ranks still waiting for their data: a stalled loader (a hung file system or network mount, a
stopped worker). A rank stuck in its training thread elsewhere (a kernel) beats on and is not
named (the message then says that one of the ranks stopped, hung or died).

A beat costs one small store round trip per second per rank, in its own connection (its own
timeout, never the process group's), and never touches the training thread.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import threading
import time
from typing import Dict, List, Optional

BEAT_INTERVAL_S = 1.0
# Counters are compared this many beats apart: a live rank moves by ~3, a hung one by 0.
_COMPARE_BEATS = 3
_STORE_TIMEOUT_S = 10.0
# A rank whose store is gone this long is orphaned (every finished rank has left well before).
ORPHAN_GRACE_S = 60.0
_PREFIX = "rsfm/liveness"

_thread: Optional[threading.Thread] = None
_stop = threading.Event()
# Where this rank's training thread is (mark_phase); the heartbeat thread publishes changes.
_phase = "train"
WAITING_FOR_DATA = "data"


def mark_phase(phase: str) -> None:
    """Note where the training thread is (``"data"``: waiting for its data loader; ``"train"``).
    Costs an assignment; the heartbeat thread publishes it."""
    global _phase
    _phase = phase


def _store():
    """A new client connection to the job's rendezvous store; None without MASTER_ADDR/PORT."""
    import torch.distributed as dist

    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    return dist.TCPStore(addr, int(port), is_master=False, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=_STORE_TIMEOUT_S))


def _beat(store, rank: int, published: str) -> None:
    key = f"{_PREFIX}/beat/{rank}"
    while not _stop.wait(BEAT_INTERVAL_S):
        try:
            store.add(key, 1)
            phase = _phase
            if phase != published:
                store.set(f"{_PREFIX}/phase/{rank}", phase)
                published = phase
        except Exception:
            # The connection to rank 0's process broke: that process ended, or the network to it
            # failed; either ends the job. A rank whose training thread is healthy fails at its next
            # collective long before the grace ends; only a stuck one is still here then.
            if not _stop.wait(ORPHAN_GRACE_S):
                _end_orphan(rank)
            return


def _end_orphan(rank: int) -> None:
    """The rendezvous store has not answered for ORPHAN_GRACE_S: rank 0's process ended (the job
    failed or was stopped there) while this rank is stuck outside any collective, where the
    collective timeout cannot reach it. Leave, so the job ends on every host."""
    sys.stderr.write(f"rsfm: rank {rank} on {socket.gethostname()}: the job's rendezvous store (rank 0's "
                     f"process on {os.environ.get('MASTER_ADDR', '?')}) has been gone for {ORPHAN_GRACE_S:g} s: "
                     "the job ended without this rank; ending it\n")
    sys.stderr.flush()
    os._exit(1)


def start_heartbeat(rank: int, world: int) -> bool:
    """Publish this rank's host and start beating (once per process; only for world > 1).
    Returns whether heartbeats run."""
    global _thread
    if _thread is not None or world <= 1:
        return _thread is not None
    try:
        store = _store()
    except Exception:  # no store to reach (a launcher without MASTER_ADDR): timeouts stay unnamed
        return False
    if store is None:
        return False
    store.set(f"{_PREFIX}/host/{rank}", socket.gethostname())
    phase = _phase
    store.set(f"{_PREFIX}/phase/{rank}", phase)
    store.add(f"{_PREFIX}/beat/{rank}", 1)
    _stop.clear()
    _thread = threading.Thread(target=_beat, args=(store, rank, phase), name="rsfm-heartbeat", daemon=True)
    _thread.start()
    return True


def stop_heartbeat() -> None:
    """Stop beating (at the end of a run, before the ranks part: a beat into the store of a rank 0
    that has already left would be reported as a broken connection)."""
    global _thread
    if _thread is not None:
        _stop.set()
        _thread.join()
        _thread = None


def _counters(store, world: int) -> List[int]:
    return [int(v) for v in store.multi_get([f"{_PREFIX}/beat/{r}" for r in range(world)])]


def _host_of(store, rank: int) -> str:
    try:
        return store.get(f"{_PREFIX}/host/{rank}").decode()
    except Exception:
        return "?"


def _within(seconds: float, fn):
    """``fn()``'s result, or TimeoutError when it has not returned within ``seconds``: a store
    whose server process is stopped accepts the connection (the kernel does) and never answers,
    and the store client's own timeout does not cover that."""
    result: Dict[str, object] = {}

    def call():
        try:
            result["value"] = fn()
        except BaseException as e:  # handed to the caller
            result["error"] = e

    worker = threading.Thread(target=call, name="rsfm-liveness-read", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def stalled_ranks(world: int, own_rank: int, wait_s: Optional[float] = None) -> Optional[str]:
    """Say which ranks hold the job up, e.g. ``"rank 1 on hostb stopped answering"``: those whose
    heartbeat stopped between two readings ``wait_s`` apart (default three beats) or, when every
    rank beats, those still waiting for their data loader (``"rank 1 on hostb is alive but waiting
    for its data loader"``). When the store does not answer, names rank 0 (whose process
    serves it) on the master address. None when heartbeats do not run or no rank can be named.
    Returns within ``wait_s`` plus twice the store timeout."""
    if _thread is None:
        return None
    wait_s = BEAT_INTERVAL_S * _COMPARE_BEATS if wait_s is None else wait_s

    def read():
        store = _store()
        before = _counters(store, world)
        time.sleep(wait_s)
        after = _counters(store, world)
        others = [r for r in range(world) if r != own_rank]
        stalled = [r for r in others if after[r] == before[r]]
        if stalled:
            return ", ".join(f"rank {r} on {_host_of(store, r)}" for r in stalled) + " stopped answering"
        phases = [v.decode() for v in store.multi_get([f"{_PREFIX}/phase/{r}" for r in range(world)])]
        return ", ".join(f"rank {r} on {_host_of(store, r)} is alive but waiting for its data loader"
                         for r in others if phases[r] == WAITING_FOR_DATA) or None

    try:
        return _within(wait_s + 2 * _STORE_TIMEOUT_S, read)
    except (TimeoutError, RuntimeError, OSError):  # the store's errors (DistError is a RuntimeError)
        return (f"rank 0 on {os.environ.get('MASTER_ADDR', '?')} (its process serves the rendezvous store, "
                "which does not answer) stopped answering")


__all__ = ["BEAT_INTERVAL_S", "ORPHAN_GRACE_S", "WAITING_FOR_DATA", "mark_phase", "stalled_ranks",
           "start_heartbeat", "stop_heartbeat"]
