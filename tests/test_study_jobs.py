"""The local study runner with several stages at once, and the listings the SLURM chain uses."""
import threading
import time

import pytest
from test_study import PRETRAIN, FakeStages, rsfm, seg_dataset, write_result, write_study

from rsfm_ds import study
from rsfm_ds.config import ConfigError
from rsfm_ds.study.runner import pending_arrays, pending_pretrained_presets


class TimedStages(FakeStages):
    """FakeStages whose every stage takes a while, recording when it ran and with what threads."""

    def __init__(self, cfg, monkeypatch):
        super().__init__(cfg, monkeypatch)
        self.spans, self.threads, self.lock = {}, set(), threading.Lock()

    def run_logged(self, command, log_path, env):
        stage, arg = command[command.index("--config") + 2:][:2]
        start = time.monotonic()
        time.sleep(0.3)
        code = super().run_logged(command, log_path, env)
        with self.lock:
            self.spans[(stage, arg)] = (start, time.monotonic())
            self.threads.add(env["OMP_NUM_THREADS"])
        return code


def _study(tmp_path, **extra):
    config = write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "out"), presets=["debug_s", "debug"],
                         pretrain=PRETRAIN, datasets=[seg_dataset()], **extra)
    return config, study.load_study(str(config))


def test_jobs_run_stages_at_once_and_cells_wait_only_for_their_own_pretraining(tmp_path, monkeypatch):
    config, cfg = _study(tmp_path, jobs=2)
    fake = TimedStages(cfg, monkeypatch)
    fake.crash = {"debug"}  # debug's pretraining fails: its pretrained cell must not run
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("rsfm_ds.study.runner.os.cpu_count", lambda: 4)
    # Cells: 0 debug_s/pretrained, 1 debug_s/scratch, 2 debug/pretrained, 3 debug/scratch.
    assert study.run_local(cfg, str(config), log=lambda *_: None) == [2]
    spans = fake.spans
    assert set(spans) == {("--pretrain", "debug_s"), ("--pretrain", "debug"), ("--cell", "0"), ("--cell", "1"),
                          ("--cell", "3")}
    assert fake.threads == {"2"}  # 4 cores over 2 single-rank stages
    # Both pretrainings ran at the same time, and so did the two scratch cells after them.
    pre_s, pre = spans[("--pretrain", "debug_s")], spans[("--pretrain", "debug")]
    assert max(pre_s[0], pre[0]) < min(pre_s[1], pre[1])
    s1, s3 = spans[("--cell", "1")], spans[("--cell", "3")]
    assert max(s1[0], s3[0]) < min(s1[1], s3[1])
    # The pretrained cell started only once its preset's backbone was converted (FakeStages
    # checks the file exists when the cell runs) and after the scratch cells had been started.
    assert spans[("--cell", "0")][0] >= pre_s[1] and spans[("--cell", "0")][0] >= min(s1[0], s3[0])
    assert [c.index for c in study.pending_cells(cfg)] == [2]


def test_one_job_keeps_the_grid_order(tmp_path, monkeypatch):
    config, cfg = _study(tmp_path)
    fake = FakeStages(cfg, monkeypatch)
    assert study.run_local(cfg, str(config), log=lambda *_: None) == []
    assert [c for c in fake.calls if c[0] in ("pretrain", "cell")] == [
        ("pretrain", "debug_s"), ("pretrain", "debug"), ("cell", 0), ("cell", 1), ("cell", 2), ("cell", 3)]
    with pytest.raises(ConfigError, match="jobs: must be >= 1, got 0"):
        study.run_local(cfg, str(config), jobs=0)
    with pytest.raises(ConfigError, match="jobs"):
        _study(tmp_path, jobs=0)


def test_pending_cells_by_preset_and_init_for_the_slurm_arrays(tmp_path):
    config, cfg = _study(tmp_path)
    write_result(cfg, study.get_cell(cfg, 0), 1.0)  # debug_s/pretrained finished
    assert [c.index for c in study.pending_cells(cfg, preset="debug", init="pretrained")] == [2]
    assert [c.index for c in study.pending_cells(cfg, preset="debug_s", init="pretrained")] == []
    assert [c.index for c in study.pending_cells(cfg, init="scratch")] == [1, 3]
    assert pending_pretrained_presets(cfg) == ["debug"]
    assert pending_arrays(cfg) == [("debug", [2]), ("scratch", [1, 3])]
    out = rsfm("study", "--config", str(config), "--pending", "--init", "scratch")
    assert out.returncode == 0 and out.stdout.strip() == "1,3", out.stderr
    out = rsfm("study", "--config", str(config), "--pending-arrays")
    assert out.returncode == 0 and out.stdout.splitlines()[-2:] == ["debug 2", "scratch 1,3"], out.stderr
    bad = rsfm("study", "--config", str(config), "--pending", "--preset", "debug_l")
    assert bad.returncode == 2 and "--preset debug_l: no cell of the study" in bad.stderr
    # --jobs means stages at once in a local study; a one-stage mode refuses it instead of ignoring it.
    bad = rsfm("study", "--config", str(config), "--cell", "1", "--jobs", "2")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("rsfm study: error: --jobs:"), bad.stderr
    assert "--cell runs one stage" in bad.stderr
