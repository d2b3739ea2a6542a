"""Collecting a study: per-cell rows, mean and spread over seeds, tables that mark differences
smaller than the spread, and the plots (rsfm_ds/study/plots.py). A study with variants gets a
variant table per dataset instead of the size table: metric, parameters, step time and peak
memory per variant.

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
from .costs import PEAK_MEMORY_KINDS
from .grid import Cell, cells, preset_params, variant_rows
from .pretraining import converted_steps
from .records import STUDY_FORMAT_VERSION, write_record

Key = Tuple[str, str, str, float, Optional[str]]
"""(dataset, preset, init, fraction, variant): one group of repeats over seeds; ``preset`` is the
backbone the cells ran (a variant's own preset where it names one), ``variant`` None without
variants."""


@dataclass(frozen=True)
class Summary:
    """The repeats of one group."""

    values: Tuple[float, ...]
    """The metric of each finished seed, in seed order."""
    seeds: Tuple[int, ...]
    """The seeds of ``values``."""
    step_time: Optional[float] = None
    """Mean over the repeats of the seconds per optimizer step (result ``step_time_s``); None
    when no repeat recorded it (results that predate it)."""
    peak_memory: Optional[float] = None
    """Mean over the repeats of the peak memory in GiB (result ``peak_memory_gb``)."""
    peak_memory_kind: Optional[str] = None
    """What ``peak_memory`` measures: ``cuda`` (GPU max allocated) or ``cpu`` (process peak RSS);
    ``mixed`` when the repeats differ."""

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


def _mean(values: Sequence[Any]) -> Optional[float]:
    values = [float(v) for v in values if _usable(v)]
    return sum(values) / len(values) if values else None


def aggregate(results: Sequence[Dict[str, Any]]) -> Dict[Key, Summary]:
    """Group cell results by (dataset, preset, init, fraction, variant); cells without a metric
    value are left out. Step time and peak memory are averaged over the group's repeats."""
    groups: Dict[Key, List[Dict[str, Any]]] = {}
    for r in results:
        if _usable(r.get("value")):
            key = (r["dataset"], r["preset"], r["init"], float(r["fraction"]), r.get("variant"))
            groups.setdefault(key, []).append(r)
    out = {}
    for key, group in groups.items():
        group = sorted(group, key=lambda r: int(r["seed"]))
        kinds = {r["peak_memory_kind"] for r in group if r.get("peak_memory_kind")}
        out[key] = Summary(tuple(float(r["value"]) for r in group), tuple(int(r["seed"]) for r in group),
                           step_time=_mean([r.get("step_time_s") for r in group]),
                           peak_memory=_mean([r.get("peak_memory_gb") for r in group]),
                           peak_memory_kind=(kinds.pop() if len(kinds) == 1 else "mixed") if kinds else None)
    return out


# New columns go last, so readers of older files keep their column positions.
CSV_FIELDS = ["dataset", "task", "metric", "preset", "params", "init", "fraction", "seed", "value", "best",
              "steps", "seconds", "world_size", "run_dir", "variant", "step_time_s", "peak_memory_gb",
              "peak_memory_kind"]
SUMMARY_FIELDS = ["dataset", "metric", "preset", "params", "init", "fraction", "n", "mean", "std", "min", "max",
                  "seeds", "variant", "step_time_s", "peak_memory_gb", "peak_memory_kind"]


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
    params = {p: preset_params(p) for p in study_presets(cfg)}
    metrics = {d.name: d.metric_name for d in cfg.datasets}
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for (dataset, preset, init, fraction, variant), s in sorted(summaries.items(),
                                                                    key=lambda kv: _order(cfg, kv[0])):
            writer.writerow(dict(dataset=dataset, metric=metrics.get(dataset), preset=preset, params=params.get(preset),
                                 init=init, fraction=fraction, n=s.n, mean=s.mean,
                                 std="" if s.std is None else s.std, min=min(s.values), max=max(s.values),
                                 seeds=" ".join(map(str, s.seeds)), variant=variant or "",
                                 step_time_s=_blank(s.step_time), peak_memory_gb=_blank(s.peak_memory),
                                 peak_memory_kind=s.peak_memory_kind or ""))
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


def study_presets(cfg: StudyConfig) -> List[str]:
    """Every backbone preset the study's cells run: the grid's, then the variants' own."""
    return list(dict.fromkeys([*cfg.presets, *(v.preset for v in cfg.variants.values() if v.preset)]))


def _blank(value: Optional[float]) -> Any:
    return "" if value is None else value


def _order(cfg: StudyConfig, key: Key) -> Tuple[int, int, int, int, int]:
    dataset, preset, init, fraction, variant = key
    names = [d.name for d in cfg.datasets]
    variants = list(cfg.variants)
    return (names.index(dataset), study_presets(cfg).index(preset),
            variants.index(variant) if variant in variants else -1, cfg.inits.index(init),
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
    both inits, the gain from pretraining; with variants a variant table instead
    (:func:`variant_table`); ``~`` marks differences within the spread; the missing cells and the
    stale ones (:func:`stale_results`) are listed at the end."""
    compared = ("in the variant table, from the first variant (the reference) with the same grid preset, "
                "initialisation and fraction" if cfg.variants else
                "in the size table, from the next smaller preset with the same initialisation and fraction")
    lines = [f"# Study {cfg.name}", "",
             f"{complete} of {complete + len(missing)} cells complete. Entries: the final evaluation's metric, "
             f"mean ± sample standard deviation over seeds {cfg.seeds} (n shown where seeds are missing). "
             "`~` marks a difference smaller than the spread (the larger of the two standard deviations): "
             f"{compared}; in the pretraining table, between pretrained and scratch.", ""]
    fractions = cfg.train_fractions
    header = " | ".join(f"{f:g} of train" for f in fractions)
    for d in cfg.datasets:
        if cfg.variants:
            lines += [f"## {d.name} ({d.task}, {d.metric_name})", ""] + variant_table(cfg, d.name, summaries, params)
            lines += _plot_lines(plots, d.name, out)
            continue
        lines += [f"## {d.name} ({d.task}, {d.metric_name})", "",
                  f"| preset | params (M) | init | {header} |", "|---|---:|---|" + "---:|" * len(fractions)]
        for i, preset in enumerate(cfg.presets):
            for init in cfg.inits:
                row = []
                for f in fractions:
                    s = summaries.get((d.name, preset, init, f, None))
                    below = summaries.get((d.name, cfg.presets[i - 1], init, f, None)) if i else None
                    row.append(_entry(s, len(cfg.seeds)) + (_mark(within_spread(s, below)) if s and below else ""))
                lines.append(f"| {preset} | {params[preset] / 1e6:.2f} | {init} | " + " | ".join(row) + " |")
        lines.append("")
        if len(cfg.inits) == 2:
            lines += ["Gain from pretraining (pretrained - scratch):", "", f"| preset | {header} |",
                      "|---|" + "---:|" * len(fractions)]
            for preset in cfg.presets:
                row = []
                for f in fractions:
                    a, b = (summaries.get((d.name, preset, init, f, None)) for init in ("pretrained", "scratch"))
                    row.append("missing" if a is None or b is None
                               else f"{a.mean - b.mean:+.2f}" + _mark(within_spread(a, b)))
                lines.append(f"| {preset} | " + " | ".join(row) + " |")
            lines.append("")
        lines += _plot_lines(plots, d.name, out)
    if missing:
        lines += ["## Missing cells", ""] + [f"- cell {c.index}: {c.name}" for c in missing] + [""]
    if stale:
        lines += ["## Stale cells", "", "Fine-tuned from an earlier conversion of their preset's backbone "
                  "(pretraining has gone further since); delete their run_dir and run them again:", ""]
        lines += [f"- cell {r['cell']}: {r['run_dir']} (pretraining step {r.get('pretrain_steps')})" for r in stale]
        lines.append("")
    return "\n".join(lines)


def _plot_lines(plots: List[Path], dataset: str, out: Path) -> List[str]:
    lines = []
    for plot in plots:
        if plot.name.startswith(f"{dataset}_"):
            lines += [f"![{plot.stem}]({plot.relative_to(out)})", ""]
    return lines


def _cost(groups: Sequence[Optional[Summary]], attr: str) -> Optional[float]:
    values = [getattr(s, attr) for s in groups if s is not None and getattr(s, attr) is not None]
    return sum(values) / len(values) if values else None


def variant_table(cfg: StudyConfig, dataset: str, summaries: Dict[Key, Summary], params: Dict[str, int]) -> List[str]:
    """Markdown lines of ``dataset``'s variant table: a row per (grid preset, variant, init), the
    metric per fraction (``~`` against the first variant of the same grid preset), the
    parameters of the backbone the variant runs, and its step time and peak memory (means over
    all the row's cells: both are per step, whatever the fraction); then, with both inits, the
    gain from pretraining per variant."""
    fractions = cfg.train_fractions
    rows = variant_rows(cfg, dataset)
    found = {s.peak_memory_kind for k, s in summaries.items() if k[0] == dataset and s.peak_memory_kind}
    kind = PEAK_MEMORY_KINDS.get(found.pop(), "mixed") if len(found) == 1 else ("mixed" if found else "-")
    header = " | ".join(f"{f:g} of train" for f in fractions)
    lines = [f"| variant | preset | params (M) | init | {header} | step time (s) | peak memory (GiB, {kind}) |",
             "|---|---|---:|---|" + "---:|" * len(fractions) + "---:|---:|"]
    for grid_preset, variant, preset in rows:
        reference = next(r for r in rows if r[0] == grid_preset)
        for init in cfg.inits:
            row, groups = [], []
            for f in fractions:
                s = summaries.get((dataset, preset, init, f, variant))
                base = summaries.get((dataset, reference[2], init, f, reference[1]))
                groups.append(s)
                mark = _mark(within_spread(s, base)) if s and base and reference[1] != variant else ""
                row.append(_entry(s, len(cfg.seeds)) + mark)
            memory = _cost(groups, "peak_memory")
            lines.append(f"| {variant} | {preset} | {params[preset] / 1e6:.2f} | {init} | " + " | ".join(row)
                         + f" | {fmt3(_cost(groups, 'step_time'))} | {fmt(memory)} |")
    lines.append("")
    if len(cfg.inits) == 2:
        lines += ["Gain from pretraining (pretrained - scratch):", "", f"| variant | preset | {header} |",
                  "|---|---|" + "---:|" * len(fractions)]
        for _, variant, preset in rows:
            row = []
            for f in fractions:
                a, b = (summaries.get((dataset, preset, init, f, variant)) for init in ("pretrained", "scratch"))
                row.append("missing" if a is None or b is None
                           else f"{a.mean - b.mean:+.2f}" + _mark(within_spread(a, b)))
            lines.append(f"| {variant} | {preset} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def fmt3(value: Optional[float]) -> str:
    """Seconds to three significant digits (step times span milliseconds to seconds)."""
    return "-" if value is None else f"{value:.3g}"


__all__ = ["Summary", "within_spread", "aggregate", "collect", "markdown", "variant_table",
           "study_presets", "fmt", "stale_results"]
