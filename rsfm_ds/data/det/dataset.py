"""Rotated-detection samples from DOTA-format folders and DIOR-R, with box-aware augmentation.

Sources (each gives :class:`DetRecord` s: an image path and its objects as polygons):

- :func:`dota_records`: a DOTA-format folder, ``images/<id>.<ext>`` with ``labelTxt/<id>.txt``, as
  the DOTA release, ``rsfm dota split`` (patches) or ``rsfm synth dota`` write it. A folder
  without ``labelTxt/`` (the DOTA test set) gives unlabelled records.
- :func:`dior_records`: the DIOR-R release tree, images of the given image sets.

:class:`DetectionDataset` turns a record into a sample (see :meth:`DetectionDataset.__getitem__`):

1. read the image: 8-bit RGB files (PNG / JPEG / BMP) with OpenCV, converted to RGB; other rasters
   (multi-band GeoTIFF, a ``data.bands`` selection) through :func:`~rsfm_ds.data.raster.read_raster`,
   ``[H, W, C]`` in the file's data type; the band count must equal the backbone's ``in_chans``
   (:class:`~rsfm_ds.data.bands.InputBands`);
2. resize, keeping the aspect ratio, so that the longer side is ``img_size`` (mmrotate's
   ``RResize`` with ``keep_ratio=True``; skipped when already that size). Boxes scale by the same
   factor; OpenCV rounds the new sides to whole pixels, so the image's true per-axis factor differs
   from the box factor by less than half a pixel over the image;
3. training only: horizontal flip, vertical flip (each with its probability; 0.5 and 0.5 give
   mmrotate's ``RRandomFlip`` with horizontal / vertical / diagonal at 0.25 each), with
   ``rot90_prob`` 1-3 clockwise quarter turns, and with ``rotate`` mmrotate's random rotation
   (:class:`~rsfm_ds.data.det.augment.RandomRotate`, ``PolyRandomRotate``: it drops boxes whose
   centre leaves the image or whose side is 5 px or less, and refuses a sample left without
   objects, which is then replaced by another image drawn at random, as mmdet's
   ``CustomDataset.__getitem__`` does);
4. normalise per band, ``(raw - mean) / std`` in raw units (mmrotate's ``Normalize``; ImageNet's
   mean/std x 255 for 8-bit RGB, the run's statistics otherwise: :mod:`rsfm_ds.engine.inputs`).

Geometric augmentations (resize, flips, quarter turns, rotation) act on any band count.

Objects are converted once, from polygons to le90 boxes (:func:`~rsfm_ds.ops.rotated.polygon_to_box`,
the minimum-area rectangle), and the augmentations transform the *boxes*
(:mod:`rsfm_ds.data.det.augment`); the tests check each against transforming the polygons or
the rasterised boxes.

Difficult objects: training keeps them as ordinary targets by default (``keep_difficult=True``),
as mmrotate's ``DOTADataset`` does (its ``difficulty`` threshold, 100 by default, keeps every
object whose flag is at most 100, i.e. all of them). ``keep_difficult=False`` removes them from
the targets, so they are neither positives nor negatives of their own (mmdet's ignored boxes with
``ignore_iof_thr=-1``). With ``filter_empty`` (mmdet's ``filter_empty_gt``), training skips
images without (kept) objects. Evaluation always keeps them: the devkit protocol ignores
detections that match a difficult object (:mod:`rsfm_ds.evaluation.rotated_map`).

Randomness uses numpy's global RNG, which the fine-tuning engine seeds per sample from (seed,
epoch, position), so augmentation does not depend on DataLoader workers and a resumed run draws
the same augmentations.
"""
from __future__ import annotations

import logging
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
from ...ops.rotated import polygon_to_box
from .augment import RandomRotate, hflip_boxes, rot90_boxes, scale_boxes, vflip_boxes
from .dior import image_path as dior_image_path
from .dior import load_dior_annotations, read_image_set
from .dota import DotaAnnotation, parse_dota_label
from .split import SCENE_SUFFIXES
from ..bands import InputBands
from ..images import read_rgb

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
FOLDER_IMAGE_SUFFIXES = SCENE_SUFFIXES
"""Image files of a DOTA-format folder: DOTA's own (PNG, JPEG, BMP, TIFF) and any raster GDAL reads."""
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
    for ext in FOLDER_IMAGE_SUFFIXES:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def dota_records(folder: PathLike, classes: Sequence[str], skip_unknown: bool = False) -> List[DetRecord]:
    """Records of a DOTA-format folder, sorted by image id.

    Args:
        folder: holds ``images/`` and, when labelled, ``labelTxt/``.
        classes: the dataset's class list (labels index it; an unknown class name is an error
            naming ``file:line``, as mmrotate's ``DOTADataset`` fails on it).
        skip_unknown: drop objects of other class names instead, logging their counts.

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
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in FOLDER_IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(FOLDER_IMAGE_SUFFIXES)})")
    labelled = label_dir.is_dir()
    records = []
    unknown: Dict[str, int] = {}
    for path in images:
        if labelled:
            label = label_dir / f"{path.stem}.txt"
            if not label.is_file():
                raise DataError(f"{label}: no label file for image {path.name}")
            ann = parse_dota_label(label, classes, skip_unknown=skip_unknown)
            for name, count in ann.unknown.items():
                unknown[name] = unknown.get(name, 0) + count
        else:
            ann = DotaAnnotation(np.zeros((0, 8)), [], [], classes=tuple(classes))
        records.append(DetRecord(path.stem, path, ann.polygons, ann.labels, ann.difficult, labelled))
    if unknown:
        log.warning("%s: skipped %d objects of classes outside data.classes (%s)", label_dir,
                    sum(unknown.values()), ", ".join(f"{k} {v}" for k, v in sorted(unknown.items())))
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


class DetectionDataset(Dataset):
    """Samples for Oriented R-CNN training or evaluation (module docstring).

    Args:
        records: the images (:func:`dota_records`, :func:`dior_records`).
        img_size: the longer side after resizing.
        train: apply the random augmentations and the difficult / empty filters.
        hflip_prob, vflip_prob: flip probabilities (training).
        rot90_prob: probability of 1-3 random clockwise quarter turns (training).
        rotate: mmrotate's random rotation and border filter, applied after the flips and turns
            (training; None: off).
        keep_difficult: keep difficult objects as training targets (mmrotate's default).
        filter_empty: training skips images without (kept) objects.
        inputs: bands read, their normalisation and the backbone's channel count (8-bit RGB with
            ImageNet's statistics by default); the first image is checked at construction.
    """

    MAX_REDRAWS = 1000
    """Refused samples (see ``rotate``) in a row before the dataset gives up."""

    def __init__(self, records: Sequence[DetRecord], img_size: int, train: bool,
                 hflip_prob: float = 0.5, vflip_prob: float = 0.5, rot90_prob: float = 0.0,
                 rotate: Optional[RandomRotate] = None, keep_difficult: bool = True,
                 filter_empty: bool = True, inputs: InputBands = InputBands()):
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
        self.rotate = rotate
        self.inputs = inputs
        # A band count that does not fit ``inputs`` fails here, before any model is built.
        self.inputs.check_file(records[0].image_path)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """A sample: ``image`` float32 ``[C, h, w]`` (normalised), ``boxes`` float32 ``[N, 5]``
        le90 in the sample's pixels, ``labels`` int64 ``[N]``, ``image_id``, ``scale`` (resize
        factor from the file's pixels; un-augmented samples map back by dividing by it) and
        ``image_size`` ``(h, w)``.

        In training, an image the rotation leaves without objects is replaced by another one
        drawn uniformly from the dataset (mmdet's ``_rand_another``), so the sample may carry
        another ``image_id`` than ``records[index]``.
        """
        for _ in range(self.MAX_REDRAWS):
            sample = self._load(self.records[index])
            if sample is not None:
                return sample
            index = int(np.random.randint(len(self.records)))
        raise DataError(f"the random rotation left no object in {self.MAX_REDRAWS} images drawn in a "
                        f"row (it drops boxes whose centre leaves the image or whose side is "
                        f"{self.rotate.min_size:g} px or less); check the objects' sizes or set "
                        f"data.rotate_allow_negative")

    def _load(self, record: DetRecord) -> Optional[Dict[str, Any]]:
        img = self.inputs.read(record.image_path, read_rgb)
        boxes = polygon_to_box(torch.from_numpy(record.polygons).double())
        labels = record.labels.copy()
        height, width = img.shape[:2]
        scale = self.img_size / max(height, width)
        if scale != 1.0:
            size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            boxes = scale_boxes(boxes, scale)
        if self.train:
            img, boxes = self._flip_and_turn(img, boxes)
            if self.rotate is not None:
                rotated = self.rotate(img, boxes, labels)
                if rotated is None:
                    return None
                img, boxes, labels = rotated
        img = self.inputs.normalize(img)
        return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                "boxes": boxes.float(), "labels": torch.from_numpy(np.ascontiguousarray(labels)),
                "image_id": record.image_id, "scale": scale, "image_size": tuple(img.shape[:2])}

    def _flip_and_turn(self, img: np.ndarray, boxes: Tensor) -> Tuple[np.ndarray, Tensor]:
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
    ``[B, C, H, W]`` zero-padded bottom/right to the largest sample rounded up to
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
