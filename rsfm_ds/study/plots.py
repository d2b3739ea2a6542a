"""The study's plots: metric vs parameters and vs training fraction, mean with error bars."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from .config import StudyConfig

# Pretrained solid, scratch dashed: the two initialisations of one size share a colour.
STYLE = {"pretrained": "-", "scratch": "--"}


def plot_study(cfg: StudyConfig, summaries, params: Dict[str, int], plot_dir: Path) -> List[Path]:
    """Per dataset: ``<dataset>_vs_params.png`` (a line per fraction and init) and
    ``<dataset>_vs_fraction.png`` (data efficiency: a line per preset and init); error bars are
    one standard deviation over seeds."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for d in cfg.datasets:
        if not any(k[0] == d.name for k in summaries):
            continue
        by_fraction, by_preset = {}, {}
        for init in cfg.inits:
            for f in cfg.train_fractions:
                by_fraction[(f"{f:g} of train, {init}", init)] = [
                    _point(params[p], summaries[(d.name, p, init, f)]) for p in cfg.presets
                    if (d.name, p, init, f) in summaries]
            for p in cfg.presets:
                by_preset[(f"{p} ({params[p] / 1e6:.2f}M), {init}", init)] = [
                    _point(f, summaries[(d.name, p, init, f)]) for f in cfg.train_fractions
                    if (d.name, p, init, f) in summaries]
        written.append(_errorbar_plot(by_fraction, "backbone parameters", d.metric_name,
                                      f"{cfg.name}: {d.name} vs parameters", plot_dir / f"{d.name}_vs_params.png",
                                      tick_label=lambda x: f"{x / 1e6:.3g}M"))
        written.append(_errorbar_plot(by_preset, "fraction of the training set", d.metric_name,
                                      f"{cfg.name}: {d.name} vs training data", plot_dir / f"{d.name}_vs_fraction.png"))
    return written


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


__all__ = ["plot_study"]
