"""Heartbeats name the hung rank (rsfm_ds/engine/liveness.py): a real rendezvous store, a real
second process that beats, is stopped with SIGSTOP, and resumes."""
import datetime
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch.distributed as dist

from rsfm_ds.engine import liveness

BEATING_RANK_1 = """
import sys, time
from rsfm_ds.engine import liveness
liveness.ORPHAN_GRACE_S = float(sys.argv[1])
assert liveness.start_heartbeat(1, 2)
liveness.mark_phase(sys.argv[2])  # published by the heartbeat thread at its next beat
print("beating", flush=True)
time.sleep(600)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_store(monkeypatch):
    """A store served by this process (rank 0), as ``init_process_group`` serves it, named by
    MASTER_ADDR/MASTER_PORT."""
    port = _free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    return dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=30))


@pytest.fixture
def rendezvous(monkeypatch):
    server = _serve_store(monkeypatch)
    monkeypatch.setattr(liveness, "_thread", None)
    yield server
    liveness.stop_heartbeat()


def _start_rank_1(orphan_grace_s: float, phase: str = "train") -> subprocess.Popen:
    """Rank 1 whose main thread is stuck (sleeping) in ``phase`` while its heartbeat thread beats."""
    return subprocess.Popen([sys.executable, "-c", BEATING_RANK_1, str(orphan_grace_s), phase], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.fixture
def rank_1(rendezvous):
    proc = _start_rank_1(600)
    try:
        assert proc.stdout.readline().strip() == "beating"
        yield proc
    finally:
        proc.kill()  # SIGKILL ends a stopped process too
        proc.wait()


def test_a_stopped_rank_is_named_with_its_host_and_a_beating_one_is_not(rank_1):
    assert liveness.start_heartbeat(0, 2)
    time.sleep(1.5 * liveness.BEAT_INTERVAL_S)
    assert liveness.stalled_ranks(2, own_rank=0) is None  # both beat
    os.kill(rank_1.pid, signal.SIGSTOP)
    try:
        assert liveness.stalled_ranks(2, own_rank=0) == f"rank 1 on {socket.gethostname()} stopped answering"
    finally:
        os.kill(rank_1.pid, signal.SIGCONT)
    time.sleep(1.5 * liveness.BEAT_INTERVAL_S)
    assert liveness.stalled_ranks(2, own_rank=0) is None


def test_a_beating_rank_that_waits_for_its_data_loader_is_named(rendezvous):
    proc = _start_rank_1(600, phase=liveness.WAITING_FOR_DATA)
    try:
        assert proc.stdout.readline().strip() == "beating"
        assert liveness.start_heartbeat(0, 2)
        time.sleep(1.5 * liveness.BEAT_INTERVAL_S)  # rank 1's phase published
        assert liveness.stalled_ranks(2, own_rank=0) == \
            f"rank 1 on {socket.gethostname()} is alive but waiting for its data loader"
        # Seen from rank 1, rank 0 (beating, training) is not named.
        assert liveness.stalled_ranks(2, own_rank=1) is None
    finally:
        proc.kill()
        proc.wait()


def test_a_store_that_does_not_answer_names_rank_0_on_the_master(monkeypatch):
    monkeypatch.setattr(liveness, "_thread", object())  # as if beating
    monkeypatch.setattr(liveness, "_STORE_TIMEOUT_S", 1.0)
    with socket.socket() as listening_but_never_answering:
        listening_but_never_answering.bind(("127.0.0.1", 0))
        listening_but_never_answering.listen()
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(listening_but_never_answering.getsockname()[1]))
        started = time.monotonic()
        text = liveness.stalled_ranks(2, own_rank=1, wait_s=0.1)
    assert text.startswith("rank 0 on 127.0.0.1"), text
    assert time.monotonic() - started < 30


def test_one_rank_and_no_store_start_no_heartbeat(monkeypatch):
    monkeypatch.setattr(liveness, "_thread", None)
    assert not liveness.start_heartbeat(0, 1)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert not liveness.start_heartbeat(0, 2)
    assert liveness.stalled_ranks(2, own_rank=0) is None


def test_a_rank_stuck_outside_collectives_ends_when_rank_0s_store_is_gone(monkeypatch):
    server = _serve_store(monkeypatch)
    proc = _start_rank_1(orphan_grace_s=2)
    try:
        assert proc.stdout.readline().strip() == "beating"
        del server  # rank 0's process ended, and its store with it
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1
    assert "has been gone for 2 s: the job ended without this rank; ending it" in proc.stderr.read()


@pytest.mark.parametrize("gloo_text", [
    # A receive that timed out (gloo's tcp/unbound_buffer.cc words it so), and the timeout
    # striking inside the pairwise exchange of a checkpoint save's all-gather (met in a 2-host run).
    "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 20000ms for recv operation to complete",
    "Application timeout caused pair closure",
])
def test_gloos_timeout_messages_are_recognised_as_collective_timeouts(gloo_text):
    from rsfm_ds.engine.loop import collective_failure

    text = collective_failure(RuntimeError(gloo_text), 20)
    assert text is not None and "waited more than 20 s for the other ranks" in text, text
    assert collective_failure(RuntimeError("shape mismatch"), 20) is None
