"""The scaling-study runner: the grid, its configs, collection, and a real run of a tiny study."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rsfm_ds import study
from rsfm_ds.config import ConfigError
from rsfm_ds.models.presets import count_trainable, create_vit

ROOT = Path(__file__).resolve().parents[1]


def write_study(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def seg_dataset(**extra):
    return {**dict(name="potsdam", task="seg", config="configs/seg/potsdam_debug.yaml"), **extra}


def test_grid_order_names_and_overrides(tmp_path):
    cfg = study.load_config(study.StudyConfig, write_study(
        tmp_path / "s.yaml", out_dir=str(tmp_path / "out"), presets=["debug_s", "debug"],
        train_fractions=[0.1, 1.0], seed=3, pretrained="weights/{preset}.safetensors",
        overrides={"schedule.length": 7, "data.root": "{out_dir}/data"},
        datasets=[seg_dataset(overrides={"schedule.length": 9}),
                  dict(name="dota", task="det", config="configs/det/dota2_{preset}.yaml")]))
    grid = study.cells(cfg)
    assert [c.name for c in grid[:4]] == ["potsdam/debug_s/frac_0.1", "potsdam/debug_s/frac_1",
                                          "potsdam/debug/frac_0.1", "potsdam/debug/frac_1"]
    assert [c.index for c in grid] == list(range(8)) and grid[4].dataset.name == "dota"
    run = study.cell_config(cfg, grid[2])
    assert run.backbone.preset == "debug" and run.data.fraction == 0.1 and run.data.fraction_seed == 3
    assert run.schedule.length == 9  # the dataset's override wins over the study's
    assert run.data.root == f"{tmp_path}/out/data"
    assert run.backbone.pretrained == "weights/debug.safetensors"
    assert run.run_dir == str(tmp_path / "out" / "cells" / "potsdam" / "debug" / "frac_0.1")
    assert run.checkpoint.resume == "auto"
    # {preset} in the config path: dota2_debug.yaml exists, dota2_debug_s.yaml does not.
    assert study.cell_config(cfg, grid[6]).backbone.preset == "debug"
    with pytest.raises(ConfigError, match=r"cell 4 \(dota/debug_s/frac_0.1\).*dota2_debug_s\.yaml"):
        study.check_cells(cfg)
    with pytest.raises(ConfigError, match=r"--cell 8: .* cells 0\.\.7"):
        study.get_cell(cfg, 8)


@pytest.mark.parametrize("fields, message", [
    (dict(presets=["vit_huge"]), r"presets: unknown preset 'vit_huge'"),
    (dict(train_fractions=[0.0]), r"train_fractions: each must be in \(0, 1\]"),
    (dict(datasets=[seg_dataset(), seg_dataset()]), r"datasets: names must be distinct"),
    (dict(datasets=[seg_dataset(task="cls")]), r"datasets\[0\]\.task: must be one of"),
    (dict(datasets=[seg_dataset(prepare=["python make_data.py"])]), r"prepare\[0\]: must be an rsfm command"),
    (dict(datasets=[]), r"datasets: name at least one dataset"),
])
def test_bad_study_configs_name_the_field(tmp_path, fields, message):
    base = dict(presets=["debug"], datasets=[seg_dataset()])
    path = write_study(tmp_path / "bad.yaml", **{**base, **fields})
    with pytest.raises(ConfigError, match=message):
        study.load_study(str(path))


def test_collect_tabulates_plots_and_names_missing_cells(tmp_path):
    cfg = study.load_config(study.StudyConfig, write_study(
        tmp_path / "s.yaml", out_dir=str(tmp_path / "out"), presets=["debug_s", "debug"],
        train_fractions=[0.5, 1.0], datasets=[seg_dataset()]))
    values = {0: 31.25, 1: 40.5, 2: 35.0}  # cell 3 (debug, 1.0) never finished
    for index, value in values.items():
        cell = study.get_cell(cfg, index)
        cell.run_dir(cfg).mkdir(parents=True)
        cell.result_path(cfg).write_text(json.dumps(dict(
            dataset="potsdam", task="seg", metric="mIoU", preset=cell.preset, params=123,
            fraction=cell.fraction, value=value, best=value + (1.0 if index == 1 else 0.0), steps=5,
            seconds=1.0, world_size=1, run_dir=str(cell.run_dir(cfg)))))
    paths = study.collect(cfg, log=lambda *_: None)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["preset"], float(r["fraction"]), float(r["value"])) for r in rows] == [
        ("debug_s", 0.5, 31.25), ("debug_s", 1.0, 40.5), ("debug", 0.5, 35.0)]
    table = paths["markdown"].read_text()
    small, debug = (count_trainable(create_vit(p)) / 1e6 for p in ("debug_s", "debug"))
    assert f"| debug_s | {small:.2f} | 31.25 | 40.50 (41.50) |" in table
    assert f"| debug | {debug:.2f} | 35.00 | missing |" in table
    assert "cell 3: potsdam/debug/frac_1" in table
    for name in ("potsdam_vs_params.png", "potsdam_vs_fraction.png"):
        assert (paths["plots"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}" in table


def rsfm(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rsfm_ds.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_study_runs_collects_and_skips_finished_cells(tmp_path):
    out = tmp_path / "study"
    config = write_study(
        tmp_path / "tiny.yaml", name="tiny", out_dir=str(out), presets=["debug_s", "debug"],
        train_fractions=[0.5], nproc=1,
        overrides={"log.tensorboard": False, "log.progress": False, "train.num_workers": 0,
                   "schedule.length": 3, "schedule.warmup": 1, "eval.every": 3, "checkpoint.every_steps": 3,
                   "train.global_batch_size": 2, "train.micro_batch_size": 2},
        datasets=[seg_dataset(
            prepare=["rsfm synth potsdam --out {out_dir}/data/potsdam --tiles 2 --size 512 --seed 0",
                     "rsfm potsdam prepare --root {out_dir}/data/potsdam --out {out_dir}/data/prepared "
                     "--crop 256 --stride 256"],
            overrides={"data.root": "{out_dir}/data/prepared"})])
    first = rsfm("study", "--config", str(config))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["preset"], float(r["fraction"])) for r in rows] == [("debug_s", 0.5), ("debug", 0.5)]
    for r in rows:
        assert int(r["steps"]) == 3 and 0.0 <= float(r["value"]) <= 100.0
        assert int(r["params"]) == count_trainable(create_vit(r["preset"]))
        assert (Path(r["run_dir"]) / "checkpoints" / "step_00000003" / "COMPLETE").is_file()
    # Fraction 0.5 of the 4 training crops: 2 crops, one batch of 2, so one step per epoch.
    assert "1 steps/epoch" in (out / "cells" / "potsdam" / "debug_s" / "frac_0.5" / "train.log").read_text()
    assert (out / "plots" / "potsdam_vs_params.png").is_file()
    assert "| debug_s |" in (out / "results.md").read_text()
    # A re-run skips every finished cell and leaves its result untouched.
    result = out / "cells" / "potsdam" / "debug" / "frac_0.5" / "result.json"
    before = result.stat().st_mtime_ns
    second = rsfm("study", "--config", str(config))
    assert second.returncode == 0 and second.stdout.count("complete, skipping") == 2
    assert result.stat().st_mtime_ns == before
    listed = rsfm("study", "--config", str(config), "--list").stdout.splitlines()
    assert listed == ["0\tpotsdam/debug_s/frac_0.5\tcomplete", "1\tpotsdam/debug/frac_0.5\tcomplete"]


def test_a_failing_cell_is_reported_with_its_log_and_fails_the_study(tmp_path):
    out = tmp_path / "study"
    config = write_study(tmp_path / "broken.yaml", out_dir=str(out), presets=["debug_s"],
                         datasets=[seg_dataset(overrides={"data.root": str(tmp_path / "no-such-data")})])
    proc = rsfm("study", "--config", str(config))
    assert proc.returncode == 1
    log = out / "cells" / "potsdam" / "debug_s" / "frac_1" / "launch.log"
    assert "potsdam/debug_s/frac_1: FAILED (exit 2)" in proc.stdout and str(log) in proc.stdout
    assert "no-such-data" in log.read_text()
    assert "1 cell(s) failed: [0]" in proc.stderr
    assert "missing: cell 0 (potsdam/debug_s/frac_1)" in proc.stdout
