"""Two hosts on one machine (tests/netns.py): ZeRO-3 MAE pretraining of the debug preset across
them, through the deepspeed launcher and through SLURM, against the same world size on one host.

World size is 2 everywhere (one rank per host, or two ranks on one host), so the ranks see the
same data, the same RNG streams and the same collectives in the same order: the losses must be
equal to the last bit. What runs:

1. at once: the reference, 1 host x 2 ranks (launch/pretrain.sh), 4 steps, checkpoints at 2 and
   4; and a 2-host job (launch/pretrain.sh on each host: ``NO_SSH=1 NODE_RANK=k HOSTFILE=...
   MASTER_ADDR=hosta``) whose rank on host B is SIGKILLed after step 3 (checkpoint 2 written);
2. at once: 1 host x 2 ranks resuming from the 2-host checkpoint; 2 hosts resuming from the
   1-host checkpoint; and a 2-node SLURM job (``sbatch --nodes=2`` of launch/slurm/pretrain.sbatch
   on launch/slurm/testbed.sh's two-node cluster) resubmitted on the killed 2-host run, which it
   must resume with ``--resume auto``; the 2-host resume trains on past step 4, then its rank on
   host B is stopped (SIGSTOP, hung): host A's job must end after the collective timeout naming
   that rank and host, and host B's once the rank is woken.

Every process is asserted gone afterwards (the namespaces' process lists, and a marker in the
environment of the one-host jobs), and the bed is asserted removed.
"""
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
from launching import MARK, ROOT, free_port, job_processes, wait_for

import netns
from rsfm_ds.engine import launcher_guard

pytestmark = pytest.mark.multinode

# A dead peer closes its sockets and the survivor fails at once; a hung one costs the timeout.
COLLECTIVE_TIMEOUT_S = 20
# After the failing collective: the rank's error, the launcher stopping its ranks, the runner.
GRACE_S = 40
TESTBED = ROOT / "launch" / "slurm" / "testbed.sh"
COMMON = ["log.every_steps=1", "log.tensorboard=false", "data.num_workers=0", "checkpoint.every_steps=2",
          "checkpoint.keep_last=5", f"train.collective_timeout_s={COLLECTIVE_TIMEOUT_S}"]


def _skip_reason() -> str:
    return netns.unavailable()


@pytest.fixture(scope="module")
def hosts():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with netns.two_hosts() as bed:
        yield bed
    assert netns.leftovers(bed) == []


def losses(run_dir: Path) -> Dict[int, float]:
    """Step -> loss from metrics.jsonl (a resumed run's later lines supersede earlier ones)."""
    path = run_dir / "metrics.jsonl"
    out = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.endswith("}"):
            record = json.loads(line)
            out[record["step"]] = record["train/loss"]
    return out


def _env(**extra: str) -> Dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def one_host(run_dir: Path, shards: Path, *overrides: str, **env: str) -> subprocess.Popen:
    """launch/pretrain.sh on this machine's own network: 1 host x 2 ranks."""
    log = open(f"{run_dir}.log", "w")
    return subprocess.Popen(["bash", "launch/pretrain.sh", f"run_dir={run_dir}", f"data.shards={shards}", *COMMON,
                             *overrides], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=_env(NPROC_PER_NODE="2", MASTER_PORT=str(free_port()), **env))


def two_hosts(bed, run_dir: Path, shards: Path, *overrides: str, port: int = 29500, **env: str) -> List[subprocess.Popen]:
    """launch/pretrain.sh once per host, as a scheduler (or a user on each node) runs it: no ssh,
    this host's index in the hostfile, the master named by its host name."""
    hostfile = Path(f"{run_dir}.hostfile")
    hostfile.write_text("".join(f"{h.name} slots=1\n" for h in bed))
    procs = []
    for k, host in enumerate(bed):
        log = open(f"{run_dir}.{host.name}.log", "w")
        procs.append(subprocess.Popen(
            host.argv(["bash", "launch/pretrain.sh", f"run_dir={run_dir}", f"data.shards={shards}", *COMMON,
                       *overrides]),
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env=_env(NPROC_PER_NODE="1", NNODES="2", HOSTFILE=str(hostfile), NO_SSH="1", NODE_RANK=str(k),
                     MASTER_ADDR=bed[0].name, MASTER_PORT=str(port), **env)))
    return procs


def _tail(path, n=3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError as e:
        return f"({e})"


def _wait_ok(proc: subprocess.Popen, log, timeout=400) -> None:
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}, log {log}:\n{_tail(log)}"


def _rank_on(host: netns.Host, run_dir: Path) -> int:
    """The rank process inside ``host`` (a child of deepspeed.launcher.launch) training into ``run_dir``:
    other jobs may have ranks on the same host (the SLURM job of phase 2 runs one there)."""
    def cmd(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    def parent(pid):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    ranks = [p for p in host.pids() if "rsfm_ds.cli" in cmd(p) and "--local_rank=" in cmd(p)
             and f" run_dir={run_dir} " in cmd(p)
             and "deepspeed.launcher.launch" not in cmd(p) and "deepspeed.launcher.launch" in cmd(parent(p))]
    assert len(ranks) == 1, {p: cmd(p) for p in host.pids()}
    return ranks[0]


@pytest.fixture(scope="module")
def first_jobs(hosts, millionaid_shards, tmp_path_factory):
    """Phase 1: the 1-host reference and the 2-host job killed on host B (module docstring)."""
    work = tmp_path_factory.mktemp("multinode")
    mark = uuid.uuid4().hex
    started = time.monotonic()
    ref = one_host(work / "reference", millionaid_shards, "train.max_steps=4", **{MARK: mark})
    killed = work / "killed"
    a, b = two_hosts(hosts, killed, millionaid_shards, "train.max_steps=1000", "train.epochs=1000")
    try:
        assert wait_for(lambda: len(losses(killed)) >= 3 or a.poll() is not None or b.poll() is not None, 400), \
            _tail(f"{killed}.hosta.log")
        assert a.poll() is None and b.poll() is None, _tail(f"{killed}.hosta.log") + _tail(f"{killed}.hostb.log")
        os.kill(_rank_on(hosts[1], killed), signal.SIGKILL)
        killed_at = time.monotonic()
        a.wait(timeout=COLLECTIVE_TIMEOUT_S + GRACE_S + 60)
        ended_a = time.monotonic() - killed_at
        b.wait(timeout=60)
        ended_b = time.monotonic() - killed_at
        _wait_ok(ref, f"{work}/reference.log")
    finally:
        for proc in (ref, a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"\n[multinode] phase 1 (reference + killed 2-host job): {time.monotonic() - started:.1f} s")
    return dict(work=work, reference=work / "reference", killed=killed, mark=mark, ended=(ended_a, ended_b),
                codes=(a.returncode, b.returncode))


def test_world_layout_numbers_ranks_host_after_host_as_the_launcher_does():
    info = base64.urlsafe_b64encode(json.dumps({"hosta": [0, 1], "hostb": [0, 1]}).encode()).decode()
    line = f"python -u -m deepspeed.launcher.launch --world_info={info} --master_addr=hosta --node_rank=1"
    assert launcher_guard.world_layout(line) == {"hosta": [0, 1], "hostb": [2, 3]}
    assert launcher_guard.world_layout("python -m deepspeed.launcher.launch --node_rank=0") == {}


def test_lost_peer_names_the_rank_and_host_behind_gloos_peer_address():
    closed = "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242"
    assert launcher_guard.lost_peer(closed, {"localhost": [0, 1]}, own_rank=0) == "rank 1 on localhost (127.0.0.1)"
    assert launcher_guard.lost_peer(closed, {"localhost": [0, 1, 2]}, own_rank=2) == \
        "one of ranks 0, 1 on localhost (127.0.0.1)"
    # The peer's address belongs to no host of the layout, or the message names no address.
    assert launcher_guard.lost_peer(closed.replace("127.0.0.1", "192.0.2.7"), {"localhost": [0, 1]}) is None
    assert launcher_guard.lost_peer("Connection closed by peer", {"localhost": [0, 1]}) is None
    assert launcher_guard.lost_peer(closed, {}) is None


def test_the_bed_leaves_nothing_behind_even_after_a_failure():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="boom"):
        with netns.two_hosts() as bed:
            # One process per host, the second deaf to SIGTERM: both must go.
            procs = [subprocess.Popen(bed[0].argv(["sleep", "600"])),
                     subprocess.Popen(bed[1].argv(["sh", "-c", "trap '' TERM; sleep 600 & wait"]))]
            assert wait_for(lambda: all(h.pids() for h in bed), 10)
            out = subprocess.run(bed[0].argv(["sh", "-c", "hostname; getent hosts hostb"]), capture_output=True,
                                 text=True, timeout=30).stdout.split()
            assert out == ["hosta", bed[1].addr, "hostb"], out
            raise RuntimeError("boom")
    for proc in procs:
        proc.wait(timeout=10)
    assert netns.leftovers(bed) == []
    assert not any(h.pids() for h in bed)


def test_two_hosts_reach_the_one_host_losses_bit_for_bit(first_jobs):
    reference, two = losses(first_jobs["reference"]), losses(first_jobs["killed"])
    assert sorted(reference) == [1, 2, 3, 4]
    assert len(two) >= 3
    for step in sorted(set(two) & set(reference)):
        assert two[step] == reference[step], (step, two[step], reference[step])


def test_killing_the_rank_on_host_b_ends_the_job_on_both_hosts(first_jobs, hosts):
    ended_a, ended_b = first_jobs["ended"]
    killed = first_jobs["killed"]
    assert all(code != 0 for code in first_jobs["codes"]), first_jobs["codes"]
    assert ended_a < COLLECTIVE_TIMEOUT_S + GRACE_S and ended_b < COLLECTIVE_TIMEOUT_S + GRACE_S, (ended_a, ended_b)
    text = Path(f"{killed}.hosta.log").read_text()
    assert f"rank 0 on hosta: lost the connection to rank 1 on hostb ({hosts[1].addr})" in text, text[-4000:]
    assert (killed / "checkpoints/step_00000002/COMPLETE").is_file()
    assert not any(h.pids() for h in hosts), [h.pids() for h in hosts]
    assert job_processes(first_jobs["mark"]) == {}
    print(f"[multinode] host A's job ended {ended_a:.1f} s after the kill, host B's {ended_b:.1f} s")


def _slurm_env(directory: Path, work: Path, bed) -> Dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    return {**env, "SLURM_CONF": str(directory / "slurm.conf"), "RSFM_ROOT": str(ROOT), "VIRTUAL_ENV": sys.prefix,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "RSFM_JOB_DIR": str(work), "GPUS_PER_NODE": "1",
            "OMP_NUM_THREADS": "1", "RSFM_HOSTS": " ".join(f"{h.name}:{h.netns}:{h.addr}" for h in bed)}


def _slurm_missing() -> str:
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "nsenter") if not shutil.which(t)]
    return f"{', '.join(missing)} missing (`bash launch/slurm/testbed.sh install`)" if missing else ""


class SlurmJob:
    """A 2-node sbatch of launch/slurm/pretrain.sbatch on the two-node testbed; ``wait`` polls
    ``scontrol show job`` until it has ended and returns its state."""

    def __init__(self, directory: Path, env: Dict[str, str], run_dir: Path, shards: Path, *overrides: str):
        self.dir, self.env, self.log = directory, env, run_dir.parent / "slurm-%j.out"
        proc = self._client("sbatch", "--parsable", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1",
                            f"--output={self.log}", "--export=ALL,CONFIG=configs/pretrain/debug.yaml",
                            ROOT / "launch/slurm/pretrain.sbatch", f"run_dir={run_dir}", f"data.shards={shards}",
                            *COMMON, *overrides)
        assert proc.returncode == 0, f"sbatch refused the job: {proc.stderr}\n{self.daemon_logs()}"
        self.id = proc.stdout.strip().split(";")[0]
        self.log = Path(str(self.log).replace("%j", self.id))

    def _client(self, *cmd) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(TESTBED), "exec", str(self.dir), "--", *map(str, cmd)], cwd=self.log.parent,
                              env=self.env, capture_output=True, text=True, timeout=60)

    def daemon_logs(self) -> str:
        return subprocess.run(["bash", str(TESTBED), "logs", str(self.dir)], capture_output=True, text=True).stdout

    def wait(self, timeout: float = 400) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = self._client("scontrol", "show", "job", "-o", self.id).stdout
            state = dict(re.findall(r"(\w+)=(\S*)", out)).get("JobState", "")
            if state not in ("", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                return state
            time.sleep(1)
        raise AssertionError(f"SLURM job {self.id} still running after {timeout} s:\n{_tail(self.log)}")


@pytest.fixture(scope="module")
def resumed_jobs(first_jobs, hosts, millionaid_shards):
    """Phase 2, at once: the elastic resumes both ways and the SLURM resubmission."""
    work, reference, killed = first_jobs["work"], first_jobs["reference"], first_jobs["killed"]
    mark = uuid.uuid4().hex
    started = time.monotonic()
    # The killed run as the resubmitted SLURM job finds it (its own directory, --resume auto).
    slurm_run = work / "slurm"
    # Without any checkpoint the kill may have let through after step 2: the resume is from 2.
    shutil.copytree(killed, slurm_run, ignore=lambda d, names: [n for n in names if n.startswith("step_")
                                                                  and n > "step_00000002"])
    # The 2-host resume trains on past step 4; then its rank on host B hangs (SIGSTOP).
    from_one = work / "from_one"
    a, b = two_hosts(hosts, from_one, millionaid_shards, "train.max_steps=1000", "train.epochs=1000", port=29501,
                     RESUME=str(reference / "checkpoints/step_00000002"))
    procs = [one_host(work / "from_two", millionaid_shards, "train.max_steps=4", **{MARK: mark},
                      RESUME=str(killed / "checkpoints/step_00000002")), a, b]
    cluster, state, job, stopped, hung = work / "cluster", "", None, None, {}
    try:
        missing = _slurm_missing()
        if not missing:
            env = _slurm_env(cluster, work, hosts)
            proc = subprocess.run(["bash", str(TESTBED), "start", str(cluster), "--nodes", "2"], env=env,
                                  capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, f"the two-node testbed did not start:\n{proc.stdout}\n{proc.stderr}"
            job = SlurmJob(cluster, env, slurm_run, millionaid_shards, "train.max_steps=4")
        assert wait_for(lambda: 4 in losses(from_one) or a.poll() is not None or b.poll() is not None, 400), \
            _tail(f"{from_one}.hosta.log")
        assert a.poll() is None and b.poll() is None, _tail(f"{from_one}.hosta.log") + _tail(f"{from_one}.hostb.log")
        stopped = _rank_on(hosts[1], from_one)
        os.kill(stopped, signal.SIGSTOP)  # hung: alive, holding its sockets, never answering
        stopped_at = time.monotonic()
        a.wait(timeout=COLLECTIVE_TIMEOUT_S + GRACE_S + 60)
        hung["ended_a"] = time.monotonic() - stopped_at
        # Woken, the rank finds its peer gone at its next collective and leaves.
        os.kill(stopped, signal.SIGCONT)
        b.wait(timeout=GRACE_S + 60)
        hung["codes"] = (a.returncode, b.returncode)
        _wait_ok(procs[0], f"{work}/from_two.log")
        if job is not None:
            state = job.wait()
    finally:
        if stopped is not None and netns.alive(stopped):
            os.kill(stopped, signal.SIGCONT)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if cluster.exists():
            subprocess.run(["bash", str(TESTBED), "stop", str(cluster)], capture_output=True, timeout=120)
    print(f"[multinode] phase 2 (elastic resumes + SLURM resubmission): {time.monotonic() - started:.1f} s")
    return dict(work=work, mark=mark, slurm_run=slurm_run, slurm_state=state, slurm_job=job, slurm_missing=missing,
                slurm_left=_processes_naming(cluster), hung=hung)


def _processes_naming(directory: Path) -> Dict[int, str]:
    """Live processes whose command line names ``directory`` (the testbed's daemons name it)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if entry.name.isdigit() and str(directory) in cmd and netns.alive(int(entry.name)):
            found[int(entry.name)] = cmd
    return found


def test_elastic_resume_two_hosts_to_one_and_back_reproduces_the_losses(first_jobs, resumed_jobs, hosts):
    reference = losses(first_jobs["reference"])
    work = resumed_jobs["work"]
    for name in ("from_two", "from_one"):
        resumed = losses(work / name)
        # from_one trains on past step 4 until its rank on host B hangs (the test below).
        assert sorted(resumed)[:2] == [3, 4] and (name == "from_one" or len(resumed) == 2), (name, resumed)
        for step in (3, 4):
            assert resumed[step] == reference[step], (name, step, resumed[step], reference[step])
        assert "step_00000002 (step 2)" in (work / name / "train.log").read_text(), name
    assert job_processes(resumed_jobs["mark"]) == {}
    assert not any(h.pids() for h in hosts), [h.pids() for h in hosts]


def test_a_hung_rank_on_host_b_is_named_and_the_job_ends_on_both_hosts(resumed_jobs, hosts):
    hung = resumed_jobs["hung"]
    assert all(code != 0 for code in hung["codes"]), hung["codes"]
    # The timeout, three heartbeats to tell which rank stopped, and the launcher's teardown.
    assert hung["ended_a"] < COLLECTIVE_TIMEOUT_S + GRACE_S, hung["ended_a"]
    text = Path(f"{resumed_jobs['work']}/from_one.hosta.log").read_text()
    assert (f"rank 0 on hosta: a collective operation waited more than {COLLECTIVE_TIMEOUT_S} s for the other "
            "ranks (train.collective_timeout_s): rank 1 on hostb stopped answering") in text, text[-4000:]
    assert not any(h.pids() for h in hosts), [h.pids() for h in hosts]
    print(f"[multinode] host A's job ended {hung['ended_a']:.1f} s after its rank on host B hung")


def test_slurm_two_node_resubmission_resumes_the_killed_run(first_jobs, resumed_jobs):
    if resumed_jobs["slurm_missing"]:
        pytest.skip(resumed_jobs["slurm_missing"])
    job, run = resumed_jobs["slurm_job"], resumed_jobs["slurm_run"]
    context = f"SLURM job {job.id}, log {job.log}:\n{_tail(job.log)}"
    assert resumed_jobs["slurm_state"] == "COMPLETED", context
    log = job.log.read_text()
    # common.sh derived the layout from SLURM's variables: two nodes, one launcher and rank each.
    assert "[rsfm] 2 nodes x 1 GPUs, master hosta:" in log, context
    assert "--node_rank $SLURM_NODEID --num_nodes 2 --num_gpus 1" in log, context
    assert "world 2" in log, context
    assert "step_00000002 (step 2)" in (run / "train.log").read_text(), context
    reference, resumed = losses(first_jobs["reference"]), losses(run)
    for step in (3, 4):
        assert resumed[step] == reference[step], (step, resumed[step], reference[step])
    assert (run / "checkpoints/step_00000004/COMPLETE").is_file(), context
    assert resumed_jobs["slurm_left"] == {}, resumed_jobs["slurm_left"]   # munged, slurmctld, slurmd
