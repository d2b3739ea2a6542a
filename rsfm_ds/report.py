"""A short markdown report of a pipeline run: pretraining curve, fine-tuning evaluations, plots.

Reads only files the stages write (``metrics.jsonl``, ``eval/step_*.json``), so it can be run on
any set of run directories after the fact: ``rsfm report --out report.md --pretrain DIR
--finetune NAME=DIR ...``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


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


def _num(value: Optional[float]) -> str:
    """Counts as integers, metrics to 4 significant digits (mAP is a fraction, mIoU a percentage);
    ``n/a`` for an undefined metric (None in the evaluation's JSON)."""
    if value is None:
        return "n/a"
    return f"{int(value):d}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4g}"


def _is_metric(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _per_class(result: Dict[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """``kind -> class -> value`` from an evaluation's ``<kind>/<class>`` keys, in their order."""
    kinds: Dict[str, Dict[str, Optional[float]]] = {}
    for key, value in result.items():
        if "/" in key and _is_metric(value):
            kind, name = key.split("/", 1)
            kinds.setdefault(kind, {})[name] = value
    return kinds


def _evaluation_lines(name: str, result: Dict[str, Any], check: Dict[str, Any], check_path: Optional[Path],
                      out: Path) -> List[str]:
    """Markdown of one evaluation: what it was computed on, the headline metrics (beside an
    independent ``rsfm eval`` when given), the per-class table with its plot, and why any value
    is n/a."""
    lines = [f"Evaluated on: {result['protocol']}", ""] if result.get("protocol") else []
    scalars = {k: v for k, v in result.items() if _is_metric(v) and "/" not in k and k != "step"}
    header = f"| metric (step {result.get('step', '?')}) | value |"
    if check:
        header += f" `rsfm eval` on the saved predictions ({check_path}) |"
    lines += [header, "|---|---|" + ("---|" if check else "")]
    for k, v in scalars.items():
        cell = ""
        if check:
            cell = f" {_num(check[k])} |" if k in check and _is_metric(check[k]) else " |"
        lines.append(f"| {k} | {_num(v)} |{cell}")
    lines.append("")
    kinds = _per_class(result)
    if kinds:
        first = next(iter(kinds))
        plotted = {c: v for c, v in kinds[first].items() if v is not None}
        _bar(plotted, first, f"{name}: per-class {first}", out.parent / f"{name}_per_class.png")
        classes = list(dict.fromkeys(c for values in kinds.values() for c in values))
        lines += ["| class | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        lines += [f"| {c} | " + " | ".join(_num(kinds[k].get(c)) for k in kinds) + " |" for c in classes]
        notes = [f"n/a: {note}" for note in result.get("notes", [])]
        lines += ([""] + notes if notes else []) + ["", f"![{name} per class]({name}_per_class.png)", ""]
    return lines


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
        check_path = Path(independent[name]) if name in independent else None
        check = json.loads(check_path.read_text()) if check_path is not None else {}
        lines += _evaluation_lines(name, result, check, check_path, out)
    out.write_text("\n".join(lines) + "\n")
    return out
