"""Rotated object detection on the fine-tuning engine: ``rsfm finetune det``.

:class:`DetectionTask` supplies Oriented R-CNN over a ViTDet backbone
(:class:`~rsfm_ds.models.heads.OrientedRCNN`), the DOTA / DIOR-R datasets
(:mod:`rsfm_ds.data.det.dataset`) and the evaluation; :func:`~rsfm_ds.engine.finetune.finetune`
does the rest (DeepSpeed, layer decay, schedule, checkpoints, resumption).

Evaluation (every ``eval.every`` units and at the end), on every rank:

1. inference on this rank's share of the evaluation set (padding samples skipped), boxes mapped
   back to the files' pixels;
2. the detections are gathered to every rank (``all_gather_object``) and scored with
   :func:`~rsfm_ds.evaluation.rotated_map.evaluate_rotated_map` (DOTA devkit semantics by default,
   ``data.protocol=mmrotate`` for mmrotate's), so every rank returns the same numbers;
3. rank 0 writes ``Task1_<class>.txt`` files (``image score x1 y1 ... x4 y4``), one per class, under
   ``<run_dir>/eval/step_<N>/task1/``: the files the DOTA server takes. When the evaluation set is
   made of DOTA patches (every image id is a patch name ``<id>__<rate>__<x>___<y>``), the patch
   detections go to ``task1_patches/`` and ``task1/`` holds them merged back to whole images
   (:func:`~rsfm_ds.data.det.merge.merge_detections`: offsets, rates, per-class rotated NMS 0.1).

Own classes: ``data.dataset: dota`` reads DOTA-format folders whose class list is the user's
``data.classes`` (required for this kind); the names flow into the log, the metrics
(``AP/<name>``), the evaluation JSON, the ``Task1_<name>.txt`` files and the report. An object of a
name outside the list is an error naming ``file:line`` (mmrotate 0.x's ``DOTADataset`` in
``mmrotate/datasets/dota.py`` looks every name up in its class map and fails on a missing one);
``data.unknown_classes: skip`` drops such objects instead and logs how many.

Input bands: any raster the DOTA folders hold (8-bit RGB PNG / JPEG as before, multi-band
GeoTIFF) with ``data.bands``, ``data.band_mean`` / ``band_std`` / ``band_stats`` and
``backbone.in_chans`` (:mod:`rsfm_ds.engine.inputs`).

Metrics: ``mAP`` and ``AP/<class>`` (classes with objects). For a patch set with
``data.val_full_labels`` (the unsplit images' ``labelTxt``), ``mAP`` is the merged detections'
score on the whole images (the official protocol) and ``mAP_patch`` the patch-level one; without
it ``mAP`` is patch-level. An unlabelled evaluation set (the DOTA test set: no ``labelTxt/``) gives
only ``num_detections``, and the Task1 files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import check, check_choices
from ..data.det.augment import RandomRotate, label_indices
from ..data.det.dataset import (DetectionDataset, DetRecord, collate_detection, dior_records,
                                dota_records, select_classes)
from ..data.det.dota import load_dota_labels, write_task1_dir
from ..data.det.merge import merge_detections
from ..data.det.split import is_patch_name, parse_patch_name
from ..data.subsets import select_fraction
from ..errors import ConfigError, DataError, few
from ..evaluation.detection_results import predict, to_task1
from ..evaluation.rotated_map import DEVKIT, MMROTATE, MapResult, evaluate_rotated_map, undefined_ap_notes
from ..evaluation.rotated_map import class_list as release_classes
from ..models.heads import OrientedRCNN, OrientedRCNNConfig
from .config import FinetuneConfig
from .inputs import BandsConfig
from .task import FinetuneTask

PROTOCOLS = {"devkit": DEVKIT, "mmrotate": MMROTATE}


OWN_CLASSES = "dota"
"""The dataset kind of DOTA-format folders with the user's own class list (data.classes)."""


def class_list(dataset: str, classes: Optional[Tuple[str, ...]] = None) -> Tuple[str, ...]:
    """The class list of ``dataset``'s label files: a release's, or ``classes`` for own data."""
    if dataset == OWN_CLASSES:
        if not classes:
            raise ConfigError("data.classes: required for dataset dota (the class names of the label files)")
        return tuple(classes)
    return release_classes(dataset)


@dataclass
class DetDataConfig(BandsConfig):
    """Detection data: which dataset, where, which classes, which bands, which augmentations."""

    dataset: Literal["dota2", "dota1.5", "dota1", "dior", "dota"] = "dota2"
    """dota2 (18 classes), dota1.5 (16) or dota1 (15): DOTA-format folders; dior: the DIOR-R
    release tree (20 classes); dota: DOTA-format folders of your own classes (data.classes)."""
    train_dirs: Tuple[str, ...] = ()
    """DOTA kinds: DOTA-format folders (images/ + labelTxt/) to train on, e.g. the split train and
    val patches written by `rsfm dota split`."""
    val_dir: Optional[str] = None
    """DOTA kinds: DOTA-format folder to evaluate on; without labelTxt/ (the test set) the Task1
    files are written but no mAP is computed."""
    val_full_labels: Optional[str] = None
    """DOTA kinds: labelTxt folder of the unsplit images of a patch-named val_dir; the merged
    detections are then scored on the whole images and give mAP."""
    root: Optional[str] = None
    """dior: the DIOR-R root (Annotations/, ImageSets/, JPEGImages-trainval/, JPEGImages-test/)."""
    train_splits: Tuple[str, ...] = ("train", "val")
    """dior: image sets to train on (the recipe trains on train+val)."""
    val_split: str = "test"
    """dior: image set to evaluate on."""
    classes: Optional[Tuple[str, ...]] = None
    """Classes the detector predicts: a subset of the dataset's, in this order (objects of other
    classes are dropped); null takes all of the dataset's. Required for dataset dota: the class
    names of your label files, which name the outputs (AP/<name>, Task1_<name>.txt)."""
    unknown_classes: Literal["error", "skip"] = "error"
    """dataset dota: an object whose class is not in data.classes is an error naming file:line
    (mmrotate's DOTADataset fails on it), or skip drops it and counts it in the log."""
    hflip_prob: float = 0.5
    """Probability of a horizontal flip in training."""
    vflip_prob: float = 0.5
    """Probability of a vertical flip in training (with hflip_prob 0.5: mmrotate's RRandomFlip
    with horizontal, vertical and diagonal flips at 0.25 each)."""
    rot90_prob: float = 0.0
    """Probability of 1-3 random clockwise quarter turns in training."""
    rotate_prob: float = 0.0
    """Probability of mmrotate's random rotation in training (PolyRandomRotate's rotate_ratio; its
    DOTA ms_rr recipes use 0.5). 0 leaves it out, border filter included."""
    rotate_mode: Literal["range", "value"] = "range"
    """range: angle uniform in (-rotate_range, rotate_range) degrees; value: one of
    rotate_angles, uniformly."""
    rotate_range: float = 180.0
    """Largest rotation in degrees, range mode (mmrotate's angles_range, 180)."""
    rotate_angles: Tuple[float, ...] = ()
    """Rotation angles in degrees, value mode."""
    rotate_auto_bound: bool = False
    """Grow a rotated image to its new bounds instead of cutting its corners (mmrotate's
    auto_bound; off in its recipes)."""
    rect_classes: Tuple[str, ...] = ()
    """Class names whose presence in an image limits its rotation to a multiple of 90 degrees
    (mmrotate's rect_classes; its DOTA recipes name storage-tank and roundabout). Names of the
    dataset's class list; one the detector does not predict is ignored."""
    rotate_allow_negative: bool = False
    """Keep a rotated image left without objects; by default it is replaced by another image
    drawn at random (mmrotate's allow_negative)."""
    keep_difficult: bool = True
    """Train on difficult objects too, as mmrotate's DOTADataset does (its difficulty threshold
    keeps every object); false removes them from the training targets. Evaluation is unaffected."""
    filter_empty: bool = True
    """Skip training images without objects (mmdet's filter_empty_gt)."""
    protocol: Literal["devkit", "mmrotate"] = "devkit"
    """mAP protocol: devkit (IoU > 0.5, difficult ignored, VOC07 AP; also DIOR-R's) or mmrotate
    (IoU >= 0.5, difficult counted)."""
    fraction: float = 1.0
    """Fraction of the training images used (data-efficiency study). Patches of split DOTA images
    are kept or dropped with their source image, so no image is half in the subset."""
    fraction_seed: int = 0
    """Seed of the training subset (fixed per study, nested across fractions)."""

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        if self.dataset == OWN_CLASSES:
            check(bool(self.classes), "classes", "required for dataset dota: the class names of your label files")
            bad = [c for c in self.classes if not c or any(ch.isspace() or ch in "/\\" for ch in c)]
            check(not bad, "classes", f"{bad}: a DOTA class name is one word without slashes (it names a "
                                      f"label-file field and a Task1_<name>.txt file)")
        # A release's labels name only its own classes: skipping there would hide a wrong dataset kind.
        check(self.unknown_classes == "error" or self.dataset == OWN_CLASSES, "unknown_classes",
              f"skip applies to dataset dota (own classes), not {self.dataset}")
        if self.dataset == "dior":
            check(self.root is not None, "root", "the DIOR-R root is required for dataset dior")
            check(len(self.train_splits) > 0, "train_splits", "name at least one image set")
        else:
            check(len(self.train_dirs) > 0, "train_dirs",
                  f"name at least one DOTA-format folder for dataset {self.dataset}")
            check(self.val_dir is not None, "val_dir", f"required for dataset {self.dataset}")
        if self.classes is not None:
            known = class_list(self.dataset, self.classes)
            unknown = [c for c in self.classes if c not in known]
            check(not unknown, "classes", f"{unknown} are not {self.dataset} classes ({', '.join(known)})")
            check(len(set(self.classes)) == len(self.classes) and self.classes, "classes",
                  f"must be distinct and non-empty, got {self.classes}")
        for name in ("hflip_prob", "vflip_prob", "rot90_prob", "rotate_prob"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, name, f"must be in [0, 1], got {value}")
        check(0.0 < self.rotate_range <= 180.0, "rotate_range",
              f"must be in (0, 180] degrees, got {self.rotate_range}")
        check(self.rotate_mode != "value" or len(self.rotate_angles) > 0, "rotate_angles",
              "name at least one angle (degrees) for rotate_mode value")
        known = class_list(self.dataset, self.classes)
        unknown = [c for c in self.rect_classes if c not in known]
        check(not unknown, "rect_classes", f"{unknown} are not {self.dataset} classes ({', '.join(known)})")
        check(0 < self.fraction <= 1, "fraction", f"must be in (0, 1], got {self.fraction}")


def _source_image(image_id: str) -> str:
    """The image a record came from: the source of a DOTA patch name, else the record itself."""
    try:
        return parse_patch_name(image_id).image_id
    except ValueError:
        return image_id


def _image_fraction(records: List[DetRecord], fraction: float, seed: int) -> List[DetRecord]:
    """The seeded ``fraction`` of source images (nested across fractions), with all their patches."""
    sources = sorted({_source_image(r.image_id) for r in records})
    keep = {sources[i] for i in select_fraction(sources, fraction, seed)}
    return [r for r in records if _source_image(r.image_id) in keep]


@dataclass
class DetFinetuneConfig(FinetuneConfig):
    """Oriented R-CNN fine-tuning run (rsfm finetune det)."""

    data: DetDataConfig = field(default_factory=lambda: DetDataConfig(
        train_dirs=("data/dota2/split_ms/train",), val_dir="data/dota2/split_ms/val"))
    """Datasets, classes, augmentation, mAP protocol."""
    model: OrientedRCNNConfig = field(default_factory=OrientedRCNNConfig)
    """Detection heads."""

    def classes(self) -> Tuple[str, ...]:
        """The classes the detector predicts, in order."""
        return tuple(self.data.classes) if self.data.classes else class_list(self.data.dataset, self.data.classes)


class DetectionTask(FinetuneTask):
    """Oriented R-CNN fine-tuning (module docstring)."""

    primary_metric = "mAP"

    def __init__(self, cfg: DetFinetuneConfig):
        super().__init__(cfg)
        self.classes = cfg.classes()
        self._eval_set: Optional[DetectionDataset] = None

    def class_names(self) -> Tuple[str, ...]:
        return tuple(self.classes)

    def build_model(self) -> nn.Module:
        return OrientedRCNN.build(self.cfg.backbone, len(self.classes), self.cfg.model)

    def _records(self, train: bool) -> List[DetRecord]:
        d = self.cfg.data
        dataset_classes = class_list(d.dataset, d.classes)
        if d.dataset == "dior":
            records = dior_records(d.root, d.train_splits if train else (d.val_split,))
        else:
            dirs = d.train_dirs if train else (d.val_dir,)
            skip = d.dataset == OWN_CLASSES and d.unknown_classes == "skip"
            records = [r for folder in dirs for r in dota_records(folder, dataset_classes, skip_unknown=skip)]
        if tuple(self.classes) != tuple(dataset_classes):
            records = select_classes(records, dataset_classes, self.classes)
        if train and d.fraction < 1:
            records = _image_fraction(records, d.fraction, d.fraction_seed)
        return records

    def train_dataset(self) -> DetectionDataset:
        d = self.cfg.data
        rotate = None
        if d.rotate_prob > 0:
            rotate = RandomRotate(prob=d.rotate_prob, mode=d.rotate_mode, angle_range=d.rotate_range,
                                  angles=tuple(d.rotate_angles), auto_bound=d.rotate_auto_bound,
                                  rect_labels=label_indices(d.rect_classes, self.classes),
                                  allow_negative=d.rotate_allow_negative)
        return DetectionDataset(self._records(train=True), self.cfg.backbone.img_size, train=True,
                                hflip_prob=d.hflip_prob, vflip_prob=d.vflip_prob,
                                rot90_prob=d.rot90_prob, rotate=rotate,
                                keep_difficult=d.keep_difficult, filter_empty=d.filter_empty,
                                inputs=self.inputs())

    def eval_dataset(self) -> DetectionDataset:
        if self._eval_set is None:
            self._eval_set = DetectionDataset(self._records(train=False), self.cfg.backbone.img_size,
                                              train=False, inputs=self.inputs())
        return self._eval_set

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        return collate_detection(samples)

    def to_device(self, batch: Dict[str, Any], device: torch.device, dtype: torch.dtype) -> Dict[str, Any]:
        return dict(batch, images=batch["images"].to(device=device, dtype=dtype),
                    boxes=[b.to(device) for b in batch["boxes"]],
                    labels=[label.to(device) for label in batch["labels"]])

    def evaluate(self, model: nn.Module, batches: Iterator[Tuple[Dict[str, Any], List[bool]]],
                 device: torch.device, dtype: torch.dtype, out_dir: Path) -> Dict[str, float]:
        local = predict(model, batches, lambda b: self.to_device(b, device, dtype))
        gathered: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        per_image = {image_id: dets for part in gathered for image_id, dets in part}
        detections = to_task1(per_image, self.classes)
        eval_set = self.eval_dataset()
        patches = self.cfg.data.dataset != "dior" and all(is_patch_name(i) for i in per_image)
        merged = merge_detections(detections) if patches else None
        if dist.get_rank() == 0:
            if merged is not None:
                write_task1_dir(Path(out_dir) / "task1_patches", detections, self.classes)
            write_task1_dir(Path(out_dir) / "task1", merged if merged is not None else detections,
                            self.classes)
        metrics: Dict[str, float] = {"num_detections": float(sum(len(d) for d in detections.values()))}
        ground_truth = eval_set.ground_truth()
        if not all(r.labelled for r in ground_truth.values()):
            return metrics
        protocol = PROTOCOLS[self.cfg.data.protocol]
        result = evaluate_rotated_map(detections, ground_truth, self.classes, protocol)
        metrics.update(_metrics(result))
        if merged is not None and self.cfg.data.val_full_labels:
            full = self._full_image_ground_truth(ground_truth)
            metrics["mAP_patch"] = metrics["mAP"]
            metrics.update(_metrics(evaluate_rotated_map(merged, full, self.classes, protocol)))
        return metrics

    def evaluation_protocol(self) -> str:
        d = self.cfg.data
        where = d.val_dir if d.dataset != "dior" else f"{d.root} {d.val_split} image set"
        merged = (f"; patch detections merged to full images and scored against {d.val_full_labels}"
                  if d.val_full_labels else "")
        return (f"{d.dataset} {where}; {len(self.classes)} classes ({', '.join(self.classes)}); "
                f"{PROTOCOLS[d.protocol].describe()} ({d.protocol}){merged}")

    def _full_image_ground_truth(self, patch_gt: Dict[str, DetRecord]) -> Dict[str, DetRecord]:
        """The unsplit images' ground truth for the images the patches come from."""
        dataset_classes = class_list(self.cfg.data.dataset, self.cfg.data.classes)
        anns = load_dota_labels(self.cfg.data.val_full_labels, dataset_classes)
        ids = sorted({parse_patch_name(i).image_id for i in patch_gt})
        missing = [i for i in ids if i not in anns]
        if missing:
            raise DataError(f"data.val_full_labels: no label file for {len(missing)} image(s) of the patches: "
                            f"{few(missing)}")
        records = [DetRecord(i, None, anns[i].polygons, anns[i].labels, anns[i].difficult) for i in ids]
        if tuple(self.classes) != tuple(dataset_classes):
            records = select_classes(records, dataset_classes, self.classes)
        return {r.image_id: r for r in records}


def _metrics(result: MapResult) -> Dict[str, Any]:
    out: Dict[str, Any] = {"mAP": None if math.isnan(result.mAP) else result.mAP}
    out.update({f"AP/{c}": None if math.isnan(r.ap) else r.ap for c, r in result.per_class.items()})
    out["notes"] = undefined_ap_notes(result)
    return out


__all__ = ["DetFinetuneConfig", "DetDataConfig", "DetectionTask"]
