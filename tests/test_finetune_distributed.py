"""The shared fine-tuning engine on 2 CPU ranks with the backbone under ZeRO-3: UperNet on
synthetic Potsdam-format data must learn (mIoU far above chance), and the engine must write its
evaluation, best checkpoint and complete checkpoints."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory) -> Path:
    from rsfm_ds.data.potsdam import prepare_potsdam
    from rsfm_ds.data.synth_seg import synth_potsdam

    d = tmp_path_factory.mktemp("potsdam")
    synth_potsdam(d / "raw", tiles=4, seed=0, size=1024)
    prepare_potsdam(d / "raw", d / "prepared", protocol=5, crop=256, stride=256)
    return d / "prepared"


def test_upernet_learns_with_zero3_backbone(potsdam, tmp_path):
    run_dir = tmp_path / "seg"
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "rsfm_ds.cli",
           "finetune", "seg", "--config", "configs/seg/potsdam_debug.yaml", f"run_dir={run_dir}",
           f"data.root={potsdam}", "train.zero_stage=3", "schedule.length=40", "eval.every=40",
           "checkpoint.every_steps=20", "train.num_workers=0", "log.every_steps=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    log = (run_dir / "train.log").read_text()
    assert "ZeRO stage 3" in log and "world 2" in log
    result = json.loads((run_dir / "eval" / "step_00000040.json").read_text())
    # 5 classes: a constant prediction of the most frequent class scores about 100/5 * its IoU,
    # well under 20% mIoU; random guessing about 10%.
    assert result["mIoU"] > 40.0, result
    assert (run_dir / "checkpoints" / "step_00000040" / "COMPLETE").is_file()
    best = list((run_dir / "checkpoints").glob("best_step_*"))
    assert len(best) == 1 and (best[0] / "COMPLETE").is_file()
    assert json.loads((best[0] / "best.json").read_text())["metric"] == "mIoU"
