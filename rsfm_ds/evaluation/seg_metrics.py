"""Semantic-segmentation metrics with the semantics of mmseg's ``IoUMetric`` (docs/segmentation_data.md).

Areas are summed over the whole dataset, not averaged per image: a confusion matrix
``conf[label, pred]`` (``int64 [K, K]``) is accumulated with one ``torch.bincount`` of
``label * K + pred`` over the non-ignored pixels of every image. From it, per class ``c``:

- ``I = conf[c, c]`` (intersection), ``P = conf[:, c].sum()`` (predicted area),
  ``L = conf[c, :].sum()`` (label area);
- IoU = I / (P + L - I), Acc = I / L, precision = I / P, recall = I / L,
  F1 = 2 * precision * recall / (precision + recall);
- aAcc (overall accuracy, OA) = sum(I) / sum(L);
- mIoU, mAcc, mF1: ``nanmean`` over classes.

A 0/0 is NaN, exactly as in mmseg, and NaN classes drop out of the means. Two edge cases follow
and are kept for comparability with published mmseg numbers: a class absent from the labels
(L = 0) but predicted has IoU 0 (counted in mIoU) and F1 NaN (not counted in mF1); a class
present in the labels but never predicted (P = 0) has IoU 0 and, because its precision is 0/0,
F1 NaN as well. On a full test set every class is present and predicted, so neither occurs.

``reduce_zero_label`` (:func:`~rsfm_ds.data.seg.labels.apply_reduce_zero_label`) is mmseg's rule
for datasets whose label 0 means "no data" (LoveDA): label 0 becomes the ignore index and every
other label ``v`` becomes ``v - 1``. It applies to labels, never to predictions, which are already
in the reduced class space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import ConfigError, DataError, few
from ..data.seg.labels import apply_reduce_zero_label, read_index_png


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = 255, reduce_zero_label: bool = False,
                     source: str = "") -> torch.Tensor:
    """Confusion matrix ``int64 [K, K]``, rows = label, columns = prediction, ignore pixels dropped.

    Args:
        pred: predicted class per pixel, integer tensor of any shape, values in ``[0, K)``.
        label: ground truth of the same shape; values in ``[0, K)`` or ``ignore_index``
            (before reduction when ``reduce_zero_label``).
        num_classes: K.
        ignore_index: label value that is not scored.
        reduce_zero_label: apply :func:`apply_reduce_zero_label` to ``label`` first.
        source: name of the image, used in error messages.

    Raises:
        DataError: shapes differ, or a prediction / label value lies outside its range (the
            message names ``source`` and the value).
    """
    where = f" in {source}" if source else ""
    if pred.shape != label.shape:
        raise DataError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}{where}")
    label = label.long()
    pred = pred.long()
    if reduce_zero_label:
        label = apply_reduce_zero_label(label, ignore_index)
    keep = label != ignore_index
    label, pred = label[keep], pred[keep]
    bad_label = (label < 0) | (label >= num_classes)
    if bool(bad_label.any()):
        raise DataError(f"label value {int(label[bad_label][0])} outside [0, {num_classes}) and not the "
                        f"ignore index {ignore_index}{where}")
    bad_pred = (pred < 0) | (pred >= num_classes)
    if bool(bad_pred.any()):
        raise DataError(f"prediction value {int(pred[bad_pred][0])} outside [0, {num_classes}){where}")
    counts = torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegResult:
    """Metrics of one evaluation, as fractions in [0, 1] (NaN where undefined, see module doc)."""

    class_names: List[str]
    iou: List[float]
    acc: List[float]
    f1: List[float]
    precision: List[float]
    recall: List[float]
    aAcc: float
    mIoU: float
    mAcc: float
    mF1: float
    pixels: int
    """Number of scored (non-ignored) pixels."""

    def to_json(self) -> Dict[str, object]:
        """``{"aAcc", "mIoU", "mAcc", "mF1", "IoU": {name: v}, "Acc": {...}, "F1": {...}, "pixels",
        "notes"}`` in percent.

        NaN becomes ``null`` so that the result is valid JSON; ``notes`` says why
        (:func:`undefined_notes`).
        """
        def pct(v: float) -> Optional[float]:
            return None if math.isnan(v) else round(100.0 * v, 4)

        return {
            "aAcc": pct(self.aAcc), "mIoU": pct(self.mIoU), "mAcc": pct(self.mAcc), "mF1": pct(self.mF1),
            "IoU": {n: pct(v) for n, v in zip(self.class_names, self.iou)},
            "Acc": {n: pct(v) for n, v in zip(self.class_names, self.acc)},
            "F1": {n: pct(v) for n, v in zip(self.class_names, self.f1)},
            "pixels": self.pixels,
            "notes": undefined_notes(self),
        }


MEAN_OF = {"IoU": "mIoU", "Acc": "mAcc", "F1": "mF1"}
"""The mean over classes that each per-class metric enters."""


def undefined_notes(result: SegResult) -> List[str]:
    """One line per metric that is undefined (0/0, NaN) for some classes: which classes, why, and
    that its mean leaves them out (mmseg's ``nanmean``). Empty when every value is defined.

    E.g. ``F1 n/a for car (never predicted): mF1 is the mean of the other 4 classes``.
    """
    def why(i: int) -> str:
        absent, unpredicted = math.isnan(result.recall[i]), math.isnan(result.precision[i])
        if absent and unpredicted:
            return "neither in the labels nor predicted"
        return "not in the labels" if absent else "never predicted"

    notes = []
    for kind, values in (("IoU", result.iou), ("Acc", result.acc), ("F1", result.f1)):
        undefined = [i for i, v in enumerate(values) if math.isnan(v)]
        if undefined:
            classes = ", ".join(f"{result.class_names[i]} ({why(i)})" for i in undefined)
            rest = len(values) - len(undefined)
            notes.append(f"{kind} n/a for {classes}: {MEAN_OF[kind]} is the mean of the other {rest} "
                         f"class{'es' if rest != 1 else ''}")
    return notes


def eval_record(result: SegResult) -> Dict[str, object]:
    """The flat record of one evaluation, in percent: ``aAcc``, ``mIoU``, ``mAcc``, ``mF1``,
    ``pixels``, ``IoU/<class>``, ``Acc/<class>``, ``F1/<class>`` (None where undefined) and
    ``notes`` (:func:`undefined_notes`)."""
    report = result.to_json()
    record: Dict[str, object] = {k: report[k] for k in ("aAcc", "mIoU", "mAcc", "mF1", "pixels")}
    for kind in MEAN_OF:
        record.update({f"{kind}/{name}": v for name, v in report[kind].items()})
    record["notes"] = undefined_notes(result)
    return record


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


def metrics_from_confusion(conf: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> SegResult:
    """Per-class and mean metrics from a ``[K, K]`` confusion matrix (rows label, columns prediction)."""
    if conf.dim() != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be [K, K], got {tuple(conf.shape)}")
    k = conf.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else list(class_names)
    if len(names) != k:
        raise ValueError(f"class_names: {len(names)} names for {k} classes")
    conf = conf.double().cpu()
    inter = conf.diag()
    pred_area = conf.sum(0)
    label_area = conf.sum(1)
    # Plain divisions: 0/0 gives NaN exactly where mmseg's does.
    iou = inter / (pred_area + label_area - inter)
    acc = inter / label_area
    precision = inter / pred_area
    recall = acc
    f1 = 2 * precision * recall / (precision + recall)
    total = label_area.sum()
    return SegResult(
        class_names=names, iou=iou.tolist(), acc=acc.tolist(), f1=f1.tolist(),
        precision=precision.tolist(), recall=recall.tolist(),
        aAcc=float(inter.sum() / total) if total > 0 else float("nan"),
        mIoU=_nanmean(iou), mAcc=_nanmean(acc), mF1=_nanmean(f1), pixels=int(total))


class SegMetric:
    """Accumulates a dataset-wide confusion matrix image by image; :meth:`compute` gives the metrics.

    Args:
        num_classes: K.
        ignore_index: label value that is not scored.
        reduce_zero_label: apply :func:`apply_reduce_zero_label` to every label (LoveDA raw masks).
        class_names: K names for reports; default ``"0".."K-1"``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, reduce_zero_label: bool = False,
                 class_names: Optional[Sequence[str]] = None):
        if num_classes < 1:
            raise ConfigError(f"num_classes: must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"class_names: {len(class_names)} names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.class_names = None if class_names is None else list(class_names)
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor, source: str = "") -> None:
        """Add one image (or a batch: any matching shapes) of predicted and true class indices."""
        conf = confusion_matrix(pred, label, self.num_classes, self.ignore_index, self.reduce_zero_label, source)
        self.conf += conf.cpu()

    def merge(self, conf: torch.Tensor) -> None:
        """Add a confusion matrix accumulated elsewhere (e.g. all-reduced over data-parallel ranks)."""
        self.conf += conf.to(self.conf)

    def compute(self) -> SegResult:
        return metrics_from_confusion(self.conf, self.class_names)


def evaluate_dirs(pred_dir: Union[str, Path], label_dir: Union[str, Path], num_classes: int,
                  ignore_index: int = 255, reduce_zero_label: bool = False,
                  class_names: Optional[Sequence[str]] = None) -> SegResult:
    """Score the index PNGs in ``pred_dir`` against the same-named index PNGs in ``label_dir``.

    Every ``*.png`` in ``label_dir`` must have a prediction; extra prediction files are ignored.

    Raises:
        DataError: a directory is missing, holds no label PNG, or predictions are missing
            (the message names up to 10 of them and the count).
        DataError: unreadable or multi-channel file, shape mismatch or value out of range (named).
    """
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    for d, what in ((pred_dir, "prediction"), (label_dir, "label")):
        if not d.is_dir():
            raise DataError(f"{what} directory {d} does not exist")
    labels = sorted(label_dir.glob("*.png"))
    if not labels:
        raise DataError(f"no *.png label files in {label_dir}")
    missing = [p.name for p in labels if not (pred_dir / p.name).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(labels)} predictions missing in {pred_dir}: {few(missing, 10)}")
    metric = SegMetric(num_classes, ignore_index, reduce_zero_label, class_names)
    for label_path in labels:
        pred_path = pred_dir / label_path.name
        pred = torch.from_numpy(read_index_png(pred_path).astype(np.int64))
        label = torch.from_numpy(read_index_png(label_path).astype(np.int64))
        metric.update(pred, label, source=f"{pred_path} / {label_path}")
    return metric.compute()


def format_result(result: SegResult) -> str:
    """A plain-text table: per-class IoU / Acc / F1, then aAcc (OA), mIoU, mAcc, mF1, in percent;
    ``n/a`` where a metric is undefined, with a line saying why and what the mean leaves out."""
    def pct(v: float) -> str:
        return "   n/a" if math.isnan(v) else f"{100 * v:6.2f}"

    width = max(5, *(len(n) for n in result.class_names))
    lines = [f"{'class':<{width}}    IoU    Acc     F1"]
    for n, iou, acc, f1 in zip(result.class_names, result.iou, result.acc, result.f1):
        lines.append(f"{n:<{width}} {pct(iou)} {pct(acc)} {pct(f1)}")
    lines.append(f"aAcc (OA) {pct(result.aAcc)}  mIoU {pct(result.mIoU)}  mAcc {pct(result.mAcc)}  "
                 f"mF1 {pct(result.mF1)}  ({result.pixels} pixels)")
    lines += undefined_notes(result)
    return "\n".join(lines)
