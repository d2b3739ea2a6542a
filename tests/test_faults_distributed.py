"""Faults of a 2-rank pretraining job started by the ``deepspeed`` launcher, as a user meets them: a
rank killed, the launcher stopped by a signal (``timeout``, a scheduler's time limit), a rank
stopped. Each asserts the process table afterwards (every process of the job carries a marker in
its environment, so the test finds even re-parented ones) and what the job logged.
"""
import json
import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import List

import pytest
from launching import DEEPSPEED, MARK, ROOT, free_port, job_processes, wait_for

pytestmark = pytest.mark.distributed

def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def rank_pid(mark: str, rank: int) -> int:
    """The rank process itself (a child of ``deepspeed.launcher.launch``), not its workers."""
    procs = job_processes(mark)
    ranks = [pid for pid, cmd in procs.items() if f"--local_rank={rank}" in cmd
             and "deepspeed.launcher.launch" in procs.get(_parent(pid), "")]
    assert len(ranks) == 1, procs
    return ranks[0]


def logged_steps(run_dir: Path) -> List[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


@contextmanager
def pretraining_job(run_dir: Path, manifest: Path, *overrides: str):
    """A 2-rank job that would run for minutes, started as a user starts it, with data-loader
    workers (they are the processes a killed rank used to leave behind). Yields ``(runner, mark,
    log)``; whatever of the job is still alive at the end is killed, so no test leaves processes
    behind even when it fails."""
    mark = uuid.uuid4().hex
    log = run_dir.parent / f"{run_dir.name}.log"
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "rsfm_ds.cli",
           "pretrain", "--config", "configs/pretrain/debug.yaml", f"run_dir={run_dir}", f"data.shards={manifest}",
           "log.every_steps=1", "log.tensorboard=false", "data.num_workers=1", "train.max_steps=5000",
           "train.epochs=1000", "checkpoint.every_steps=10000", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", MARK: mark}
    with open(log, "w") as out:
        runner = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: len(logged_steps(run_dir)) >= 2 or runner.poll() is not None, 240), "no step logged"
        assert runner.poll() is None, log.read_text()[-4000:]
        yield runner, mark, log
    finally:
        for pid in job_processes(mark):
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        runner.kill()
        runner.wait()


def test_sigkill_of_a_rank_ends_the_job_and_leaves_no_process(millionaid_shards, tmp_path):
    with pretraining_job(tmp_path / "run", millionaid_shards) as (runner, mark, log):
        os.kill(rank_pid(mark, 1), signal.SIGKILL)
        runner.wait(timeout=120)
        assert runner.returncode != 0
        # The rank's data-loader worker, fork server and resource tracker go with it.
        assert wait_for(lambda: not job_processes(mark), 30), job_processes(mark)


def test_sigterm_to_the_launcher_stops_training_and_leaves_no_process(millionaid_shards, tmp_path):
    run_dir = tmp_path / "run"
    with pretraining_job(run_dir, millionaid_shards) as (runner, mark, log):
        runner.send_signal(signal.SIGTERM)  # what `timeout` and a scheduler's time limit send
        steps_at_signal = len(logged_steps(run_dir))
        runner.wait(timeout=60)
        assert wait_for(lambda: not job_processes(mark), 30), job_processes(mark)
        time.sleep(2)
        # A step being logged as the signal arrives may still land; none after it.
        assert len(logged_steps(run_dir)) <= steps_at_signal + 1


def test_a_stopped_rank_ends_the_job_with_a_message_naming_the_rank_and_host(millionaid_shards, tmp_path):
    timeout_s = 15
    with pretraining_job(tmp_path / "run", millionaid_shards, f"train.collective_timeout_s={timeout_s}") as \
            (runner, mark, log):
        stopped = rank_pid(mark, 1)
        os.kill(stopped, signal.SIGSTOP)  # hung: alive, holding its sockets, never answering
        started = time.monotonic()
        assert wait_for(lambda: "rsfm pretrain: error:" in log.read_text(), timeout_s + 60), log.read_text()[-4000:]
        waited = time.monotonic() - started
        # The launcher now SIGTERMs its ranks; a stopped one takes that only when woken (left
        # stopped, DeepSpeed's launcher SIGKILLs it 30 s later).
        os.kill(stopped, signal.SIGCONT)
        runner.wait(timeout=60)
        assert runner.returncode != 0 and waited < timeout_s + 30, waited
        text = log.read_text()
        host = os.uname().nodename
        # The heartbeats (engine/liveness.py) tell which rank stopped; gloo's timeout names none.
        assert (f"rank 0 on {host}: a collective operation waited more than {timeout_s} s "
                f"for the other ranks (train.collective_timeout_s): rank 1 on {host} stopped answering") in text, \
            text[-4000:]
        assert wait_for(lambda: not job_processes(mark), 30), job_processes(mark)


def _descendants(pid: int, procs) -> List[int]:
    children = [p for p in procs if _parent(p) == pid]
    return children + [d for c in children for d in _descendants(c, procs)]


def test_a_rank_whose_data_loader_stalls_is_named_though_its_process_answers(millionaid_shards, tmp_path):
    """A loader that stops delivering (a hung file system under a worker): the rank's process and
    heartbeat live on, its training thread waits for a batch, the other rank times out in the next
    collective and names it from its published phase (engine/liveness.py)."""
    timeout_s = 15
    with pretraining_job(tmp_path / "run", millionaid_shards, f"train.collective_timeout_s={timeout_s}") as \
            (runner, mark, log):
        procs = job_processes(mark)
        # Everything the rank's loader runs: its fork server, the workers forked from it (a new set
        # each epoch) and the resource tracker.
        workers = _descendants(rank_pid(mark, 1), procs)
        assert any("forkserver" in procs.get(_parent(p), "") for p in workers), procs
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            assert wait_for(lambda: "rsfm pretrain: error:" in log.read_text(), timeout_s + 90), \
                log.read_text()[-4000:]
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        waited = time.monotonic() - started
        runner.wait(timeout=60)
        text = log.read_text()
        host = os.uname().nodename
        assert runner.returncode != 0 and waited < timeout_s + 60, waited
        assert (f"rank 0 on {host}: a collective operation waited more than {timeout_s} s for the other ranks "
                f"(train.collective_timeout_s): rank 1 on {host} is alive but waiting for its data loader") in text, \
            text[-4000:]
        assert wait_for(lambda: not job_processes(mark), 30), job_processes(mark)
