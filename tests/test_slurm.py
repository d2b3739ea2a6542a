"""The sbatch scripts against a real SLURM cluster: munged, slurmctld and slurmd on this machine.

launch/slurm/testbed.sh starts a one-node cluster in a temporary directory (Debian's packages,
which `bash launch/test.sh` installs first where it runs as root; without them the tests are
skipped with the reason). Through ``sbatch`` the tests then run what
a user runs on a cluster, with CPU ranks instead of GPUs (``--gpus-per-node=0``, two ranks on the
one node): debug MAE pretraining that must finish and leave a complete checkpoint; the same job
resubmitted with more steps, which must resume from that checkpoint; and a study chain
(launch/slurm/submit_study.sh) of two presets whose second pretraining fails: each preset's
pretraining job, the array of each preset's pretrained cells depending on its own pretraining
only, the scratch cells' array depending on nothing, the collect job after all of them; the
failed preset's array must be cancelled while every other cell completes, and a resubmission
must submit only the failed preset's pretraining, its cell (after it) and the collect job. No slurmdbd: job
states come from
``scontrol show job`` (the testbed keeps finished jobs for an hour).

Every failure names the job, and prints the tail of its log and of the daemons' logs.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from launching import ROOT

pytestmark = pytest.mark.slurm

TESTBED = ROOT / "launch" / "slurm" / "testbed.sh"
# No job here needs more than a minute; the limit only turns a hang into a failure with logs.
JOB_TIMEOUT_S = 420
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
# Pending reasons that no amount of waiting resolves (the request can never fit the node, or a
# dependency failed): fail at once instead of at the timeout.
NEVER = {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit",
         "DependencyNeverSatisfied", "InvalidQOS", "InvalidAccount"}
# What every job of these tests asks for: one node, 2 CPUs (one per rank), no GPUs (the #SBATCH
# lines ask for 8 GPUs and 64 CPUs per node; command-line options override them).
CPU_JOB = ["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2"]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read: {err})"


class Cluster:
    """The running testbed: submits jobs, waits for them, and explains failures."""

    def __init__(self, directory: Path, env: Dict[str, str]):
        self.dir = directory
        self.env = env

    def run(self, cmd: List[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in cmd], cwd=cwd, env=self.env, capture_output=True,
                              text=True, **kw)

    def sbatch(self, *args, cwd: Path) -> str:
        proc = self.run(["sbatch", "--parsable", *args], cwd=cwd, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"sbatch {' '.join(map(str, args))} refused the job:\n"
                                 f"{proc.stderr}\n{self.daemon_logs()}")
        return proc.stdout.strip().split(";")[0]

    def records(self, job_id: str) -> List[Dict[str, str]]:
        """One dict per job (per array task, once the tasks exist) from `scontrol show job -o`."""
        proc = self.run(["scontrol", "show", "job", "-o", job_id], cwd=self.dir, timeout=30)
        if proc.returncode != 0:
            raise AssertionError(f"scontrol show job {job_id} failed: {proc.stderr}\n{self.daemon_logs()}")
        out = []
        for line in proc.stdout.splitlines():
            # Values are single tokens except Command= and the like, which we do not read.
            out.append(dict(re.findall(r"(\w+)=(\S*)", line)))
        return out

    def wait(self, job_id: str) -> List[Dict[str, str]]:
        """Poll until the job (every task of an array) has ended; returns its records."""
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            records = self.records(job_id)
            if records and all(r.get("JobState") in TERMINAL for r in records):
                return records
            stuck = [r for r in records if r.get("JobState") == "PENDING" and r.get("Reason") in NEVER]
            if stuck:
                raise AssertionError(self.explain(job_id, f"can never start (Reason={stuck[0]['Reason']})"))
            if time.monotonic() > deadline:
                raise AssertionError(self.explain(job_id, f"still running after {JOB_TIMEOUT_S} s"))
            time.sleep(1)

    def explain(self, job_id: str, what: str) -> str:
        """A failure message: the job, its state line(s), its log tail(s), the daemons' logs."""
        parts = [f"SLURM job {job_id} {what}"]
        for r in self.records(job_id):
            parts.append(f"job {_name(r)}: JobState={r.get('JobState')} Reason={r.get('Reason')} "
                         f"ExitCode={r.get('ExitCode')} log {r.get('StdOut')}")
            if r.get("StdOut") and Path(r["StdOut"]).exists():
                parts.append(f"==== tail {r['StdOut']}\n{_tail(Path(r['StdOut']))}")
        parts.append(self.daemon_logs())
        return "\n".join(parts)

    def daemon_logs(self) -> str:
        proc = subprocess.run(["bash", str(TESTBED), "logs", str(self.dir)], capture_output=True, text=True)
        return proc.stdout + proc.stderr

    def expect_completed(self, job_id: str) -> List[Dict[str, str]]:
        records = self.wait(job_id)
        bad = [r for r in records if r.get("JobState") != "COMPLETED"]
        if bad:
            raise AssertionError(self.explain(job_id, "did not complete"))
        for r in records:
            print(f"[slurm] job {_name(r)} {r.get('JobName')}: {r['JobState']} in {r.get('RunTime')}")
        return records


def _name(record: Dict[str, str]) -> str:
    """A job's id as squeue shows it: `<array job>_<task> (job <id>)` for array tasks."""
    if record.get("ArrayTaskId"):
        return f"{record.get('ArrayJobId')}_{record['ArrayTaskId']} (job {record.get('JobId')})"
    return record.get("JobId", "?")


def _can_run_slurm() -> str:
    """Why the testbed cannot run here, or '' when it can. The test installs nothing:
    `bash launch/test.sh` installs the packages first where it can (`testbed.sh install`)."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs as root)"
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(tool)]
    if missing:
        return (f"SLURM/MUNGE are not installed ({', '.join(missing)} missing); "
                f"`bash launch/slurm/testbed.sh install` installs them (root, apt-get)")
    return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _can_run_slurm()
    if reason:
        print(f"[slurm] skipped: {reason}")
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm") / "cluster"
    work = directory.parent
    started = time.monotonic()
    bin_dir = str(Path(sys.executable).parent)
    # Without the caller's SLURM_*/SBATCH_*/SRUN_* variables: run inside a real allocation, they
    # would name its partition, account or job to our cluster.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))},
           "SLURM_CONF": str(directory / "slurm.conf"),
           # The jobs find the repository, this virtual environment and its deepspeed through
           # the environment sbatch passes on (--export=ALL), as they would on a cluster.
           "RSFM_ROOT": str(ROOT), "VIRTUAL_ENV": sys.prefix,
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
           "RSFM_JOB_DIR": str(work),          # hostfiles, not in the repository
           "GPUS_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(["bash", str(TESTBED), "start", str(directory)], env=env,
                              capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise AssertionError(f"the SLURM testbed did not start:\n{proc.stdout}\n{proc.stderr}")
        print(f"\n[slurm] testbed up in {time.monotonic() - started:.1f} s: {directory}")
        yield Cluster(directory, env)
    finally:
        subprocess.run(["bash", str(TESTBED), "stop", str(directory)], capture_output=True, timeout=120)
        print(f"[slurm] testbed stopped; {time.monotonic() - started:.1f} s in all")


def _pretrain(cluster: Cluster, work: Path, manifest: Path, steps: int) -> str:
    return cluster.sbatch(*CPU_JOB, f"--output={work}/pretrain-%j.out",
                          "--export=ALL,CONFIG=configs/pretrain/debug.yaml",
                          ROOT / "launch/slurm/pretrain.sbatch",
                          f"run_dir={work}/pretrain", f"data.shards={manifest}",
                          f"train.max_steps={steps}", "checkpoint.every_steps=2", "log.every_steps=1",
                          cwd=work)


@pytest.fixture(scope="module")
def first_pretrain(cluster, millionaid_shards):
    work = cluster.dir.parent
    job = _pretrain(cluster, work, millionaid_shards, steps=2)
    cluster.expect_completed(job)
    return job, work


def test_pretrain_job_completes_with_a_checkpoint(cluster, first_pretrain):
    job, work = first_pretrain
    log = (work / f"pretrain-{job}.out").read_text()
    context = f"SLURM job {job}, log {work}/pretrain-{job}.out"
    # common.sh turned SLURM's variables into one launcher for the one node, two ranks.
    assert "[rsfm] 1 nodes x 2 GPUs" in log, context
    assert "--node_rank $SLURM_NODEID --num_nodes 1 --num_gpus 2" in log, context
    assert "world 2" in log and "done: 2 steps" in log, context
    assert (work / "pretrain/checkpoints/step_00000002/COMPLETE").is_file(), context


def test_resubmitted_job_resumes_from_the_checkpoint(cluster, first_pretrain, millionaid_shards):
    _, work = first_pretrain
    job = _pretrain(cluster, work, millionaid_shards, steps=4)
    cluster.expect_completed(job)
    context = f"SLURM job {job}, log {work}/pretrain-{job}.out, train log {work}/pretrain/train.log"
    train_log = (work / "pretrain/train.log").read_text()
    assert "resumed from" in train_log and "step_00000002 (step 2)" in train_log, context
    steps = [int(m) for m in re.findall(r'"step": (\d+)', (work / "pretrain/metrics.jsonl").read_text())]
    assert steps == [1, 2, 3, 4], (steps, context)      # 3 and 4 continue the first job's 1 and 2
    assert (work / "pretrain/checkpoints/step_00000004/COMPLETE").is_file(), context


STUDY = """\
# A tiny study written by test_slurm: two presets pretrained on the test shards (one epoch), then
# fine-tuned pretrained and from scratch on half the training crops (four cells).
name: slurm-test
out_dir: {out_dir}
presets: [debug_s, debug]
train_fractions: [0.5]
seeds: [0]
pretrain:
  config: configs/pretrain/debug.yaml
  epochs: 1
  overrides:
    data.shards: {shards}
    data.num_workers: 0
    log.tensorboard: false
    log.progress: false
    log.every_steps: 1
overrides:
  log.tensorboard: false
  log.progress: false
  train.num_workers: 0
datasets:
  - name: potsdam
    task: seg
    config: configs/seg/potsdam_debug.yaml
    prepare:
      - rsfm synth potsdam --out {{out_dir}}/data/potsdam --tiles 4 --size 512 --seed 0
      - rsfm potsdam prepare --root {{out_dir}}/data/potsdam --out {{out_dir}}/data/potsdam_prepared --crop 256 --stride 256
    overrides:
      data.root: "{{out_dir}}/data/potsdam_prepared"
      schedule.length: 4
      schedule.warmup: 1
      eval.every: 4
      checkpoint.every_steps: 4
      log.every_steps: 1
"""


def _submit_study(cluster: Cluster, config: Path, cwd: Path) -> Dict[str, str]:
    """Runs submit_study.sh; its job lines as {"pretrain debug_s": id, "array debug_s": id, ...,
    "collect": id}."""
    proc = cluster.run(["bash", ROOT / "launch/slurm/submit_study.sh", config, *CPU_JOB], cwd=cwd, timeout=300)
    assert proc.returncode == 0, f"submit_study.sh failed:\n{proc.stdout}\n{proc.stderr}\n{cluster.daemon_logs()}"
    ids = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        if words and words[0] in ("pretrain", "array", "collect"):
            ids[" ".join(words[:-1])] = words[-1]
    return ids


def _never_runs(cluster: Cluster, job_id: str) -> None:
    """Wait until every task of ``job_id`` is cancelled for its failed dependency, none having run."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        records = cluster.records(job_id)
        if any(r.get("JobState") not in ("PENDING", "CANCELLED") for r in records):
            raise AssertionError(cluster.explain(job_id, "ran although the pretraining it waits for failed"))
        if records and all(r.get("JobState") == "CANCELLED" or r.get("Reason") == "DependencyNeverSatisfied"
                           for r in records):
            return
        if time.monotonic() > deadline:
            raise AssertionError(cluster.explain(job_id, f"not cancelled after {JOB_TIMEOUT_S} s"))
        time.sleep(1)


def _dependency(cluster: Cluster, job_id: str) -> str:
    return cluster.records(job_id)[0].get("Dependency", "")


# Two pretrainings and three cells run one after another on the one node: allow for a busy machine.
@pytest.mark.timeout(1800)
def test_study_chain_a_failed_pretraining_cancels_only_its_own_cells(cluster, tmp_path, millionaid_shards):
    out_dir = tmp_path / "study"
    config = tmp_path / "study.yaml"
    config.write_text(STUDY.format(out_dir=out_dir, shards=millionaid_shards))
    # debug's pretraining cannot create its run directory (a file stands in its way): it fails.
    blocker = out_dir / "pretrain" / "debug"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory\n")
    # Run from tmp_path: the jobs' logs land there; the scripts find the repository via RSFM_ROOT.
    ids = _submit_study(cluster, config, tmp_path)
    assert set(ids) == {"pretrain debug_s", "pretrain debug", "array debug_s", "array debug", "array scratch",
                        "collect"}, ids
    # A dependency shows only while it is unresolved: accept an empty one once the pretraining it
    # names has completed. Each array names its own preset's pretraining and never the other's.
    for preset, other in (("debug_s", "debug"), ("debug", "debug_s")):
        dep = _dependency(cluster, ids[f"array {preset}"])
        own = cluster.records(ids[f"pretrain {preset}"])[0].get("JobState")
        assert f"afterok:{ids[f'pretrain {preset}']}" in dep or own == "COMPLETED", (preset, dep, own)
        assert ids[f"pretrain {other}"] not in dep, (preset, dep)
    assert _dependency(cluster, ids["array scratch"]) in ("", "(null)"), cluster.records(ids["array scratch"])

    cluster.expect_completed(ids["pretrain debug_s"])
    log = (tmp_path / f"slurm-rsfm-study-pretrain-debug_s-{ids['pretrain debug_s']}.out").read_text()
    assert "study pretraining of debug_s" in log and "world 2" in log, log[-3000:]
    backbone = out_dir / "pretrain/debug_s/backbone.safetensors"
    assert backbone.is_file() and (out_dir / "pretrain/debug_s/converted.json").is_file(), log[-3000:]
    (failed,) = cluster.wait(ids["pretrain debug"])
    assert failed["JobState"] == "FAILED", cluster.explain(ids["pretrain debug"], "should have failed")
    _never_runs(cluster, ids["array debug"])

    done = {}
    for name in ("debug_s", "scratch"):
        tasks = cluster.expect_completed(ids[f"array {name}"])
        for r in tasks:
            context = f"SLURM job {r['JobId']} (array {ids[f'array {name}']} task {r['ArrayTaskId']}), log {r['StdOut']}"
            log = Path(r["StdOut"]).read_text()
            assert f"study cell {r['ArrayTaskId']} of array job {ids[f'array {name}']}" in log, context
            assert "world 2" in log, context       # the cell ran in two ranks under the node's launcher
            done[r["ArrayTaskId"]] = name
    # Cells in grid order: debug_s pretrained 0, scratch 1; debug pretrained 2, scratch 3.
    assert done == {"0": "debug_s", "1": "scratch", "3": "scratch"}, done
    cluster.expect_completed(ids["collect"])

    def result(preset, init):
        path = out_dir / f"cells/potsdam/{preset}/{init}/frac_0.5/seed_0/result.json"
        return json.loads(path.read_text()) if path.is_file() else None

    assert result("debug_s", "pretrained")["backbone"] == str(backbone)
    assert result("debug_s", "scratch")["backbone"] is None and result("debug", "scratch")["backbone"] is None
    assert result("debug", "pretrained") is None
    assert "3 of 4 cells complete" in (out_dir / "results.md").read_text()

    # The cause removed and the study resubmitted: only debug's pretraining, its one cell (after
    # that pretraining) and collect. Running them would repeat what ran above: cancel them.
    blocker.unlink()
    again = _submit_study(cluster, config, tmp_path)
    try:
        assert set(again) == {"pretrain debug", "array debug", "collect"}, again
        tasks = cluster.records(again["array debug"])
        assert [r.get("ArrayTaskId") for r in tasks] == ["2"], tasks
        dep, own = _dependency(cluster, again["array debug"]), cluster.records(again["pretrain debug"])[0]
        assert f"afterok:{again['pretrain debug']}" in dep or own.get("JobState") == "COMPLETED", (dep, own)
    finally:
        cluster.run(["scancel", *again.values()], cwd=tmp_path, timeout=30)
