"""Launch scripts: syntax, and the commands the SLURM script renders for a 2-node x 8-GPU job."""
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


def test_slurm_pretrain_renders_one_launcher_per_node(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # scontrol expands the node list as SLURM does; srun records how it was called.
    fake_tool(bin_dir, "scontrol", 'echo gpu-a17; echo gpu-b03\n')
    fake_tool(bin_dir, "srun", f'printf "%s\\n" "$@" > {tmp_path}/srun.args\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-[a17,b03]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_CPUS_PER_TASK": "64", "SLURM_SUBMIT_DIR": str(ROOT), "RSFM_JOB_DIR": str(tmp_path),
           "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", "/venv"),
           "CONFIG": "configs/pretrain/vit_l12x4.yaml"}
    out = subprocess.run(["bash", str(ROOT / "launch/slurm/pretrain.sbatch"), "train.max_steps=10"],
                         env=env, capture_output=True, text=True, check=True)
    assert "2 nodes x 8 GPUs, master gpu-a17:24242" in out.stdout
    args = (tmp_path / "srun.args").read_text().splitlines()
    assert args[:3] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash"]
    cmd = args[-1].split()
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


def test_launch_pretrain_refuses_several_nodes_without_hostfile(tmp_path):
    env = {**os.environ, "NNODES": "2", "NPROC_PER_NODE": "2",
           "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", "/venv")}
    out = subprocess.run(["bash", str(ROOT / "launch/pretrain.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "NNODES=2 needs HOSTFILE" in out.stderr
