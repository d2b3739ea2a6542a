"""MAE pretraining with DeepSpeed ZeRO-3 on 2 CPU ranks (gloo), launched as users launch it.

One uninterrupted 100-step run is the reference. It must learn, and its ZeRO-3 checkpoint must
hold half of the model on each rank. A second run is SIGKILLed by rank 0 while it saves step 20
(after the shards are written, before the checkpoint is marked complete); resuming it with
``--resume auto`` must start from step 10 and reproduce the reference losses of steps 11..20 to the
last bit, and the killed rank must leave no process behind. A copy of the reference run whose newest
checkpoint has a rank file cut short must resume from the one before it, saying why, and reproduce
the reference losses from there.
"""
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from launching import DEEPSPEED, MARK, ROOT, free_port, job_processes, wait_for
import torch

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from rsfm_ds.data.pretrain.shards import write_millionaid_shards
    from rsfm_ds.data.synth.millionaid import synth_millionaid

    d = tmp_path_factory.mktemp("millionaid")
    synth_millionaid(d / "tree", images=128, seed=0)
    return write_millionaid_shards(d / "tree", d / "shards", maxcount=20).manifest_path


def launch(run_dir: Path, manifest: Path, *overrides: str, env_extra=None, expect_ok=True, port=None):
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(port or free_port()), "--module", "rsfm_ds.cli",
           "pretrain", "--config", "configs/pretrain/debug.yaml", f"run_dir={run_dir}",
           f"data.shards={manifest}", "log.every_steps=1", "checkpoint.every_steps=10",
           "checkpoint.keep_last=20", "train.epochs=25", "train.max_steps=100", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    # Output to a file, not a pipe: after a SIGKILL, the killed rank's data-worker processes may
    # outlive the launcher for a moment and would hold a pipe open.
    log = run_dir.parent / f"{run_dir.name}.{len(list(run_dir.parent.glob(run_dir.name + '.*.log')))}.log"
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"pretraining failed ({proc.returncode}):\n{log.read_text()[-6000:]}")
    return proc


def losses(run_dir: Path) -> dict:
    """Step -> loss from metrics.jsonl; a resumed run's later lines supersede earlier ones."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["train/loss"]
    return out


REFERENCE_PORT = free_port()


@pytest.fixture(scope="module")
def reference_run(manifest, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    launch(run_dir, manifest, port=REFERENCE_PORT)
    return run_dir


def test_run_leaves_no_shared_memory_behind(reference_run):
    # DeepSpeed's CPU all-reduce segments (66 MB per rank) live in RAM-backed /dev/shm.
    leftovers = [p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{REFERENCE_PORT}_*")]
    assert leftovers == []


def test_loss_falls(reference_run):
    curve = losses(reference_run)
    assert sorted(curve) == list(range(1, 101))
    first = sum(curve[s] for s in range(1, 11)) / 10
    last = sum(curve[s] for s in range(91, 101)) / 10
    assert last < 0.85 * first, (first, last)


def test_each_rank_holds_half_of_the_model(reference_run):
    from rsfm_ds.models.mae import create_mae
    from rsfm_ds.models.presets import count_trainable

    tag = reference_run / "checkpoints" / "step_00000100"
    total = count_trainable(create_mae("debug", img_size=96))
    sizes = []
    for rank in range(2):
        state = torch.load(tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
                           map_location="cpu", weights_only=False)
        flat = state["optimizer_state_dict"]["fp32_flat_groups"]
        sizes.append(sum(t.numel() for t in flat))
    # Each rank's fp32 master partition is half of the model (plus at most per-tensor padding).
    for size in sizes:
        assert total / 2 <= size <= total / 2 * 1.02, (size, total)


def test_kill_while_saving_then_exact_resume(manifest, reference_run, tmp_path):
    run_dir = tmp_path / "killed"
    mark = uuid.uuid4().hex
    proc = launch(run_dir, manifest, env_extra={"RSFM_FAULT_KILL_DURING_SAVE": "20", MARK: mark}, expect_ok=False)
    assert proc.returncode != 0
    # The killed rank's data-loader worker, fork server and resource tracker went with it.
    assert wait_for(lambda: not job_processes(mark), 30), job_processes(mark)
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step_00000010" / "COMPLETE").is_file()
    assert (ckpts / "step_00000020").is_dir() and not (ckpts / "step_00000020" / "COMPLETE").exists()
    assert (ckpts / "latest").read_text() == "step_00000010"  # DeepSpeed's tools load a complete tag

    launch(run_dir, manifest, "train.max_steps=20", "--resume", "auto")
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log and "step_00000010 (step 10)" in log
    assert (ckpts / "step_00000020" / "COMPLETE").is_file()
    reference, resumed = losses(reference_run), losses(run_dir)
    for step in range(11, 21):
        assert resumed[step] == reference[step], (step, resumed[step], reference[step])


def test_resume_passes_over_a_damaged_newest_checkpoint(manifest, reference_run, tmp_path):
    # A COMPLETE-marked newest checkpoint whose rank-1 model file was cut short (a disk fault, a
    # bad copy): --resume auto says so and resumes from the previous complete one.
    run_dir = tmp_path / "damaged"
    shutil.copytree(reference_run, run_dir, ignore=shutil.ignore_patterns("tensorboard"))
    ckpts = run_dir / "checkpoints"
    for stale in ["step_00000100", "step_00000090"]:
        assert (ckpts / stale / "COMPLETE").is_file()
    damaged = ckpts / "step_00000100" / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    launch(run_dir, manifest, "train.max_steps=100", "--resume", "auto")
    log = (run_dir / "train.log").read_text()
    assert f"not resuming from step_00000100, it is damaged: {damaged}" in log
    assert "step_00000090 (step 90)" in log
    reference, resumed = losses(reference_run), losses(run_dir)
    for step in range(91, 101):
        assert resumed[step] == reference[step], (step, resumed[step], reference[step])
