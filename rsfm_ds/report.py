"""A short markdown report of a pipeline run: pretraining curve, fine-tuning evaluations, plots.

Reads only files the stages write (``metrics.jsonl``, ``eval/step_*.json``), so it can be run on
any set of run directories after the fact: ``rsfm report --out report.md --pretrain DIR
--finetune NAME=DIR ...``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


def read_metrics(run_dir: Path) -> Dict[int, Dict[str, float]]:
    """``step -> values`` from ``metrics.jsonl`` (later lines of a resumed run win)."""
    out: Dict[int, Dict[str, float]] = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out[int(record.pop("step"))] = record
    return out


def last_eval(run_dir: Path) -> Optional[Dict[str, float]]:
    evals = sorted((run_dir / "eval").glob("step_*.json"))
    return json.loads(evals[-1].read_text()) if evals else None


def _plot(curves: Sequence[Tuple[str, List[int], List[float]]], ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, xs, ys in curves:
        ax.plot(xs, ys, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bar(values: Dict[str, float], ylabel: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(values), list(values.values()))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _num(value: float) -> str:
    """Counts as integers, metrics to 4 significant digits (mAP is a fraction, mIoU a percentage)."""
    return f"{int(value):d}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4g}"


def write_report(out: Path, pretrain: Optional[Path], finetunes: Dict[str, Path],
                 independent: Optional[Dict[str, Path]] = None) -> Path:
    """Write ``out`` (markdown) and its PNG plots beside it; returns ``out``.

    ``independent`` maps a fine-tuning name to the ``--json`` of an ``rsfm eval`` run on that
    run's saved predictions; its headline metrics are shown beside the engine's own.
    """
    independent = independent or {}
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# rsfm-ds run report", ""]
    if pretrain is not None:
        metrics = read_metrics(pretrain)
        steps = sorted(k for k, v in metrics.items() if "train/loss" in v)
        if steps:
            losses = [metrics[s]["train/loss"] for s in steps]
            _plot([("MAE loss", steps, losses)], "loss", out.parent / "pretrain_loss.png")
            ips = [metrics[s].get("perf/images_per_s") for s in steps if metrics[s].get("perf/images_per_s")]
            lines += ["## Pretraining", "", f"Run: `{pretrain}`", "",
                      "| first step | first loss | last step | last loss | images/s (last window) |",
                      "|---|---|---|---|---|",
                      f"| {steps[0]} | {losses[0]:.4f} | {steps[-1]} | {losses[-1]:.4f} | "
                      f"{ips[-1] if ips else float('nan'):.1f} |", "", "![MAE loss](pretrain_loss.png)", ""]
    for name, run_dir in finetunes.items():
        metrics = read_metrics(run_dir)
        steps = sorted(k for k, v in metrics.items() if "train/loss" in v)
        lines += [f"## Fine-tuning: {name}", "", f"Run: `{run_dir}`", ""]
        if steps:
            _plot([("loss", steps, [metrics[s]["train/loss"] for s in steps])], "loss",
                  out.parent / f"{name}_loss.png")
            lines += [f"![{name} loss]({name}_loss.png)", ""]
        result = last_eval(run_dir)
        if result is None:
            lines += ["No evaluation found.", ""]
            continue
        scalars = {k: v for k, v in result.items() if isinstance(v, (int, float)) and "/" not in k and k != "step"}
        check = json.loads(Path(independent[name]).read_text()) if name in independent else {}
        header = f"| metric (step {result.get('step', '?')}) | value |"
        if check:
            header += f" `rsfm eval` on the saved predictions ({independent[name]}) |"
        lines += [header, "|---|---|" + ("---|" if check else "")]
        for k, v in scalars.items():
            other = check.get(k)
            cell = f" {_num(other)} |" if isinstance(other, (int, float)) else (" |" if check else "")
            lines.append(f"| {k} | {_num(v)} |{cell}")
        lines.append("")
        per_class = {k.split("/", 1)[1]: v for k, v in result.items() if "/" in k and isinstance(v, (int, float))}
        if per_class:
            kind = next(k for k in result if "/" in k).split("/")[0]
            _bar(per_class, kind, f"{name}: per-class {kind}", out.parent / f"{name}_per_class.png")
            lines += ["| class | " + kind + " |", "|---|---|"]
            lines += [f"| {c} | {_num(v)} |" for c, v in per_class.items()]
            lines += ["", f"![{name} per class]({name}_per_class.png)", ""]
    out.write_text("\n".join(lines) + "\n")
    return out
