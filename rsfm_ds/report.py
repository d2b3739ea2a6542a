"""A short markdown report of a pipeline run: pretraining curve, fine-tuning losses (the total and
each component the model returns, e.g. Oriented R-CNN's ``loss_rpn_cls``, ``loss_rpn_bbox``,
``loss_cls``, ``loss_bbox``), evaluations, and ground truth beside prediction for a few held-out
images.

Reads only files the stages write (``metrics.jsonl``, ``eval/step_*.json``, the run's
``config.yaml`` and its saved predictions), so it can be run on any set of run directories after
the fact: ``rsfm report --out report.md --pretrain DIR --finetune NAME=DIR ...``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import UserError
from .report_overlays import OverlayOptions, run_overlays


def read_metrics(run_dir: Path) -> Dict[int, Dict[str, float]]:
    """``step -> values`` from ``metrics.jsonl``: the lines of one step merged (a step that logs
    training and evaluates writes two lines), later values of a key winning (a resumed run that
    repeats a step)."""
    out: Dict[int, Dict[str, float]] = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out.setdefault(int(record.pop("step")), {}).update(record)
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


def _loss_lines(name: str, metrics: Dict[int, Dict[str, float]], out: Path) -> List[str]:
    """The total training loss and its components (every ``train/loss_<part>`` the engine logged:
    the loss dict the model returns, averaged over each logging window) as one plot, with the
    first and last logged value of each in a table."""
    # The loss dict's keys are ``loss`` and ``loss_<part>``; an fp16 run's ``loss_scale`` is no loss.
    keys = sorted({k for v in metrics.values() for k in v if k.startswith("train/loss") and k != "train/loss_scale"},
                  key=lambda k: (k != "train/loss", k))
    if "train/loss" not in keys:
        return []
    curves = []
    for key in keys:
        steps = sorted(s for s, v in metrics.items() if v.get(key) is not None)
        curves.append((key.split("/", 1)[1], steps, [metrics[s][key] for s in steps]))
    _plot(curves, "loss", out.parent / f"{name}_loss.png")
    lines = [f"![{name} loss]({name}_loss.png)", ""]
    if len(curves) > 1:
        lines += ["| loss | first step | first value | last step | last value |", "|---|---|---|---|---|"]
        lines += [f"| {label} | {xs[0]} | {ys[0]:.4f} | {xs[-1]} | {ys[-1]:.4f} |" for label, xs, ys in curves]
        lines.append("")
    return lines


def _overlay_lines(name: str, run_dir: Path, out: Path, options: OverlayOptions) -> List[str]:
    """Held-out pictures of a run, or one line saying why there are none (the report is still
    written when the run's data has moved or its predictions were not saved)."""
    try:
        overlays = run_overlays(run_dir, out.parent, name, options)
    except UserError as e:
        return [f"No held-out overlays: {e}", ""]
    if not overlays:
        return []
    lines = ["### Held-out images", ""]
    for overlay in overlays:
        lines += [f"{overlay.caption}", "", f"![{name} {overlay.image_id}]({overlay.path.name})", ""]
    return lines


def write_report(out: Path, pretrain: Optional[Path], finetunes: Dict[str, Path],
                 independent: Optional[Dict[str, Path]] = None,
                 overlays: Optional[OverlayOptions] = OverlayOptions()) -> Path:
    """Write ``out`` (markdown) and its PNG plots and overlays beside it; returns ``out``.

    ``independent`` maps a fine-tuning name to the ``--json`` of an ``rsfm eval`` run on that
    run's saved predictions; its headline metrics are shown beside the engine's own.
    ``overlays`` says which held-out pictures to draw for each fine-tuning run
    (:mod:`rsfm_ds.report_overlays`); None: none.
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
        lines += [f"## Fine-tuning: {name}", "", f"Run: `{run_dir}`", ""]
        lines += _loss_lines(name, read_metrics(run_dir), out)
        result = last_eval(run_dir)
        if result is None:
            lines += ["No evaluation found.", ""]
            continue
        check_path = Path(independent[name]) if name in independent else None
        check = json.loads(check_path.read_text()) if check_path is not None else {}
        lines += _evaluation_lines(name, result, check, check_path, out)
        if overlays is not None:
            lines += _overlay_lines(name, run_dir, out, overlays)
    out.write_text("\n".join(lines) + "\n")
    return out


__all__ = ["OverlayOptions", "last_eval", "read_metrics", "write_report"]
