"""Rotated-detection samples from DOTA-format folders and DIOR-R, with box-aware augmentation.

Sources (each gives :class:`DetRecord` s: an image path and its objects as polygons):

- :func:`dota_records`: a DOTA-format folder, ``images/<id>.<ext>`` with ``labelTxt/<id>.txt``, as
  the DOTA release, ``rsfm dota split`` (patches) or ``rsfm synth dota`` write it. A folder
  without ``labelTxt/`` (the DOTA test set) gives unlabelled records.
- :func:`dior_records`: the DIOR-R release tree, images of the given image sets.

:class:`DetectionDataset` turns a record into a sample (see :meth:`DetectionDataset.__getitem__`):

1. read the image (OpenCV, converted to RGB);
2. resize, keeping the aspect ratio, so that the longer side is ``img_size`` (mmrotate's
   ``RResize`` with ``keep_ratio=True``; skipped when already that size). Boxes scale by the same
   factor; OpenCV rounds the new sides to whole pixels, so the image's true per-axis factor differs
   from the box factor by less than half a pixel over the image;
3. training only: horizontal flip, vertical flip (each with its probability; 0.5 and 0.5 give
   mmrotate's ``RRandomFlip`` with horizontal / vertical / diagonal at 0.25 each) and, with
   ``rot90_prob``, 1-3 clockwise quarter turns;
4. normalise with the ImageNet mean/std (mmrotate's ``Normalize``, RGB).

Objects are converted once, from polygons to le90 boxes (:func:`~rsfm_ds.ops.rotated.polygon_to_box`,
the minimum-area rectangle), and the augmentations transform the *boxes* (:func:`hflip_boxes`,
:func:`vflip_boxes`, :func:`rot90_boxes`, :func:`scale_boxes`); the tests check each against
transforming the polygons and converting afterwards.

Difficult objects: in training they are removed from the targets (``keep_difficult=False``, the
default), so they are neither positives nor negatives of their own, like mmdet's ignored boxes
with ``ignore_iof_thr=-1``; with ``filter_empty`` (mmdet's ``filter_empty_gt``), training skips
images left without objects. Evaluation keeps them: the devkit protocol ignores detections that
match a difficult object (:mod:`rsfm_ds.evaluation.rotated_map`).

Randomness uses numpy's global RNG, which the fine-tuning engine seeds per sample from (seed,
epoch, position), so augmentation does not depend on DataLoader workers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ...errors import ConfigError, DataError
from ...ops.rotated import polygon_to_box, regularize_le90
from .dior import image_path as dior_image_path
from .dior import load_dior_annotations, read_image_set
from .dota import DotaAnnotation, parse_dota_label
from .split import IMAGE_EXTENSIONS
from ..images import IMAGENET_MEAN, IMAGENET_STD, read_rgb

PathLike = Union[str, Path]
SIZE_DIVISOR = 32
"""Batches are padded to a multiple of the coarsest RoI stride (mmrotate's ``Pad``)."""


@dataclass
class DetRecord:
    """One image and its objects, in the image's pixel coordinates.

    Attributes:
        image_id: file stem (DOTA: a patch name for split data).
        image_path: the image file; None for ground truth without one (the whole-image labels
            a patch set's merged detections are scored against).
        polygons: ``float32 [N, 8]`` corners ``x1 y1 ... x4 y4``.
        labels: ``int64 [N]`` class indices.
        difficult: ``int64 [N]`` 0 or 1.
        labelled: False for images without annotations (a test set).
    """

    image_id: str
    image_path: Optional[Path]
    polygons: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    labelled: bool = True

    def __post_init__(self) -> None:
        self.polygons = np.asarray(self.polygons, dtype=np.float32).reshape(-1, 8)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.difficult = (np.asarray(self.difficult).reshape(-1) >= 1).astype(np.int64)


def _find_image(folder: Path, stem: str) -> Optional[Path]:
    for ext in IMAGE_EXTENSIONS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def dota_records(folder: PathLike, classes: Sequence[str]) -> List[DetRecord]:
    """Records of a DOTA-format folder, sorted by image id.

    Args:
        folder: holds ``images/`` and, when labelled, ``labelTxt/``.
        classes: the dataset's class list (labels index it; an unknown class name is an error).

    Raises:
        DataError: no ``images/`` folder or no image in it, or ``labelTxt/`` exists but
            lacks the file of an image (both named).
        AnnotationError: a malformed label file.
    """
    folder = Path(folder)
    image_dir, label_dir = folder / "images", folder / "labelTxt"
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: no such folder (expected a DOTA-format folder with "
                        f"images/ and labelTxt/)")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    labelled = label_dir.is_dir()
    records = []
    for path in images:
        if labelled:
            label = label_dir / f"{path.stem}.txt"
            if not label.is_file():
                raise DataError(f"{label}: no label file for image {path.name}")
            ann = parse_dota_label(label, classes)
        else:
            ann = DotaAnnotation(np.zeros((0, 8)), [], [], classes=tuple(classes))
        records.append(DetRecord(path.stem, path, ann.polygons, ann.labels, ann.difficult, labelled))
    return records


def dior_records(root: PathLike, splits: Sequence[str]) -> List[DetRecord]:
    """Records of the DIOR-R images listed in ``ImageSets/Main/<split>.txt`` for each split.

    Raises:
        DataError: a missing image-set file, annotation or image (named).
        AnnotationError: a malformed XML.
    """
    records = []
    for split in splits:
        ids = read_image_set(root, split)
        anns = load_dior_annotations(root, ids)
        for image_id in ids:
            path = dior_image_path(root, image_id, split)
            if not path.is_file():
                raise DataError(f"{path}: image of {split} id {image_id!r} not found")
            ann = anns[image_id]
            records.append(DetRecord(image_id, path, ann.polygons, ann.labels, ann.difficult))
    return records


def select_classes(records: Sequence[DetRecord], all_classes: Sequence[str],
                   classes: Sequence[str]) -> List[DetRecord]:
    """Keep only objects of ``classes`` (a subset of ``all_classes``), relabelled to index it.

    Raises:
        ConfigError: a class of ``classes`` that ``all_classes`` lacks.
    """
    unknown = [c for c in classes if c not in all_classes]
    if unknown:
        raise ConfigError(f"classes: {unknown} are not classes of the dataset ({', '.join(all_classes)})")
    remap = np.full(len(all_classes), -1, dtype=np.int64)
    remap[[list(all_classes).index(c) for c in classes]] = np.arange(len(classes))
    out = []
    for r in records:
        new = remap[r.labels]
        keep = new >= 0
        out.append(DetRecord(r.image_id, r.image_path, r.polygons[keep], new[keep],
                             r.difficult[keep], r.labelled))
    return out


def hflip_boxes(boxes: Tensor, width: float) -> Tensor:
    """Boxes ``[N, 5]`` of an image mirrored left-right (``x -> width - x``), le90."""
    cx, cy, w, h, t = boxes.unbind(-1)
    return regularize_le90(torch.stack([width - cx, cy, w, h, -t], dim=-1))


def vflip_boxes(boxes: Tensor, height: float) -> Tensor:
    """Boxes ``[N, 5]`` of an image mirrored top-bottom (``y -> height - y``), le90."""
    cx, cy, w, h, t = boxes.unbind(-1)
    return regularize_le90(torch.stack([cx, height - cy, w, h, -t], dim=-1))


def rot90_boxes(boxes: Tensor, width: float, height: float, k: int) -> Tensor:
    """Boxes ``[N, 5]`` of a ``width x height`` image turned ``k`` quarter turns clockwise on
    screen (``np.rot90(image, -k)``), le90. One turn maps ``(x, y) -> (height - y, x)`` and
    adds a quarter turn to theta; the image becomes ``height x width``."""
    for _ in range(k % 4):
        cx, cy, w, h, t = boxes.unbind(-1)
        boxes = torch.stack([height - cy, cx, w, h, t + math.pi / 2], dim=-1)
        width, height = height, width
    return regularize_le90(boxes)


def scale_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Boxes ``[N, 5]`` of an image resized by ``scale`` in both axes."""
    return torch.cat([boxes[:, :4] * scale, boxes[:, 4:]], dim=1)


class DetectionDataset(Dataset):
    """Samples for Oriented R-CNN training or evaluation (module docstring).

    Args:
        records: the images (:func:`dota_records`, :func:`dior_records`).
        img_size: the longer side after resizing.
        train: apply the random flips / turns and the difficult / empty filters.
        hflip_prob, vflip_prob: flip probabilities (training).
        rot90_prob: probability of 1-3 random clockwise quarter turns (training).
        keep_difficult: keep difficult objects as training targets.
        filter_empty: training skips images without (kept) objects.
    """

    def __init__(self, records: Sequence[DetRecord], img_size: int, train: bool,
                 hflip_prob: float = 0.5, vflip_prob: float = 0.5, rot90_prob: float = 0.0,
                 keep_difficult: bool = False, filter_empty: bool = True):
        records = list(records)
        if train:
            if not keep_difficult:
                records = [DetRecord(r.image_id, r.image_path, r.polygons[r.difficult == 0],
                                     r.labels[r.difficult == 0], r.difficult[r.difficult == 0],
                                     r.labelled) for r in records]
            if filter_empty:
                records = [r for r in records if len(r.labels)]
        if not records:
            raise DataError("the detection dataset is empty" + (
                " after removing images without objects (filter_empty)" if train else ""))
        self.records = records
        self.img_size, self.train = img_size, train
        self.hflip_prob, self.vflip_prob, self.rot90_prob = hflip_prob, vflip_prob, rot90_prob
        self.mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255
        self.std = np.asarray(IMAGENET_STD, dtype=np.float32) * 255

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """A sample: ``image`` float32 ``[3, h, w]`` (normalised), ``boxes`` float32 ``[N, 5]``
        le90 in the sample's pixels, ``labels`` int64 ``[N]``, ``image_id``, ``scale`` (resize
        factor from the file's pixels; un-augmented samples map back by dividing by it) and
        ``image_size`` ``(h, w)``."""
        record = self.records[index]
        img = read_rgb(record.image_path)
        boxes = polygon_to_box(torch.from_numpy(record.polygons).double())
        height, width = img.shape[:2]
        scale = self.img_size / max(height, width)
        if scale != 1.0:
            size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            boxes = scale_boxes(boxes, scale)
        if self.train:
            img, boxes = self._augment(img, boxes)
        img = (img.astype(np.float32) - self.mean) / self.std
        return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                "boxes": boxes.float(), "labels": torch.from_numpy(record.labels.copy()),
                "image_id": record.image_id, "scale": scale, "image_size": tuple(img.shape[:2])}

    def _augment(self, img: np.ndarray, boxes: Tensor) -> Tuple[np.ndarray, Tensor]:
        height, width = img.shape[:2]
        if np.random.random() < self.hflip_prob:
            img, boxes = img[:, ::-1], hflip_boxes(boxes, width)
        if np.random.random() < self.vflip_prob:
            img, boxes = img[::-1], vflip_boxes(boxes, height)
        if np.random.random() < self.rot90_prob:
            k = int(np.random.randint(1, 4))
            img, boxes = np.rot90(img, -k), rot90_boxes(boxes, width, height, k)
        return img, boxes

    def ground_truth(self) -> Dict[str, DetRecord]:
        """``{image id: record}`` in the files' pixels (the evaluation's ground truth)."""
        return {r.image_id: r for r in self.records}


def collate_detection(samples: Sequence[Dict[str, Any]], size_divisor: int = SIZE_DIVISOR
                      ) -> Dict[str, Any]:
    """Samples -> the batch :class:`~rsfm_ds.models.heads.OrientedRCNN` reads: ``images``
    ``[B, 3, H, W]`` zero-padded bottom/right to the largest sample rounded up to
    ``size_divisor``; ``image_sizes``, ``boxes``, ``labels``, ``image_ids``, ``scales`` as lists."""
    height = max(s["image"].shape[1] for s in samples)
    width = max(s["image"].shape[2] for s in samples)
    height = -(-height // size_divisor) * size_divisor
    width = -(-width // size_divisor) * size_divisor
    images = torch.stack([F.pad(s["image"], (0, width - s["image"].shape[2],
                                             0, height - s["image"].shape[1])) for s in samples])
    return {"images": images, "image_sizes": [s["image_size"] for s in samples],
            "boxes": [s["boxes"] for s in samples], "labels": [s["labels"] for s in samples],
            "image_ids": [s["image_id"] for s in samples], "scales": [s["scale"] for s in samples]}


__all__ = ["DetRecord", "DetectionDataset", "dota_records", "dior_records", "select_classes",
           "hflip_boxes", "vflip_boxes", "rot90_boxes", "scale_boxes",
           "collate_detection", "SIZE_DIVISOR"]
