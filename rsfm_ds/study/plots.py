"""The study's plots: metric vs parameters and vs training fraction, mean with error bars; with
variants, the metric, step time and peak memory per variant."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from .config import StudyConfig
from .costs import PEAK_MEMORY_KINDS
from .grid import variant_rows

# Pretrained solid, scratch dashed: the two initialisations of one size share a colour.
STYLE = {"pretrained": "-", "scratch": "--"}


def plot_study(cfg: StudyConfig, summaries, params: Dict[str, int], plot_dir: Path) -> List[Path]:
    """Per dataset: ``<dataset>_vs_params.png`` (a line per fraction and init) and
    ``<dataset>_vs_fraction.png`` (data efficiency: a line per preset and init); with variants
    ``<dataset>_variants.png`` instead (:func:`plot_variants`). Error bars are one standard
    deviation over seeds."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for d in cfg.datasets:
        if not any(k[0] == d.name for k in summaries):
            continue
        if cfg.variants:
            written.append(plot_variants(cfg, d.name, d.metric_name, summaries, plot_dir / f"{d.name}_variants.png"))
            continue
        by_fraction, by_preset = {}, {}
        for init in cfg.inits:
            for f in cfg.train_fractions:
                by_fraction[(f"{f:g} of train, {init}", init)] = [
                    _point(params[p], summaries[(d.name, p, init, f, None)]) for p in cfg.presets
                    if (d.name, p, init, f, None) in summaries]
            for p in cfg.presets:
                by_preset[(f"{p} ({params[p] / 1e6:.2f}M), {init}", init)] = [
                    _point(f, summaries[(d.name, p, init, f, None)]) for f in cfg.train_fractions
                    if (d.name, p, init, f, None) in summaries]
        written.append(_errorbar_plot(by_fraction, "backbone parameters", d.metric_name,
                                      f"{cfg.name}: {d.name} vs parameters", plot_dir / f"{d.name}_vs_params.png",
                                      tick_label=lambda x: f"{x / 1e6:.3g}M"))
        written.append(_errorbar_plot(by_preset, "fraction of the training set", d.metric_name,
                                      f"{cfg.name}: {d.name} vs training data", plot_dir / f"{d.name}_vs_fraction.png"))
    return written


def plot_variants(cfg: StudyConfig, dataset: str, metric: str, summaries, path: Path) -> Path:
    """One PNG of three panels over the variants of ``dataset`` (x: ``variant`` or
    ``preset/variant`` with several grid presets): the metric (a bar per init and fraction, error
    bar one standard deviation over seeds), seconds per step and peak memory (means over the
    variant's cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = variant_rows(cfg, dataset)
    labels = [v if len(cfg.presets) == 1 else f"{g}/{v}" for g, v, _ in rows]
    series = [(init, f) for init in cfg.inits for f in cfg.train_fractions]
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for j, (init, f) in enumerate(series):
        groups = [summaries.get((dataset, p, init, f, v)) for _, v, p in rows]
        axes[0].bar(x + (j - (len(series) - 1) / 2) * width, [s.mean if s else np.nan for s in groups], width,
                    yerr=[(s.std or 0.0) if s else 0.0 for s in groups], capsize=3,
                    label=f"{init}, {f:g} of train", hatch="" if init == "pretrained" else "//")
    costs = {}
    for attr in ("step_time", "peak_memory"):
        values = []
        for _, v, p in rows:
            got = [getattr(s, attr) for k, s in summaries.items()
                   if k[0] == dataset and k[1] == p and k[4] == v and getattr(s, attr) is not None]
            values.append(sum(got) / len(got) if got else np.nan)
        costs[attr] = values
    kinds = {s.peak_memory_kind for k, s in summaries.items() if k[0] == dataset and s.peak_memory_kind}
    kind = PEAK_MEMORY_KINDS.get(next(iter(kinds)), "mixed") if len(kinds) == 1 else "mixed"
    axes[1].bar(x, costs["step_time"], 0.6, color="C2")
    axes[2].bar(x, costs["peak_memory"], 0.6, color="C3")
    for ax, ylabel in zip(axes, (metric, "seconds per step", f"peak memory (GiB, {kind})")):
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{cfg.name}: {dataset} per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _point(x: float, s) -> Tuple[float, float, float]:
    return (x, s.mean, s.std or 0.0)


def _errorbar_plot(lines: Dict[Tuple[str, str], List[Tuple[float, float, float]]], xlabel: str, ylabel: str,
                   title: str, path: Path, tick_label=lambda x: f"{x:g}") -> Path:
    """One PNG with a log-x line per non-empty series of ``(x, mean, std)`` points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = {}
    for (label, init), pts in lines.items():
        if not pts:
            continue
        series = label.rsplit(", ", 1)[0]  # one colour per size or fraction, both inits
        colour = colours.setdefault(series, f"C{len(colours) % 10}")
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, linestyle=STYLE[init], color=colour, label=label)
    ax.set_xscale("log")
    # Ticks at the grid's own values (0.01, 0.1, 1 / 86M, 605M), not at powers of ten.
    xs = sorted({p[0] for pts in lines.values() for p in pts})
    ax.set_xticks(xs, [tick_label(x) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["plot_study", "plot_variants"]
