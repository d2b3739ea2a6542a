"""``rsfm dota merge``: patch detections -> full-image detections (DOTA Task 1 files).

A detection on patch ``<image id>__<rate>__<x>___<y>`` (the devkit's names, see :mod:`.split`)
maps back to the image as ``(p + (x, y)) / rate`` for every corner ``p``, as the devkit's
``ResultMerge_multi_process.py``: ``x, y`` are the window's corner in the image resized by
``rate``, and the patch's pixels are that resized image's. A detection on an mmrotate patch
``<image id>__<window side>__<x>___<y>`` maps back as ``p + (x, y)``, as mmrotate 0.x's
``DOTADataset.merge_det``: its patches were cut from the unresized image, so the detector's
output (scaled back to the patch's own pixels) is already in image pixels. The middle field
tells the two apart (``naming="auto"``: a decimal or an integer below
:data:`~.split.MIN_NAMED_SIZE` is a rate, a larger integer a window side); ``naming="rate"`` or
``"size"`` forces one reading. Then,
per class and per image, greedy rotated NMS at IoU 0.1 (the DOTA devkit's) removes the
copies of objects seen by overlapping patches and scales. NMS runs on the le90 minimum-area
rectangles of the polygons (``polygon_to_box``) with :func:`rsfm_ds.ops.rotated.batched_nms_rotated`
(the image is the batch label); the kept detections keep their mapped polygons. The devkit
uses polygon IoU on the quadrilaterals themselves: the same for the rectangles a detector
outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ...errors import DataError, check_output_is_not_input
from ...ops.rotated import batched_nms_rotated, polygon_to_box
from .dota import AnnotationError, Detections, TASK1_PREFIX, read_task1_file, write_task1_dir
from .split import PatchNaming, parse_patch_name

PathLike = Union[str, Path]
MERGE_IOU_THR = 0.1


def patch_to_image(dets: Detections, naming: PatchNaming = "auto") -> Detections:
    """Map detections named by patch to their images: ids without the patch suffix, polygons
    offset by the window corner and divided by the rate (1 for mmrotate names). Order kept.

    Args:
        dets: detections in patch pixels, ``image_ids`` the patch names.
        naming: how to read the names' middle field (:func:`~.split.parse_patch_name`).

    Raises:
        DataError: an image id that is not a patch name (the message quotes it and its index).
    """
    if len(dets) == 0:
        return dets
    names, inverse = np.unique(dets.image_ids, return_inverse=True)
    parsed = []
    for name in names:
        try:
            parsed.append(parse_patch_name(str(name), naming))
        except ValueError as e:
            first = int(np.flatnonzero(dets.image_ids == name)[0])
            raise DataError(f"detection {first + 1}: image: {e}") from None
    image_ids = np.asarray([p.image_id for p in parsed], dtype=str)[inverse]
    offset = np.asarray([[p.x, p.y] * 4 for p in parsed], dtype=np.float64)[inverse]  # [D, 8]
    rate = np.asarray([p.rate for p in parsed], dtype=np.float64)[inverse, None]
    return Detections(image_ids, dets.scores, (dets.polygons + offset) / rate)


def nms_per_image(dets: Detections, iou_thr: float = MERGE_IOU_THR) -> Detections:
    """Greedy rotated NMS within each image; result sorted by image id, then decreasing score."""
    if len(dets) == 0:
        return dets
    images, labels = np.unique(dets.image_ids, return_inverse=True)
    boxes = polygon_to_box(torch.from_numpy(dets.polygons))
    keep = batched_nms_rotated(boxes, torch.from_numpy(dets.scores), torch.from_numpy(labels),
                               iou_thr).numpy()
    keep = keep[np.argsort(labels[keep], kind="stable")]  # per image; NMS already ranked by score
    return dets.select(keep)


def merge_detections(detections: Mapping[str, Detections], iou_thr: float = MERGE_IOU_THR,
                     naming: PatchNaming = "auto") -> Dict[str, Detections]:
    """``{class: patch detections}`` -> ``{class: image detections}`` (map back, then NMS per class
    and image). ``naming``: see :func:`patch_to_image`.

    Raises:
        DataError: a detection whose image is not a patch name (message names the class).
    """
    out = {}
    for name, dets in detections.items():
        try:
            out[name] = nms_per_image(patch_to_image(dets, naming), iou_thr)
        except ValueError as e:
            raise DataError(f"class {name!r}: {e}") from None
    return out


@dataclass
class MergeReport:
    """What :func:`merge_dota` did."""

    files: int
    patch_detections: int
    image_detections: int


def merge_dota(src: PathLike, out: PathLike, iou_thr: float = MERGE_IOU_THR,
               classes: Optional[Sequence[str]] = None, naming: PatchNaming = "auto") -> MergeReport:
    """Merge ``src/Task1_<class>.txt`` (patch names) into ``out/Task1_<class>.txt`` (image ids).

    Args:
        src: folder of patch-level Task1 files.
        out: output folder (created).
        iou_thr: NMS threshold (0.1, the devkit's).
        classes: write a file for each of these classes (empty where nothing was detected), as
            the evaluation server expects; default: the classes with a file in ``src``.
        naming: how to read the patch names (:func:`patch_to_image`).

    Raises:
        DataError: ``src`` is not a folder or holds no Task1 file.
        AnnotationError: a malformed line, or a detection on an image that is not a patch name
            (the message names the file).
    """
    src = Path(src)
    check_output_is_not_input(out, [src])
    if not src.is_dir():
        raise DataError(f"{src}: no such folder (expected Task1_<class>.txt files)")
    files = sorted(src.glob(f"{TASK1_PREFIX}*.txt"))
    if not files:
        raise DataError(f"{src}: no {TASK1_PREFIX}<class>.txt files")
    merged: Dict[str, Detections] = {}
    before = 0
    for path in files:
        name = path.stem[len(TASK1_PREFIX):]
        if classes is not None and name not in classes:
            raise AnnotationError(f"{path}: class: unknown class {name!r} (known: {', '.join(classes)})")
        dets = read_task1_file(path)
        before += len(dets)
        try:
            merged[name] = nms_per_image(patch_to_image(dets, naming), iou_thr)
        except ValueError as e:
            raise AnnotationError(f"{path}: {e}") from None
    write_task1_dir(out, merged, classes)
    return MergeReport(files=len(files), patch_detections=before,
                       image_detections=sum(len(d) for d in merged.values()))
