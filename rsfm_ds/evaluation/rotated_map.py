"""Rotated-box mean average precision: DOTA devkit Task 1 semantics, mmrotate's variant, DIOR-R.

Why our own: the DOTA devkit needs a compiled ``polyiou`` extension and loops in Python over
boxes; mmrotate's ``eval_rbbox_map`` needs mmcv's compiled ops (docs/rotated_ops.md). This
module computes the same numbers with the exact polygon IoU of :mod:`rsfm_ds.ops.rotated`.

Per class (docs/detection_data.md, ``rsfm eval det``; the defaults are the devkit's):

1. ``npos`` = number of ground-truth objects that are not difficult (all of them when
   ``ignore_difficult=False``, as mmrotate's DOTA loader keeps difficult objects).
2. Detections are ranked by decreasing score. Ties keep the order of the input (the order of
   the lines in the Task1 file): the sort is stable. The devkit and mmrotate use numpy's default
   unstable sort, whose tie order is unspecified; a stable sort makes the result reproducible.
3. Each detection takes the ground truth of its image with the highest IoU (exact polygon
   IoU; the first one on equal IoU). It is a true positive when that IoU is above the threshold
   (``> 0.5``; ``>= 0.5`` with ``inclusive=True``, mmrotate) and that object is not difficult
   and not yet taken by a higher-ranked detection; a detection whose best object is difficult is
   neither TP nor FP (when ``ignore_difficult``); every other detection is a false positive.
4. recall = cumTP / npos, precision = cumTP / max(cumTP + cumFP, eps).
5. AP: ``'voc07'``, the 11-point mean over ``t in np.arange(0, 1.1, 0.1)`` of the highest
   precision at recall ``>= t`` (0 when none), or ``'area'``, the area under the precision
   envelope (VOC 2010+, mmrotate's ``mode='area'``). The thresholds are the devkit's floats
   exactly, e.g. 0.30000000000000004, so a recall of exactly 3/10 does not reach "0.3".
6. A class without objects counted in ``npos`` has no AP (NaN, null in JSON) and is left out
   of the mean, as in mmrotate; a class with objects but no detections has AP 0.

Step 3 looks sequential, but a detection never falls back to its second-best object, so the
greedy pass reduces to: among the ranked detections above the threshold whose best object is not
difficult, the first one per object is a TP and the others are FPs. That is computed with one
``np.unique`` per class; the IoU rows are computed per image, detections x objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch

from ..data.det.dior import DIOR_CLASSES, load_dior_annotations
from ..data.det.dota import DOTA_CLASS_LISTS, TASK1_PREFIX, Detections, load_dota_labels, read_task1_dir
from ..errors import ConfigError, DataError, few
from ..ops.rotated import polygon_iou

PathLike = Union[str, Path]
METRICS = ("voc07", "area")
DATASETS = ("dota2", "dota1.5", "dota1", "dior")
# The devkit's 11 recall thresholds, float for float (np.arange accumulates rounding error).
VOC07_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


@dataclass(frozen=True)
class MapProtocol:
    """How detections are matched and AP is computed.

    Attributes:
        iou_thr: IoU threshold of a true positive.
        inclusive: TP needs ``IoU >= iou_thr`` (mmrotate) instead of ``IoU > iou_thr`` (devkit).
        ignore_difficult: difficult objects are left out of ``npos`` and a detection matched to
            one counts as neither TP nor FP (devkit); False counts them as ordinary objects
            (mmrotate's DOTA loader).
        metric: ``'voc07'`` (11-point) or ``'area'``.
    """

    iou_thr: float = 0.5
    inclusive: bool = False
    ignore_difficult: bool = True
    metric: str = "voc07"

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_thr <= 1.0:
            raise ConfigError(f"iou_thr: must be in [0, 1], got {self.iou_thr}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric: expected one of {', '.join(METRICS)}, got {self.metric!r}")

    def describe(self) -> str:
        """One line, e.g. ``IoU > 0.5, difficult ignored, voc07 AP``."""
        op = ">=" if self.inclusive else ">"
        diff = "difficult ignored" if self.ignore_difficult else "difficult counted"
        return f"IoU {op} {self.iou_thr:g}, {diff}, {self.metric} AP"


DEVKIT = MapProtocol()
"""DOTA devkit Task 1 (and DIOR-R): IoU > 0.5, difficult ignored, VOC07 11-point AP."""
MMROTATE = MapProtocol(inclusive=True, ignore_difficult=False, metric="voc07")
"""mmrotate's ``eval_rbbox_map`` on its DOTA loader: IoU >= 0.5, difficult counted."""


class GroundTruth(Protocol):
    """What the evaluation needs of one image's objects (``DotaAnnotation``, ``DiorAnnotation``)."""

    polygons: np.ndarray  # [N, 8]
    labels: np.ndarray  # int [N], indices into the class list
    difficult: np.ndarray  # int [N], >= 1 = difficult


@dataclass
class ClassResult:
    """The evaluation of one class. Arrays are in rank order (decreasing score, stable).

    Attributes:
        ap: average precision, NaN when ``num_gts == 0``.
        num_gts: ``npos``: objects counted for recall.
        num_dets: detections of the class.
        tp, fp: ``float64 [num_dets]`` 1 where the ranked detection is a TP / FP (both 0 for a
            detection of a difficult object).
        recall, precision: ``float64 [num_dets]`` cumulative curves (empty without detections).
    """

    ap: float
    num_gts: int
    num_dets: int
    tp: np.ndarray = field(repr=False)
    fp: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)


@dataclass
class MapResult:
    """mAP over classes, with the per-class results (in class order)."""

    mAP: float
    per_class: Dict[str, ClassResult]
    protocol: MapProtocol

    def ap(self) -> Dict[str, Optional[float]]:
        """``{class: AP}``, None where undefined."""
        return {c: (None if math.isnan(r.ap) else float(r.ap)) for c, r in self.per_class.items()}

    def to_json(self) -> dict:
        """``{"mAP": ..., "AP": {class: ...}, "num_gts": {...}, "num_dets": {...}, "protocol": ...,
        "notes": [...]}`` (:func:`undefined_ap_notes`)."""
        return {"mAP": None if math.isnan(self.mAP) else float(self.mAP), "AP": self.ap(),
                "num_gts": {c: r.num_gts for c, r in self.per_class.items()},
                "num_dets": {c: r.num_dets for c, r in self.per_class.items()},
                "protocol": self.protocol.describe(), "notes": undefined_ap_notes(self)}


def average_precision(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    """AP of one precision/recall curve ``[D]`` (rank order); see the module docstring, step 5."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if metric == "voc07":
        reached = recall[None, :] >= VOC07_THRESHOLDS[:, None]  # [11, D]
        best = np.where(reached, precision[None, :], 0.0).max(axis=1, initial=0.0)
        return float(best.sum() / len(VOC07_THRESHOLDS))
    if metric == "area":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
        step = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))
    raise ConfigError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` by decreasing value; equal scores keep their input order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _best_objects(dets: Detections, gts: Mapping[str, Tuple[np.ndarray, np.ndarray]]
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per detection: best IoU (-inf without objects), the best object's key and its difficulty.

    ``gts`` maps an image id to ``(polygons [G, 8], difficult bool [G])`` of one class. Object
    keys are unique over images (an offset per image plus the index within it).
    """
    n = len(dets)
    best_iou = np.full(n, -np.inf)
    best_key = np.full(n, -1, dtype=np.int64)
    best_difficult = np.zeros(n, dtype=bool)
    images, inverse = np.unique(dets.image_ids, return_inverse=True)
    offset = 0
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(images) + 1))
    for i, image in enumerate(images):
        polys, difficult = gts[image]
        if len(polys):
            rows = order[bounds[i]:bounds[i + 1]]
            iou = polygon_iou(torch.from_numpy(dets.polygons[rows]),
                              torch.from_numpy(np.asarray(polys, dtype=np.float64))).numpy()  # [d, G]
            j = iou.argmax(axis=1)  # first maximum, as the devkit's np.argmax
            best_iou[rows] = iou[np.arange(len(rows)), j]
            best_key[rows] = offset + j
            best_difficult[rows] = difficult[j]
            offset += len(polys)
    return best_iou, best_key, best_difficult


def evaluate_class(dets: Detections, gts: Mapping[str, Tuple[np.ndarray, np.ndarray]],
                   protocol: MapProtocol = DEVKIT) -> ClassResult:
    """AP of one class.

    Args:
        dets: the class's detections over all images.
        gts: ``{image id: (polygons [G, 8], difficult bool [G])}`` for every evaluated image
            (images without objects of this class map to empty arrays).
        protocol: matching and AP rules.

    Raises:
        DataError: a detection names an image missing from ``gts``.
    """
    missing = sorted(set(map(str, np.unique(dets.image_ids))) - set(gts))
    if missing:
        raise DataError(f"detections name {len(missing)} image(s) without ground truth, e.g. "
                        f"{few([repr(m) for m in missing])}")
    difficult_all = [np.asarray(d, dtype=bool) for _, d in gts.values()]
    num_objects = sum(len(d) for d in difficult_all)
    npos = num_objects - (sum(int(d.sum()) for d in difficult_all) if protocol.ignore_difficult else 0)

    order = rank(dets.scores)
    dets = dets.select(order)
    best_iou, best_key, best_difficult = _best_objects(dets, gts)
    above = best_iou >= protocol.iou_thr if protocol.inclusive else best_iou > protocol.iou_thr
    ignored = above & best_difficult & protocol.ignore_difficult
    candidate = above & ~ignored
    first = np.zeros(len(dets), dtype=bool)
    idx = np.flatnonzero(candidate)
    _, first_of_key = np.unique(best_key[idx], return_index=True)  # first in rank order per object
    first[idx[first_of_key]] = True
    tp = first.astype(np.float64)
    fp = (~first & ~ignored).astype(np.float64)

    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / npos if npos > 0 else np.full(len(dets), np.nan)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    ap = average_precision(recall, precision, protocol.metric) if npos > 0 else math.nan
    return ClassResult(ap=ap, num_gts=npos, num_dets=len(dets), tp=tp, fp=fp, recall=recall,
                       precision=precision)


def evaluate_rotated_map(detections: Mapping[str, Detections], ground_truth: Mapping[str, GroundTruth],
                         classes: Sequence[str], protocol: MapProtocol = DEVKIT) -> MapResult:
    """mAP of ``detections`` against ``ground_truth`` over ``classes``.

    Args:
        detections: ``{class name: detections}``; a missing class has no detections.
        ground_truth: ``{image id: objects}`` for every evaluated image; ``labels`` index
            ``classes``.
        classes: the class list (its order is the table's).
        protocol: :data:`DEVKIT` (default), :data:`MMROTATE` or any :class:`MapProtocol`.

    Raises:
        DataError: a class of ``detections`` is not in ``classes``, or a detection names an
            image without ground truth (the message names the class and the images).
    """
    unknown = sorted(set(detections) - set(classes))
    if unknown:
        raise DataError(f"detections for unknown class(es) {', '.join(map(repr, unknown))}")
    per_class: Dict[str, ClassResult] = {}
    for c, name in enumerate(classes):
        gts = {}
        for image, ann in ground_truth.items():
            mask = np.asarray(ann.labels) == c
            gts[image] = (np.asarray(ann.polygons)[mask], np.asarray(ann.difficult)[mask] >= 1)
        try:
            per_class[name] = evaluate_class(detections.get(name, Detections()), gts, protocol)
        except ValueError as e:
            raise DataError(f"class {name!r}: {e}") from None
    aps = np.array([r.ap for r in per_class.values()], dtype=np.float64)
    m_ap = float(np.mean(aps[~np.isnan(aps)])) if (~np.isnan(aps)).any() else math.nan
    return MapResult(mAP=m_ap, per_class=per_class, protocol=protocol)


def class_list(dataset: str) -> Tuple[str, ...]:
    """Classes of ``dataset``: ``'dota2'``, ``'dota1.5'``, ``'dota1'`` or ``'dior'``."""
    if dataset == "dior":
        return DIOR_CLASSES
    if dataset in DOTA_CLASS_LISTS:
        return DOTA_CLASS_LISTS[dataset]
    raise ConfigError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")


def load_ground_truth(labels: PathLike, dataset: str = "dota2",
                      image_ids: Optional[Sequence[str]] = None,
                      classes: Optional[Sequence[str]] = None) -> Dict[str, GroundTruth]:
    """Ground truth of ``dataset`` from ``labels``: ``{image id: objects}``.

    Args:
        labels: DOTA: the ``labelTxt`` folder (or a folder holding ``labelTxt/``). DIOR-R: the
            dataset root, its ``Annotations`` folder or the XML folder.
        dataset: see :func:`class_list`.
        image_ids: evaluate only these images (e.g. DIOR-R's ``ImageSets/Main/test.txt``);
            default every annotation file.
        classes: an own class list for DOTA-format labels (replaces the dataset's).

    Raises:
        DataError: no annotation folder, or a listed image without its file.
        AnnotationError: a malformed annotation file.
    """
    classes = tuple(classes) if classes else class_list(dataset)
    if dataset == "dior":
        return dict(load_dior_annotations(labels, image_ids))
    folder = Path(labels)
    if (folder / "labelTxt").is_dir():
        folder = folder / "labelTxt"
    found = load_dota_labels(folder, classes)
    if image_ids is None:
        return dict(found)
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise DataError(f"{folder}: no label file for {len(missing)} listed image(s): {few(missing)}")
    return {i: found[i] for i in image_ids}


def evaluate_task1(det_dir: PathLike, labels: PathLike, dataset: str = "dota2",
                   protocol: MapProtocol = DEVKIT, image_ids: Optional[Sequence[str]] = None,
                   classes: Optional[Sequence[str]] = None) -> MapResult:
    """Evaluate a folder of ``Task1_<class>.txt`` files against annotation files.

    See :func:`load_ground_truth` for ``labels``, ``image_ids`` and ``classes`` (an own class list
    of DOTA-format labels).

    Raises:
        DataError (AnnotationError): unreadable inputs (the message names the file).
        DataError: no Task1 file or no detection at all, no annotation, or detections on an image
            without ground truth: an input that leaves nothing to evaluate is refused.
    """
    if classes and dataset == "dior":
        raise ConfigError("classes: an own class list needs DOTA-format labels, not dataset dior")
    classes = tuple(classes) if classes else class_list(dataset)
    det_dir = Path(det_dir)
    if det_dir.is_dir() and not any(det_dir.glob(f"{TASK1_PREFIX}*.txt")):
        others = sorted(p.name for p in det_dir.iterdir())
        raise DataError(f"{det_dir}: no {TASK1_PREFIX}<class>.txt files, nothing to evaluate"
                        + (f" (the folder holds: {few(others)})" if others else " (the folder is empty)"))
    detections = read_task1_dir(det_dir, classes)
    if not any(len(d) for d in detections.values()):
        raise DataError(f"{det_dir}: the {TASK1_PREFIX}<class>.txt files hold no detection, nothing to evaluate")
    ground_truth = load_ground_truth(labels, dataset, image_ids, classes)
    if not ground_truth:
        raise DataError(f"{labels}: no annotation files, nothing to evaluate against")
    return evaluate_rotated_map(detections, ground_truth, classes, protocol)


def undefined_ap_notes(result: MapResult) -> List[str]:
    """A line naming the classes without AP (no objects counted in the ground truth) and saying
    that mAP leaves them out; empty when every class has an AP."""
    undefined = [c for c, r in result.per_class.items() if math.isnan(r.ap)]
    if not undefined:
        return []
    rest = len(result.per_class) - len(undefined)
    return [f"AP n/a for {', '.join(undefined)} (no objects in the ground truth"
            f"{' that count' if result.protocol.ignore_difficult else ''}): mAP is the mean of the other "
            f"{rest} class{'es' if rest != 1 else ''}"]


def format_map_table(result: MapResult) -> str:
    """A text table: class, objects counted, detections, AP (4 decimals; 'n/a' where undefined,
    with a line saying which classes mAP leaves out)."""
    width = max([len("class")] + [len(c) for c in result.per_class])
    lines = [f"{'class':<{width}}  {'gts':>7}  {'dets':>8}  {'AP':>6}"]
    for name, r in result.per_class.items():
        ap = "n/a" if math.isnan(r.ap) else f"{r.ap:.4f}"
        lines.append(f"{name:<{width}}  {r.num_gts:>7d}  {r.num_dets:>8d}  {ap:>6}")
    m_ap = "n/a" if math.isnan(result.mAP) else f"{result.mAP:.4f}"
    lines.append(f"{'mAP':<{width}}  {'':>7}  {'':>8}  {m_ap:>6}")
    lines.append(f"({result.protocol.describe()})")
    lines += undefined_ap_notes(result)
    return "\n".join(lines)
