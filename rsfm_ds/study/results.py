"""Collecting a study: per-cell rows, mean and spread over seeds, tables that mark differences
smaller than the spread, and the plots (rsfm_ds/study/plots.py).

The spread of a group of repeats is the sample standard deviation over its seeds (``n - 1`` in
the denominator; none with one seed). A difference between two groups is *within the spread*
when its size is below the larger of the two groups' spreads: such a difference is not evidence
of an effect at this number of seeds, and the tables mark it with ``~``.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import StudyConfig
from .grid import Cell, cells, preset_params
from .pretraining import converted_steps
from .records import STUDY_FORMAT_VERSION, write_record

Key = Tuple[str, str, str, float]
"""(dataset, preset, init, fraction): one group of repeats over seeds."""


@dataclass(frozen=True)
class Summary:
    """The repeats of one group."""

    values: Tuple[float, ...]
    """The metric of each finished seed, in seed order."""
    seeds: Tuple[int, ...]
    """The seeds of ``values``."""

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation (``n - 1``); None with fewer than two repeats."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))


def within_spread(a: Summary, b: Summary) -> Optional[bool]:
    """Whether ``|a.mean - b.mean|`` is below the larger spread; None when a spread is unknown."""
    if a.std is None or b.std is None:
        return None
    return abs(a.mean - b.mean) < max(a.std, b.std)


def fmt(value: Optional[float]) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _usable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def aggregate(results: Sequence[Dict[str, Any]]) -> Dict[Key, Summary]:
    """Group cell results by (dataset, preset, init, fraction); cells without a metric value are
    left out."""
    groups: Dict[Key, List[Tuple[int, float]]] = {}
    for r in results:
        if _usable(r.get("value")):
            key = (r["dataset"], r["preset"], r["init"], float(r["fraction"]))
            groups.setdefault(key, []).append((int(r["seed"]), float(r["value"])))
    return {k: Summary(tuple(v for _, v in sorted(g)), tuple(s for s, _ in sorted(g))) for k, g in groups.items()}


CSV_FIELDS = ["dataset", "task", "metric", "preset", "params", "init", "fraction", "seed", "value", "best",
              "steps", "seconds", "world_size", "run_dir"]
SUMMARY_FIELDS = ["dataset", "metric", "preset", "params", "init", "fraction", "n", "mean", "std", "min", "max",
                  "seeds"]


def collect(cfg: StudyConfig, log=print) -> Dict[str, Path]:
    """Gather finished cells into results.csv (a row per cell), summary.csv (a row per group of
    seeds), results.md and plots; name the missing cells."""
    from .plots import plot_study

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = cells(cfg)
    results, missing = [], []
    for cell in grid:
        path = cell.result_path(cfg)
        (results.append(json.loads(path.read_text())) if path.is_file() else missing.append(cell))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    summaries = aggregate(results)
    params = {p: preset_params(p) for p in cfg.presets}
    metrics = {d.name: d.metric_name for d in cfg.datasets}
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for (dataset, preset, init, fraction), s in sorted(summaries.items(), key=lambda kv: _order(cfg, kv[0])):
            writer.writerow(dict(dataset=dataset, metric=metrics.get(dataset), preset=preset, params=params.get(preset),
                                 init=init, fraction=fraction, n=s.n, mean=s.mean,
                                 std="" if s.std is None else s.std, min=min(s.values), max=max(s.values),
                                 seeds=" ".join(map(str, s.seeds))))
    plots = plot_study(cfg, summaries, params, out / "plots")
    stale = stale_results(cfg, results)
    (out / "results.md").write_text(markdown(cfg, summaries, params, len(results), missing, plots, out, stale))
    write_record(out / "study.json", dict(version=STUDY_FORMAT_VERSION, name=cfg.name, cells=len(grid),
                                          complete=len(results)))
    log(f"[study] {len(results)}/{len(grid)} cells complete -> {out / 'results.md'}, {out / 'summary.csv'}, "
        f"{out / 'plots'}")
    for cell in missing:
        log(f"[study]   missing: cell {cell.index} ({cell.name})")
    for result in stale:
        log(f"[study]   stale: cell {result['cell']} fine-tuned the backbone of {result['preset']} after "
            f"{result.get('pretrain_steps')} pretraining steps, now {converted_steps(cfg, result['preset'])}; "
            f"delete {result['run_dir']} to redo it")
    return dict(csv=out / "results.csv", summary=out / "summary.csv", markdown=out / "results.md",
                plots=out / "plots")


def stale_results(cfg: StudyConfig, results: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Pretrained cells whose backbone has been pretrained further and converted again since
    they ran (a larger budget re-opens pretraining; a finished cell is not redone by itself).
    A result that does not record its ``pretrain_steps`` is not judged."""
    out = []
    for r in results:
        steps = converted_steps(cfg, r["preset"]) if r.get("init") == "pretrained" else None
        if steps is not None and r.get("pretrain_steps", steps) != steps:
            out.append(r)
    return out


def _order(cfg: StudyConfig, key: Key) -> Tuple[int, int, int, int]:
    dataset, preset, init, fraction = key
    names = [d.name for d in cfg.datasets]
    return (names.index(dataset), cfg.presets.index(preset), cfg.inits.index(init),
            cfg.train_fractions.index(fraction))


def _entry(s: Optional[Summary], seeds: int) -> str:
    if s is None:
        return "missing"
    text = fmt(s.mean) + ("" if s.std is None else f" ± {fmt(s.std)}")
    return text + (f" (n={s.n})" if s.n < seeds else "")


def _mark(flag: Optional[bool]) -> str:
    return " ~" if flag else ""


def markdown(cfg: StudyConfig, summaries: Dict[Key, Summary], params: Dict[str, int], complete: int,
             missing: List[Cell], plots: List[Path], out: Path, stale: Sequence[Dict[str, Any]] = ()) -> str:
    """results.md: per dataset a size table (rows preset x init, columns fractions) and, with
    both inits, the gain from pretraining; ``~`` marks differences within the spread; the
    missing cells and the stale ones (:func:`stale_results`) are listed at the end."""
    lines = [f"# Study {cfg.name}", "",
             f"{complete} of {complete + len(missing)} cells complete. Entries: the final evaluation's metric, "
             f"mean ± sample standard deviation over seeds {cfg.seeds} (n shown where seeds are missing). "
             "`~` marks a difference smaller than the spread (the larger of the two standard deviations): "
             "in the size table, from the next smaller preset with the same initialisation and fraction; "
             "in the pretraining table, between pretrained and scratch.", ""]
    fractions = cfg.train_fractions
    header = " | ".join(f"{f:g} of train" for f in fractions)
    for d in cfg.datasets:
        lines += [f"## {d.name} ({d.task}, {d.metric_name})", "",
                  f"| preset | params (M) | init | {header} |", "|---|---:|---|" + "---:|" * len(fractions)]
        for i, preset in enumerate(cfg.presets):
            for init in cfg.inits:
                row = []
                for f in fractions:
                    s = summaries.get((d.name, preset, init, f))
                    below = summaries.get((d.name, cfg.presets[i - 1], init, f)) if i else None
                    row.append(_entry(s, len(cfg.seeds)) + (_mark(within_spread(s, below)) if s and below else ""))
                lines.append(f"| {preset} | {params[preset] / 1e6:.2f} | {init} | " + " | ".join(row) + " |")
        lines.append("")
        if len(cfg.inits) == 2:
            lines += ["Gain from pretraining (pretrained - scratch):", "", f"| preset | {header} |",
                      "|---|" + "---:|" * len(fractions)]
            for preset in cfg.presets:
                row = []
                for f in fractions:
                    a, b = (summaries.get((d.name, preset, init, f)) for init in ("pretrained", "scratch"))
                    row.append("missing" if a is None or b is None
                               else f"{a.mean - b.mean:+.2f}" + _mark(within_spread(a, b)))
                lines.append(f"| {preset} | " + " | ".join(row) + " |")
            lines.append("")
        for plot in plots:
            if plot.name.startswith(f"{d.name}_"):
                lines += [f"![{plot.stem}]({plot.relative_to(out)})", ""]
    if missing:
        lines += ["## Missing cells", ""] + [f"- cell {c.index}: {c.name}" for c in missing] + [""]
    if stale:
        lines += ["## Stale cells", "", "Fine-tuned from an earlier conversion of their preset's backbone "
                  "(pretraining has gone further since); delete their run_dir and run them again:", ""]
        lines += [f"- cell {r['cell']}: {r['run_dir']} (pretraining step {r.get('pretrain_steps')})" for r in stale]
        lines.append("")
    return "\n".join(lines)


__all__ = ["Summary", "within_spread", "aggregate", "collect", "markdown", "fmt", "stale_results"]
