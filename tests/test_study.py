"""The scaling-study runner: the grid, its configs, collection, and a real run of a tiny study."""
import csv
import json
import os
import statistics
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
        train_fractions=[0.1, 1.0], seeds=[3], subset_seed=None, pretrained="weights/{preset}.safetensors",
        overrides={"schedule.length": 7, "data.root": "{out_dir}/data"},
        datasets=[seg_dataset(overrides={"schedule.length": 9}),
                  dict(name="dota", task="det", config="configs/det/dota2_{preset}.yaml")]))
    grid = study.cells(cfg)
    # Order: datasets, presets, inits (pretrained first), fractions, seeds.
    assert [c.name for c in grid[:5]] == [
        "potsdam/debug_s/pretrained/frac_0.1/seed_3", "potsdam/debug_s/pretrained/frac_1/seed_3",
        "potsdam/debug_s/scratch/frac_0.1/seed_3", "potsdam/debug_s/scratch/frac_1/seed_3",
        "potsdam/debug/pretrained/frac_0.1/seed_3"]
    assert [c.index for c in grid] == list(range(16)) and grid[8].dataset.name == "dota"
    run = study.cell_config(cfg, grid[4])
    assert run.backbone.preset == "debug" and run.data.fraction == 0.1 and run.data.fraction_seed == 3
    assert run.schedule.length == 9  # the dataset's override wins over the study's
    assert run.data.root == f"{tmp_path}/out/data"
    assert run.backbone.pretrained == "weights/debug.safetensors"
    assert run.run_dir == str(tmp_path / "out" / "cells" / "potsdam" / "debug" / "pretrained" / "frac_0.1" / "seed_3")
    assert run.checkpoint.resume == "auto"
    assert study.cell_config(cfg, grid[6]).backbone.pretrained is None  # the scratch baseline
    # {preset} in the config path: dota2_debug.yaml exists, dota2_debug_s.yaml does not.
    assert study.cell_config(cfg, grid[12]).backbone.preset == "debug"
    with pytest.raises(ConfigError, match=r"cell 8 \(dota/debug_s/pretrained/frac_0.1/seed_3\).*dota2_debug_s\.yaml"):
        study.check_cells(cfg)
    with pytest.raises(ConfigError, match=r"--cell 16: .* cells 0\.\.15"):
        study.get_cell(cfg, 16)


@pytest.mark.parametrize("fields, message", [
    (dict(presets=["vit_huge"]), r"presets: unknown preset 'vit_huge'"),
    (dict(train_fractions=[0.0]), r"train_fractions: each must be in \(0, 1\]"),
    (dict(datasets=[seg_dataset(), seg_dataset()]), r"datasets: names must be distinct"),
    (dict(datasets=[seg_dataset(task="cls")]), r"datasets\[0\]\.task: must be one of"),
    (dict(datasets=[seg_dataset(prepare=["python make_data.py"])]), r"prepare\[0\]: must be an rsfm command"),
    (dict(datasets=[]), r"datasets: name at least one dataset"),
    (dict(seeds=[1, 1]), r"seeds: repeated"),
    (dict(scratch=False), r"scratch: must be true: the study has no pretrained cells"),
    (dict(pretrained="w.safetensors", pretrain=dict(config="c.yaml", epochs=1)), r"pretrained: give either"),
    (dict(pretrain=dict(config="c.yaml", epochs=1, budget="time")), r"pretrain\.budget: expected one of"),
    (dict(pretrain=dict(config="c.yaml", epochs=0)), r"pretrain\.epochs: must be positive"),
])
def test_bad_study_configs_name_the_field(tmp_path, fields, message):
    base = dict(presets=["debug"], datasets=[seg_dataset()])
    path = write_study(tmp_path / "bad.yaml", **{**base, **fields})
    with pytest.raises(ConfigError, match=message):
        study.load_study(str(path))


def write_result(cfg, cell, value):
    cell.run_dir(cfg).mkdir(parents=True, exist_ok=True)
    cell.result_path(cfg).write_text(json.dumps(dict(
        dataset=cell.dataset.name, task=cell.dataset.task, metric="mIoU", preset=cell.preset, params=123,
        init=cell.init, fraction=cell.fraction, seed=cell.seed, value=value, best=value, steps=5, seconds=1.0,
        world_size=1, run_dir=str(cell.run_dir(cfg)))))


def test_seeds_differ_aggregate_and_mark_differences_within_the_spread(tmp_path):
    cfg = study.load_config(study.StudyConfig, write_study(
        tmp_path / "s.yaml", out_dir=str(tmp_path / "out"), presets=["debug_s", "debug"],
        train_fractions=[1.0], seeds=[0, 1, 2], subset_seed=None, pretrained="w/{preset}.safetensors",
        datasets=[seg_dataset()]))
    grid = study.cells(cfg)
    runs = [study.cell_config(cfg, c) for c in grid[:3]]
    assert [r.seed for r in runs] == [0, 1, 2] and [r.data.fraction_seed for r in runs] == [0, 1, 2]
    assert len({r.run_dir for r in runs}) == 3
    # Values per (preset, init) over seeds 0, 1, 2; debug/scratch lacks seed 2.
    values = {("debug_s", "pretrained"): [40.0, 44.0, 42.0], ("debug_s", "scratch"): [30.0, 31.0, 32.0],
              ("debug", "pretrained"): [43.0, 45.0, 41.0], ("debug", "scratch"): [36.0, 38.0, None]}
    for cell in grid:
        value = values[(cell.preset, cell.init)][cell.seed]
        if value is not None:
            write_result(cfg, cell, value)
    paths = study.collect(cfg, log=lambda *_: None)
    rows = {(r["preset"], r["init"]): r for r in csv.DictReader(paths["summary"].open())}
    for key, vals in values.items():
        vals = [v for v in vals if v is not None]
        assert int(rows[key]["n"]) == len(vals)
        assert float(rows[key]["mean"]) == pytest.approx(statistics.mean(vals))
        assert float(rows[key]["std"]) == pytest.approx(statistics.stdev(vals))
    assert rows[("debug", "scratch")]["seeds"] == "0 1"
    table = paths["markdown"].read_text()
    # debug vs debug_s, pretrained: 43 - 42 = 1 < max(2, 2): within the spread, marked.
    assert "| debug | " in table and "| pretrained | 43.00 ± 2.00 ~ |" in table
    # scratch: 37 - 31 = 6 > max(1, 1.41): a real difference, unmarked; n shown for the missing seed.
    assert "| scratch | 37.00 ± 1.41 (n=2) |" in table
    # Pretraining gain: debug_s 42 - 31 = 11 (unmarked), debug 43 - 37 = 6 (unmarked).
    assert "| debug_s | +11.00 |" in table and "| debug | +6.00 |" in table
    assert "cell 11: potsdam/debug/scratch/frac_1/seed_2" in table
    assert len(list(csv.DictReader(paths["csv"].open()))) == 11
    for name in ("potsdam_vs_params.png", "potsdam_vs_fraction.png"):
        assert (paths["plots"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}" in table


def test_within_spread_needs_two_seeds_and_compares_with_the_larger_spread():
    one, two = study.Summary((1.0,), (0,)), study.Summary((1.0, 3.0), (0, 1))
    assert study.within_spread(one, two) is None
    wide = study.Summary((0.0, 4.0), (0, 1))          # mean 2, std 2.83
    assert study.within_spread(two, wide) is True     # |2 - 2| < 2.83
    far = study.Summary((10.0, 10.0), (0, 1))         # std 0
    assert study.within_spread(two, far) is False     # |2 - 10| > 1.41


PRETRAIN = dict(config="configs/pretrain/debug.yaml", epochs=4,
                overrides={"data.shards": "{out_dir}/shards/manifest.json"})


def test_a_cells_backbone_is_its_own_presets(tmp_path):
    cfg = study.load_config(study.StudyConfig, write_study(
        tmp_path / "s.yaml", out_dir=str(tmp_path / "out"), presets=["debug_s", "debug", "debug_l"],
        pretrain=PRETRAIN, datasets=[seg_dataset(overrides={"backbone.pretrained": "elsewhere.safetensors"})]))
    grid = study.cells(cfg)
    assert {c.init for c in grid} == {"pretrained", "scratch"} and len(grid) == 6
    for cell in grid:
        run = study.cell_config(cfg, cell)
        expected = tmp_path / "out" / "pretrain" / cell.preset / "backbone.safetensors"
        assert run.backbone.pretrained == (str(expected) if cell.pretrained else None), cell.name
        assert run.backbone.preset == cell.preset


def test_budget_rule_equal_steps_or_equal_flops(tmp_path):
    from rsfm_ds.models.mae import mae_train_flops

    base = dict(out_dir=str(tmp_path / "out"), presets=["debug_s", "debug", "debug_l"], datasets=[seg_dataset()])
    steps = study.load_config(study.StudyConfig, write_study(tmp_path / "a.yaml", pretrain=PRETRAIN, **base))
    assert [study.pretrain_config(steps, p).train.epochs for p in steps.presets] == [4, 4, 4]
    assert [study.pretrain_config(steps, p).model.preset for p in steps.presets] == steps.presets
    flops = study.load_config(study.StudyConfig, write_study(
        tmp_path / "b.yaml", pretrain={**PRETRAIN, "budget": "flops"}, **base))
    f = {p: mae_train_flops(p, 96) for p in flops.presets}   # configs/pretrain/debug.yaml: 96 px
    epochs = {p: study.pretrain_config(flops, p).train.epochs for p in flops.presets}
    assert epochs["debug_l"] == 4 and epochs["debug_s"] > epochs["debug"] > 4
    for p in flops.presets:  # equal FLOPs up to rounding to whole epochs
        assert abs(epochs[p] * f[p] - 4 * f["debug_l"]) <= 0.5 * f[p]
    with pytest.raises(ConfigError, match=r"pretrain.budget: steps needs one global batch"):
        study.check_pretrain(study.load_config(study.StudyConfig, write_study(
            tmp_path / "c.yaml", pretrain={**PRETRAIN, "config": "configs/pretrain/{preset}.yaml"},
            **{**base, "presets": ["vit_b12x1", "debug"]})))


class FakeStages:
    """Stands in for the processes of a local run: pretraining (which can be made to stop after a
    checkpoint), conversion and fine-tuning, recording what ran."""

    def __init__(self, cfg, monkeypatch):
        from rsfm_ds.study import pretraining, runner

        self.cfg, self.calls, self.crash = cfg, [], set()
        monkeypatch.setattr(runner, "_run_logged", self.run_logged)
        monkeypatch.setattr(pretraining.subprocess, "run", self.convert)
        monkeypatch.setattr("rsfm_ds.engine.pretrain.pretrain", self.pretrain)

    def run_logged(self, command, log_path, env):
        stage, arg = command[command.index("--config") + 2:][:2]
        if stage == "--pretrain":
            self.calls.append(("pretrain", arg))
            if arg in self.crash:  # stops after a complete checkpoint, like a killed job
                tag = study.pretrain_dir(self.cfg, arg) / "checkpoints" / "step_00000002"
                tag.mkdir(parents=True)
                (tag / "COMPLETE").write_text("2")
                return 1
            study.run_pretrain(self.cfg, arg, log=lambda *_: None)
            return 0
        cell = study.get_cell(self.cfg, int(arg))
        self.calls.append(("cell", cell.index))
        run = study.cell_config(self.cfg, cell)
        if cell.pretrained:  # the backbone the cell loads must exist by now
            assert Path(run.backbone.pretrained).is_file(), cell.name
        write_result(self.cfg, cell, float(cell.index))
        return 0

    def pretrain(self, run_cfg):
        resumed = any(Path(run_cfg.run_dir).glob("checkpoints/*/COMPLETE"))
        self.calls.append(("resumed" if resumed else "fresh", run_cfg.model.preset))
        return dict(step=run_cfg.train.epochs * 3, samples_seen=96, last_loss=0.5)

    def convert(self, command, **kw):
        out = Path(command[-1])
        self.calls.append(("convert", out.parent.name))
        out.write_bytes(b"weights")
        return subprocess.CompletedProcess(command, 0)


def test_stage_graph_skips_finished_and_resumes_unfinished_work(tmp_path, monkeypatch):
    config = write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "out"), presets=["debug_s", "debug"],
                         pretrain=PRETRAIN, datasets=[seg_dataset()])
    cfg = study.load_study(str(config))
    fake = FakeStages(cfg, monkeypatch)
    fake.crash = {"debug"}
    quiet = lambda *_: None  # noqa: E731
    # Cells: 0 debug_s/pretrained, 1 debug_s/scratch, 2 debug/pretrained, 3 debug/scratch.
    assert study.run_local(cfg, str(config), log=quiet) == [2]
    assert fake.calls == [("pretrain", "debug_s"), ("fresh", "debug_s"), ("convert", "debug_s"),
                          ("pretrain", "debug"), ("cell", 0), ("cell", 1), ("cell", 3)]
    assert study.pretrain_status(cfg, "debug") == "partial"
    assert study.pending_pretrain(cfg) == ["debug"] and [c.index for c in study.pending_cells(cfg)] == [2]

    fake.calls, fake.crash = [], set()
    assert study.run_local(cfg, str(config), log=quiet) == []
    assert fake.calls == [("pretrain", "debug"), ("resumed", "debug"), ("convert", "debug"), ("cell", 2)]
    record = json.loads((study.pretrain_dir(cfg, "debug") / "pretrained.json").read_text())
    assert record["steps"] == 12 and record["epochs"] == 4 and record["budget"] == "steps"

    # Pretrained but not converted: only the conversion and the cells that need it run again.
    (study.pretrain_dir(cfg, "debug_s") / "converted.json").unlink()
    study.get_cell(cfg, 0).result_path(cfg).unlink()
    fake.calls = []
    assert study.pending_pretrain(cfg) == ["debug_s"]
    assert study.run_local(cfg, str(config), log=quiet) == []
    assert fake.calls == [("convert", "debug_s"), ("cell", 0)]
    # Everything finished: nothing runs; a changed budget re-opens pretraining (which resumes).
    fake.calls = []
    assert study.run_local(cfg, str(config), log=quiet) == [] and fake.calls == []
    longer = study.load_study(str(config), ["pretrain.epochs=5"])
    assert study.pretrain_status(longer, "debug") == "partial"
    assert study.pending_pretrain(longer) == []  # every cell has its result: no pretraining is needed


def test_cli_pending_lists_for_the_slurm_chain(tmp_path):
    config = write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "out"), presets=["debug_s", "debug"],
                         pretrain=PRETRAIN, datasets=[seg_dataset()])
    cfg = study.load_study(str(config))
    write_result(cfg, study.get_cell(cfg, 1), 1.0)
    assert rsfm("study", "--config", str(config), "--pending").stdout.strip() == "0,2,3"
    assert rsfm("study", "--config", str(config), "--pending-pretrain").stdout.split() == ["debug_s", "debug"]
    bad = rsfm("study", "--config", str(config), "--convert", "debug_l")
    assert bad.returncode == 2 and "--convert debug_l: the study" in bad.stderr


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
    assert [(r["preset"], r["init"], float(r["fraction"]), int(r["seed"])) for r in rows] == [
        ("debug_s", "scratch", 0.5, 0), ("debug", "scratch", 0.5, 0)]
    for r in rows:
        assert int(r["steps"]) == 3 and 0.0 <= float(r["value"]) <= 100.0
        assert int(r["params"]) == count_trainable(create_vit(r["preset"]))
        assert (Path(r["run_dir"]) / "checkpoints" / "step_00000003" / "COMPLETE").is_file()
    # Fraction 0.5 of the 4 training crops: 2 crops, one batch of 2, so one step per epoch.
    assert "1 steps/epoch" in (out / "cells/potsdam/debug_s/scratch/frac_0.5/seed_0/train.log").read_text()
    assert (out / "plots" / "potsdam_vs_params.png").is_file()
    assert "| debug_s | " in (out / "results.md").read_text()
    # A re-run skips every finished cell and leaves its result untouched.
    result = out / "cells/potsdam/debug/scratch/frac_0.5/seed_0/result.json"
    before = result.stat().st_mtime_ns
    second = rsfm("study", "--config", str(config))
    assert second.returncode == 0 and second.stdout.count("complete, skipping") == 2
    assert result.stat().st_mtime_ns == before
    listed = rsfm("study", "--config", str(config), "--list").stdout.splitlines()
    assert listed == ["0\tpotsdam/debug_s/scratch/frac_0.5/seed_0\tcomplete",
                      "1\tpotsdam/debug/scratch/frac_0.5/seed_0\tcomplete"]


def test_a_failing_cell_is_reported_with_its_log_and_fails_the_study(tmp_path):
    out = tmp_path / "study"
    config = write_study(tmp_path / "broken.yaml", out_dir=str(out), presets=["debug_s"],
                         datasets=[seg_dataset(overrides={"data.root": str(tmp_path / "no-such-data")})])
    proc = rsfm("study", "--config", str(config))
    assert proc.returncode == 1
    log = out / "cells/potsdam/debug_s/scratch/frac_1/seed_0/launch.log"
    assert "potsdam/debug_s/scratch/frac_1/seed_0: FAILED (exit 2)" in proc.stdout and str(log) in proc.stdout
    assert "no-such-data" in log.read_text()
    assert "1 cell(s) failed: [0]" in proc.stderr
    assert "missing: cell 0 (potsdam/debug_s/scratch/frac_1/seed_0)" in proc.stdout


def test_results_of_an_earlier_backbone_conversion_are_reported_stale(tmp_path):
    config = write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "out"), presets=["debug"],
                         pretrain=PRETRAIN, datasets=[seg_dataset()], train_fractions=[1.0], seeds=[0])
    cfg = study.load_study(str(config))
    pretrained, scratch = study.cells(cfg)  # pretrained first
    for cell in (pretrained, scratch):
        write_result(cfg, cell, 1.0)
    record = json.loads(pretrained.result_path(cfg).read_text())
    pretrained.result_path(cfg).write_text(json.dumps({**record, "cell": 0, "pretrain_steps": 12}))
    converted = study.pretrain_dir(cfg, "debug") / "converted.json"
    converted.parent.mkdir(parents=True)
    converted.write_text(json.dumps({"steps": 12}))
    lines = []
    study.collect(cfg, log=lines.append)
    assert not any("stale" in line for line in lines)
    converted.write_text(json.dumps({"steps": 20}))  # pretrained further and converted again
    lines = []
    study.collect(cfg, log=lines.append)
    assert [line for line in lines if "stale" in line] == [
        f"[study]   stale: cell 0 fine-tuned the backbone of debug after 12 pretraining steps, now 20; "
        f"delete {pretrained.run_dir(cfg)} to redo it"]
    assert "## Stale cells" in (Path(cfg.out_dir) / "results.md").read_text()
