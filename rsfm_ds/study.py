"""The scaling study: fine-tuning metric vs backbone size and vs amount of training data.

A study is a grid of cells, ``datasets x presets x train_fractions`` (in that order, which fixes
each cell's index). A cell is one fine-tuning run: the dataset's run config with the preset, the
data fraction and the cell's own ``run_dir`` put in. The same config runs in three ways:

- ``rsfm study --config C``: prepare the data, run every unfinished cell one after the other (each
  in a fresh process group: ``deepspeed --num_gpus nproc`` or one plain process), then collect;
- ``rsfm study --config C --cell I`` under a launcher (an element of a SLURM array job): run cell
  ``I`` in the ranks the launcher started;
- ``rsfm study --config C --collect``: gather the finished cells into ``results.csv``,
  ``results.md`` and plots.

Files under ``out_dir`` (one ``study.json`` version field covers them):

- ``cells/<dataset>/<preset>/frac_<fraction>/``: the cell's fine-tuning ``run_dir`` (checkpoints,
  logs, evaluations) plus ``result.json``, written last, by rank 0, when the cell has finished.
  A cell with ``result.json`` is complete and skipped; an unfinished cell resumes from its newest
  complete checkpoint (``checkpoint.resume=auto``).
- ``prepared/<dataset>.json``: the data preparation commands that completed.
- ``results.csv``, ``results.md``, ``plots/<dataset>_vs_params.png``,
  ``plots/<dataset>_vs_fraction.png``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import ConfigError, check, load_config
from .engine.launcher_guard import tied_child
from .engine.tasks import TASKS, get_task

STUDY_FORMAT_VERSION = 1


@dataclass
class StudyDataset:
    """One downstream dataset of the grid."""

    name: str
    """Name of the dataset in tables, plots and cell folders (letters, digits, _ and -)."""
    task: str
    """Fine-tuning task: det (Oriented R-CNN) or seg (UperNet); any task of the registry
    (rsfm_ds/engine/tasks.py)."""
    config: str
    """Fine-tuning run config; ``{preset}`` in the path is replaced by each cell's preset, so
    every size can keep its own recipe (batch, layer decay, drop path)."""
    overrides: Dict[str, Any] = field(default_factory=dict)
    """``section.field: value`` overrides of this dataset's cells (after the study's own);
    ``{out_dir}`` in a string value is replaced by the study's out_dir."""
    prepare: List[str] = field(default_factory=list)
    """``rsfm`` commands that prepare the data, run once in order by ``--prepare`` (and by a
    local run), each as a process of its own; ``{out_dir}`` is replaced. Empty when the data is
    prepared already."""
    metric: Optional[str] = None
    """Metric of the tables and plots; null takes the task's (det: mAP, seg: mIoU)."""

    def __post_init__(self):
        check(bool(self.name) and all(c.isalnum() or c in "_-" for c in self.name), "name",
              f"must be letters, digits, _ or -, got {self.name!r}")
        check(self.task in TASKS, "task", f"must be one of {tuple(TASKS)}, got {self.task!r}")
        for i, command in enumerate(self.prepare):
            words = shlex.split(command)
            check(bool(words) and words[0] == "rsfm", f"prepare[{i}]",
                  f"must be an rsfm command, got {command!r}")

    @property
    def metric_name(self) -> str:
        return self.metric or get_task(self.task).metric


@dataclass
class StudyConfig:
    """A scaling study: datasets x presets x train fractions."""

    name: str = "scaling"
    """Name of the study (titles of the table and plots)."""
    out_dir: str = "runs/study/scaling"
    """Where cells, results and plots go."""
    presets: List[str] = field(default_factory=lambda: ["debug_s", "debug", "debug_l"])
    """Backbone presets, smallest first (`rsfm models`)."""
    train_fractions: List[float] = field(default_factory=lambda: [1.0])
    """Fractions of each training set (nested seeded subsets: data.fraction)."""
    datasets: List[StudyDataset] = field(default_factory=list)
    """The downstream datasets."""
    pretrained: Optional[str] = None
    """Backbone weights per preset, ``{preset}`` replaced (e.g.
    ``runs/convert/{preset}/backbone.safetensors``); null fine-tunes from scratch."""
    overrides: Dict[str, Any] = field(default_factory=dict)
    """``section.field: value`` overrides of every cell."""
    seed: int = 0
    """Seed of every cell and of the data subsets (data.fraction_seed)."""
    nproc: int = 1
    """Ranks per cell in a local run (``deepspeed --num_gpus nproc`` when above 1)."""

    def __post_init__(self):
        from .models.presets import PRESETS

        check(bool(self.presets), "presets", "name at least one preset")
        for p in self.presets:
            check(p in PRESETS, "presets", f"unknown preset {p!r}; known: {', '.join(PRESETS)}")
        check(len(set(self.presets)) == len(self.presets), "presets", f"repeated: {self.presets}")
        check(bool(self.train_fractions), "train_fractions", "name at least one fraction")
        for f in self.train_fractions:
            check(0 < f <= 1, "train_fractions", f"each must be in (0, 1], got {f}")
        check(len(set(self.train_fractions)) == len(self.train_fractions), "train_fractions",
              f"repeated: {self.train_fractions}")
        check(bool(self.datasets), "datasets", "name at least one dataset")
        names = [d.name for d in self.datasets]
        check(len(set(names)) == len(names), "datasets", f"names must be distinct, got {names}")
        check(self.nproc >= 1, "nproc", f"must be >= 1, got {self.nproc}")


@dataclass(frozen=True)
class Cell:
    """One fine-tuning run of the grid."""

    index: int
    dataset: StudyDataset
    preset: str
    fraction: float

    @property
    def name(self) -> str:
        return f"{self.dataset.name}/{self.preset}/frac_{self.fraction:g}"

    def run_dir(self, cfg: StudyConfig) -> Path:
        return Path(cfg.out_dir) / "cells" / self.name

    def result_path(self, cfg: StudyConfig) -> Path:
        return self.run_dir(cfg) / "result.json"


def load_study(path: str, overrides: Sequence[str] = ()) -> StudyConfig:
    """The study config of ``path`` with ``key=value`` overrides (errors name file and field)."""
    return load_config(StudyConfig, path, overrides)


def cells(cfg: StudyConfig) -> List[Cell]:
    """The grid in index order: datasets, then presets, then fractions."""
    grid = [(d, p, f) for d in cfg.datasets for p in cfg.presets for f in cfg.train_fractions]
    return [Cell(i, d, p, f) for i, (d, p, f) in enumerate(grid)]


def get_cell(cfg: StudyConfig, index: int) -> Cell:
    grid = cells(cfg)
    if not 0 <= index < len(grid):
        raise ConfigError(f"--cell {index}: the study {cfg.name!r} has cells 0..{len(grid) - 1}")
    return grid[index]


def _fill(value: Any, cfg: StudyConfig) -> Any:
    """``value`` with ``{out_dir}`` replaced in every string, lists included."""
    if isinstance(value, str):
        return value.replace("{out_dir}", cfg.out_dir)
    if isinstance(value, (list, tuple)):
        return [_fill(v, cfg) for v in value]
    return value


def _as_override(key: str, value: Any) -> str:
    # JSON is valid YAML flow syntax, so lists, numbers, booleans and null survive parse_overrides.
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def cell_overrides(cfg: StudyConfig, cell: Cell) -> List[str]:
    """Overrides that turn the dataset's run config into this cell's, in precedence order."""
    out = [_as_override(k, _fill(v, cfg)) for k, v in cfg.overrides.items()]
    out += [_as_override(k, _fill(v, cfg)) for k, v in cell.dataset.overrides.items()]
    out += [f"backbone.preset={cell.preset}", f"data.fraction={cell.fraction}",
            f"data.fraction_seed={cfg.seed}", f"seed={cfg.seed}", f"run_dir={cell.run_dir(cfg)}",
            "checkpoint.resume=auto"]
    if cfg.pretrained:
        out.append(f"backbone.pretrained={cfg.pretrained.replace('{preset}', cell.preset)}")
    return out


def cell_config(cfg: StudyConfig, cell: Cell):
    """The fine-tuning run config of ``cell`` (validated; errors name the cell)."""
    path = cell.dataset.config.replace("{preset}", cell.preset)
    try:
        return get_task(cell.dataset.task).load_config(path, cell_overrides(cfg, cell))
    except ConfigError as e:
        raise ConfigError(f"cell {cell.index} ({cell.name}): {e}") from None


def check_cells(cfg: StudyConfig) -> None:
    """Build every cell's run config, so a bad grid fails before any cell runs."""
    for cell in cells(cfg):
        cell_config(cfg, cell)


def preset_params(preset: str) -> int:
    """Trainable backbone parameters of ``preset`` (built on the meta device: no memory)."""
    import torch

    from .models.presets import count_trainable, create_vit

    with torch.device("meta"):
        return count_trainable(create_vit(preset))


def prepare(cfg: StudyConfig, log=print) -> None:
    """Run each dataset's ``prepare`` commands once (a record under out_dir/prepared marks them done).

    Each command runs as ``python -m rsfm_ds.cli ...`` in a process of its own, its output passed
    through.

    Raises:
        ConfigError: a command failed (its dataset and text are named).
    """
    for d in cfg.datasets:
        if not d.prepare:
            continue
        commands = [_fill(c, cfg) for c in d.prepare]
        record = Path(cfg.out_dir) / "prepared" / f"{d.name}.json"
        if record.is_file() and json.loads(record.read_text()).get("commands") == commands:
            log(f"[study] data of {d.name}: prepared already ({record})")
            continue
        for i, command in enumerate(commands):
            log(f"[study] data of {d.name} [{i + 1}/{len(commands)}]: {command}")
            sys.stdout.flush()  # our line before the command's output
            code = subprocess.run([sys.executable, "-m", "rsfm_ds.cli", *shlex.split(command)[1:]],
                                  **tied_child()).returncode
            if code != 0:
                raise ConfigError(f"datasets.{d.name}.prepare[{i}]: {command!r} exited with {code}")
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(dict(commands=commands), indent=2))


def run_cell(cfg: StudyConfig, index: int) -> Dict[str, Any]:
    """Fine-tune cell ``index`` in the ranks of this job; rank 0 writes its ``result.json``.

    Must run in every rank (under the deepspeed launcher, srun, or as one plain process).
    """
    from .engine.finetune import finetune

    cell = get_cell(cfg, index)
    result_path = cell.result_path(cfg)
    if result_path.is_file():
        print(f"[study] cell {index} ({cell.name}) is complete: {result_path}")
        return json.loads(result_path.read_text())
    run_cfg = cell_config(cfg, cell)
    task = get_task(cell.dataset.task).build(run_cfg)
    t0 = time.perf_counter()
    summary = finetune(run_cfg, task)
    import torch.distributed as dist

    result = dict(
        version=STUDY_FORMAT_VERSION, study=cfg.name, cell=index, dataset=cell.dataset.name,
        task=cell.dataset.task, preset=cell.preset, params=preset_params(cell.preset),
        fraction=cell.fraction, metric=cell.dataset.metric_name,
        value=summary["metrics"].get(cell.dataset.metric_name),
        best=(summary["best"] or {}).get("score"), steps=summary["step"],
        seconds=round(time.perf_counter() - t0, 1), world_size=dist.get_world_size(),
        metrics=summary["metrics"], run_dir=str(cell.run_dir(cfg)))
    if dist.get_rank() == 0:
        tmp = result_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(result_path)  # atomic: a cell is complete only with its whole result
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cell_command(cfg: StudyConfig, config_path: str, overrides: Sequence[str], index: int) -> List[str]:
    """The command that runs one cell locally in ``cfg.nproc`` fresh ranks."""
    args = ["study", "--config", config_path, "--cell", str(index), *overrides]
    if cfg.nproc == 1:
        return [sys.executable, "-m", "rsfm_ds.cli", *args]
    deepspeed = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    return [deepspeed, "--num_gpus", str(cfg.nproc), "--master_port", str(_free_port()),
            "--module", "rsfm_ds.cli", *args]


def run_local(cfg: StudyConfig, config_path: str, overrides: Sequence[str] = (), log=print) -> List[int]:
    """Prepare, run every unfinished cell (each in fresh processes), collect; failed cell indices.

    A failing cell does not stop the study: the others run, the failure is reported with its log.
    """
    check_cells(cfg)
    prepare(cfg, log)
    grid = cells(cfg)
    env = dict(os.environ)
    # Cells run one at a time: split this machine's cores over the cell's ranks.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc)))
    failed = []
    for cell in grid:
        tag = f"[study] cell {cell.index + 1}/{len(grid)} {cell.name}"
        if cell.result_path(cfg).is_file():
            log(f"{tag}: complete, skipping")
            continue
        cell.run_dir(cfg).mkdir(parents=True, exist_ok=True)
        launch_log = cell.run_dir(cfg) / "launch.log"
        log(f"{tag}: running ({cfg.nproc} rank{'s' if cfg.nproc > 1 else ''}; log {launch_log})")
        t0 = time.perf_counter()
        with open(launch_log, "a") as out:
            code = subprocess.run(cell_command(cfg, config_path, overrides, cell.index), env=env,
                                  stdout=out, stderr=subprocess.STDOUT, **tied_child()).returncode
        if code != 0 or not cell.result_path(cfg).is_file():
            failed.append(cell.index)
            log(f"{tag}: FAILED (exit {code}) after {time.perf_counter() - t0:.0f} s; see {launch_log}")
            continue
        result = json.loads(cell.result_path(cfg).read_text())
        log(f"{tag}: {result['metric']} {_fmt(result['value'])} after {result['steps']} steps "
            f"({time.perf_counter() - t0:.0f} s)")
    collect(cfg, log)
    return failed


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


CSV_FIELDS = ["dataset", "task", "metric", "preset", "params", "fraction", "value", "best", "steps",
              "seconds", "world_size", "run_dir"]


def collect(cfg: StudyConfig, log=print) -> Dict[str, Path]:
    """Gather finished cells into results.csv, results.md and plots; name the missing cells."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = cells(cfg)
    results, missing = {}, []
    for cell in grid:
        path = cell.result_path(cfg)
        if path.is_file():
            results[cell.index] = json.loads(path.read_text())
        else:
            missing.append(cell)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for index in sorted(results):
            writer.writerow(results[index])
    plots = _plot(cfg, results, out / "plots")
    (out / "results.md").write_text(_markdown(cfg, results, missing, plots, out))
    (out / "study.json").write_text(json.dumps(dict(version=STUDY_FORMAT_VERSION, name=cfg.name,
                                                    cells=len(grid), complete=len(results)), indent=2))
    log(f"[study] {len(results)}/{len(grid)} cells complete -> {out / 'results.md'}, {out / 'results.csv'}, "
        f"{out / 'plots'}")
    for cell in missing:
        log(f"[study]   missing: cell {cell.index} ({cell.name})")
    return dict(csv=out / "results.csv", markdown=out / "results.md", plots=out / "plots")


def _series(cfg: StudyConfig, results: Dict[int, Dict[str, Any]], dataset: str
            ) -> Dict[Tuple[str, float], float]:
    return {(r["preset"], r["fraction"]): r["value"] for r in results.values()
            if r["dataset"] == dataset and r["value"] is not None}


def _markdown(cfg: StudyConfig, results: Dict[int, Dict[str, Any]], missing: List[Cell],
              plots: List[Path], out: Path) -> str:
    lines = [f"# Study {cfg.name}", "",
             f"{len(results)} of {len(results) + len(missing)} cells complete. Rows: backbone presets "
             "(trainable parameters); columns: fraction of the training set; entries: the final "
             "evaluation's metric (best in parentheses where it differs).", ""]
    params = {p: preset_params(p) for p in cfg.presets}
    for d in cfg.datasets:
        lines += [f"## {d.name} ({d.task}, {d.metric_name})", ""]
        lines.append("| preset | params (M) | " + " | ".join(f"{f:g}" for f in cfg.train_fractions) + " |")
        lines.append("|---|---:|" + "---:|" * len(cfg.train_fractions))
        by_key = {(r["preset"], r["fraction"]): r for r in results.values() if r["dataset"] == d.name}
        for p in cfg.presets:
            row = []
            for f in cfg.train_fractions:
                r = by_key.get((p, f))
                if r is None:
                    row.append("missing")
                    continue
                entry = _fmt(r["value"])
                if r["best"] is not None and r["value"] is not None and abs(r["best"] - r["value"]) > 1e-9:
                    entry += f" ({_fmt(r['best'])})"
                row.append(entry)
            lines.append(f"| {p} | {params[p] / 1e6:.2f} | " + " | ".join(row) + " |")
        lines.append("")
        for plot in plots:
            if plot.name.startswith(f"{d.name}_"):
                lines += [f"![{plot.stem}]({plot.relative_to(out)})", ""]
    if missing:
        lines += ["## Missing cells", ""] + [f"- cell {c.index}: {c.name}" for c in missing] + [""]
    return "\n".join(lines)


def _plot(cfg: StudyConfig, results: Dict[int, Dict[str, Any]], plot_dir: Path) -> List[Path]:
    """Per dataset: metric vs parameters (a line per fraction) and vs fraction (a line per preset)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    params = {p: preset_params(p) for p in cfg.presets}
    written = []
    for d in cfg.datasets:
        series = _series(cfg, results, d.name)
        if not series:
            continue
        by_fraction = {f"{f:g} of train": [(params[p], series[(p, f)]) for p in cfg.presets if (p, f) in series]
                       for f in cfg.train_fractions}
        by_preset = {f"{p} ({params[p] / 1e6:.2f}M)": [(f, series[(p, f)]) for f in cfg.train_fractions
                                                       if (p, f) in series] for p in cfg.presets}
        written.append(_line_plot(by_fraction, "backbone parameters", d.metric_name,
                                  f"{cfg.name}: {d.name} vs parameters", plot_dir / f"{d.name}_vs_params.png",
                                  tick_label=lambda x: f"{x / 1e6:.3g}M"))
        written.append(_line_plot(by_preset, "fraction of the training set", d.metric_name,
                                  f"{cfg.name}: {d.name} vs training data", plot_dir / f"{d.name}_vs_fraction.png"))
    return written


def _line_plot(lines: Dict[str, List[Tuple[float, float]]], xlabel: str, ylabel: str, title: str,
               path: Path, tick_label=lambda x: f"{x:g}") -> Path:
    """One PNG with a log-x line per non-empty series of ``(x, y)`` points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, pts in lines.items():
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log")
    # Ticks at the grid's own values (0.01, 0.1, 1 / 86M, 605M), not at powers of ten.
    xs = sorted({x for pts in lines.values() for x, _ in pts})
    ax.set_xticks(xs, [tick_label(x) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["StudyConfig", "StudyDataset", "Cell", "load_study", "cells", "get_cell", "cell_config",
           "check_cells", "prepare", "run_cell", "run_local", "collect", "cell_command"]
