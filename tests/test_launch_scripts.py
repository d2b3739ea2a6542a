"""Launch scripts: syntax, the commands the SLURM scripts render for a 2-node x 8-GPU job, and how
submit_study.sh sizes and chains its jobs (fake scontrol/srun/sbatch; tests/test_slurm.py runs them
for real)."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("launch/*.sh"), *ROOT.glob("launch/slurm/*.sh"), *ROOT.glob("launch/slurm/*.sbatch")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def render_sbatch(tmp_path, script: str, *args: str, **env_extra: str):
    """Runs an sbatch script as SLURM would on the first of 2 nodes x 8 GPUs, with fake scontrol
    and srun; returns its stdout, the per-node command srun was given (split) and srun's args."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # scontrol expands the node list as SLURM does; srun records how it was called.
    fake_tool(bin_dir, "scontrol", 'echo gpu-a17; echo gpu-b03\n')
    fake_tool(bin_dir, "srun", f'printf "%s\\n" "$@" > {tmp_path}/srun.args\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-[a17,b03]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_CPUS_PER_TASK": "64", "SLURM_SUBMIT_DIR": str(ROOT), "RSFM_JOB_DIR": str(tmp_path),
           "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", "/venv"), **env_extra}
    out = subprocess.run(["bash", str(ROOT / "launch/slurm" / script), *args],
                         env=env, capture_output=True, text=True, check=True)
    srun_args = (tmp_path / "srun.args").read_text().splitlines()
    return out.stdout, srun_args[-1].split(), srun_args


def test_slurm_pretrain_renders_one_launcher_per_node(tmp_path):
    stdout, cmd, srun_args = render_sbatch(tmp_path, "pretrain.sbatch", "train.max_steps=10",
                                           CONFIG="configs/pretrain/vit_l12x4.yaml")
    assert "2 nodes x 8 GPUs, master gpu-a17:24242" in stdout
    assert srun_args[:3] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash"]
    assert cmd[:2] == ["deepspeed", "--hostfile"]
    launcher = cmd[1:cmd.index("--module")]
    options = {flag: value for flag, value in zip(launcher, launcher[1:] + [""])
               if flag.startswith("--") and not value.startswith("--")}
    assert options["--node_rank"] == "$SLURM_NODEID"  # expanded per node by the task's shell
    assert options["--num_nodes"] == "2" and options["--num_gpus"] == "8"
    assert options["--master_addr"] == "gpu-a17" and options["--master_port"] == "24242"
    assert "--no_ssh" in cmd
    tail = cmd[cmd.index("--module"):]
    assert tail == ["--module", "rsfm_ds.cli", "pretrain", "--config", "configs/pretrain/vit_l12x4.yaml",
                    "--resume", "auto", "train.max_steps=10"]
    hostfile = Path(options["--hostfile"])
    assert hostfile.read_text().splitlines() == ["gpu-a17 slots=8", "gpu-b03 slots=8"]


@pytest.mark.parametrize("script, task, config", [
    ("detection.sbatch", "det", "configs/det/dota2_vit_l12x4.yaml"),
    ("segmentation.sbatch", "seg", "configs/seg/potsdam_vit_l12x4.yaml"),
])
def test_slurm_finetune_renders_the_task_with_resume(tmp_path, script, task, config):
    stdout, cmd, _ = render_sbatch(tmp_path, script, "schedule.length=10")
    assert "2 nodes x 8 GPUs, master gpu-a17:24242" in stdout
    assert cmd[cmd.index("--module"):] == ["--module", "rsfm_ds.cli", "finetune", task, "--config", config,
                                           "--resume", "auto", "schedule.length=10"]


def test_slurm_predict_renders_the_task_and_its_arguments(tmp_path):
    stdout, cmd, _ = render_sbatch(tmp_path, "predict.sbatch", "--weights", "w.safetensors", "--inputs", "scenes/",
                                   "--out", "pred", TASK="det", CONFIG="configs/det/dota2_vit_l12x4.yaml")
    assert "2 nodes x 8 GPUs, master gpu-a17:24242" in stdout
    assert cmd[cmd.index("--module"):] == ["--module", "rsfm_ds.cli", "predict", "det", "--config",
                                           "configs/det/dota2_vit_l12x4.yaml", "--no-progress", "--weights",
                                           "w.safetensors", "--inputs", "scenes/", "--out", "pred"]


def test_slurm_study_task_runs_its_cell(tmp_path):
    _, cmd, _ = render_sbatch(tmp_path, "study.sbatch", "seed=1", CONFIG="configs/study/scaling.yaml",
                              SLURM_ARRAY_JOB_ID="4240", SLURM_ARRAY_TASK_ID="3")
    assert cmd[cmd.index("--module"):] == ["--module", "rsfm_ds.cli", "study", "--config",
                                           "configs/study/scaling.yaml", "--cell", "3", "seed=1"]


def test_submit_study_chains_pretraining_the_array_and_collect(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # rsfm logs its calls: 12 cells; debug_s and debug to pretrain, debug_l converted already;
    # pending pretrained cells of debug_s (0,2), debug (5) and debug_l (8-9), scratch cells 3,10-11.
    # sbatch logs each call and answers job ids 100, 101, ...
    fake_tool(bin_dir, "rsfm", f'echo "$*" >> {tmp_path}/rsfm.calls\n'
                               'case " $* " in\n'
                               '  *" --count "*) echo 12;;\n'
                               '  *" --pending-pretrain "*) echo "debug_s debug";;\n'
                               '  *" --pending-arrays "*) echo "[rsfm] chatter 1"\n'
                               '    printf "debug_s 0,2\\ndebug 5\\ndebug_l 8-9\\nscratch 3,10-11\\n";;\n'
                               'esac\nexit 0\n')
    fake_tool(bin_dir, "sbatch", f'n=$(ls {tmp_path} | grep -c "^sbatch\\.")\n'
                                 f'printf "%s\\n" "$@" > {tmp_path}/sbatch.$n\n'
                                 'echo "$((100 + n));cluster"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MAX_PARALLEL": "2",
           "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", "/venv")}
    out = subprocess.run(["bash", str(ROOT / "launch/slurm/submit_study.sh"), "configs/study/scaling.yaml",
                          "--partition=gpu", "--", "seed=1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-7:] == ["pretrain debug_s 100", "pretrain debug 101", "array debug_s 102",
                                            "array debug 103", "array debug_l 104", "array scratch 105",
                                            "collect 106"], out.stdout
    calls = (tmp_path / "rsfm.calls").read_text().splitlines()
    assert calls == [f"study --config configs/study/scaling.yaml {verb} seed=1"
                     for verb in ("--prepare", "--count", "--pending-pretrain", "--pending-arrays")]
    jobs = {n: (tmp_path / f"sbatch.{n}").read_text().splitlines() for n in range(7)}
    for n in (0, 1):
        assert "--partition=gpu" in jobs[n]
        assert jobs[n][-2:] == [str(ROOT / "launch/slurm/study_pretrain.sbatch"), "seed=1"]
        assert not any(a.startswith("--dependency") for a in jobs[n])

    def deps(job):
        return [a for a in job if a.startswith(("--dependency", "--kill-on-invalid-dep"))]

    # Each preset's array waits for its own pretraining only; a converted preset's and the scratch
    # array wait for nothing.
    for n, cells, after in ((2, "0,2", ["--dependency=afterok:100", "--kill-on-invalid-dep=yes"]),
                            (3, "5", ["--dependency=afterok:101", "--kill-on-invalid-dep=yes"]),
                            (4, "8-9", []), (5, "3,10-11", [])):
        job = jobs[n]
        assert job[0] == "--parsable" and "--partition=gpu" in job and f"--array={cells}%2" in job, job
        assert deps(job) == after, job
        assert job[-2:] == [str(ROOT / "launch/slurm/study.sbatch"), "seed=1"]
    collect = jobs[6]
    assert "--partition=gpu" in collect
    assert deps(collect) == ["--dependency=afterany:" + ":".join(str(i) for i in range(100, 106))], collect
    wrap = collect[collect.index("--wrap") + 1]
    assert wrap.endswith("study --config configs/study/scaling.yaml --collect seed=1"), wrap


def test_launch_pretrain_refuses_several_nodes_without_hostfile(tmp_path):
    env = {**os.environ, "NNODES": "2", "NPROC_PER_NODE": "2",
           "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", "/venv")}
    out = subprocess.run(["bash", str(ROOT / "launch/pretrain.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "NNODES=2 needs HOSTFILE" in out.stderr
