"""Semantic segmentation fine-tuning: ViTDet backbone + UperNet on Potsdam, LoveDA, any
mmseg-layout dataset or your own classes, on the shared engine (``finetune.py``).

Own classes: ``data.dataset: folders`` reads ``img_dir/<split>/`` images of any raster format
(8-bit RGB PNG / JPEG, multi-band GeoTIFF) and ``ann_dir/<split>/`` masks of the same stem
(:mod:`rsfm_ds.data.seg.folders`), with the user's ``data.class_names`` (required; they name
``IoU/<name>`` and ``F1/<name>`` in the metrics, the evaluation JSON and the report), an optional
``data.palette`` for colour masks, and ``data.ignore_index``. Input bands and their normalisation:
``data.bands``, ``data.band_mean`` / ``band_std`` / ``band_stats``, ``backbone.in_chans``
(:mod:`rsfm_ds.engine.inputs`). ``mmseg`` is the same layout restricted to PNG images and index
PNG masks, as before.

Training reads mmseg's pipeline (``SegDataset``: random resize, random crop, flip, photometric
distortion) and normalises the head with synchronised BatchNorm (``head.norm``, mmseg's SyncBN);
evaluation runs sliding-window inference over whole images (windows of ``crop`` with ``stride``,
logits averaged by a count map) and accumulates one confusion matrix per rank, summed over ranks,
from which OA, per-class IoU / F1, mIoU and mF1 follow with mmseg's semantics (dataset-summed
areas, nanmean). Predictions can be written as index PNGs for ``rsfm eval seg``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import check, check_choices
from ..data.seg.loveda import LOVEDA_CLASSES, loveda_pairs
from ..data.seg.dataset import SegDataset, check_resize, mmseg_pairs
from ..data.seg.folders import folder_pairs
from ..data.seg.potsdam import class_names as potsdam_class_names
from ..evaluation.seg_metrics import SegMetric, eval_record, metrics_from_confusion
from ..evaluation.segmentation_results import write_index_png
from ..evaluation.sliding_window import sliding_window_inference
from ..models.heads import SegmentationModel, UperNetConfig
from .config import FinetuneConfig, ScheduleConfig
from .inputs import BandsConfig
from .task import FinetuneTask


# Our split names -> LoveDA's folders (and the names Potsdam's prepared tree uses as they are).
SPLIT_FOLDERS = {"train": "Train", "val": "Val"}


@dataclass
class SegDataConfig(BandsConfig):
    """Where the segmentation data is, which bands and classes, and how it is read."""

    dataset: Literal["potsdam", "loveda", "mmseg", "folders"] = "potsdam"
    """potsdam (the output of rsfm potsdam prepare), loveda (the raw LoveDA tree), mmseg (any
    img_dir/ann_dir layout with PNG images and index PNGs) or folders (your own classes: the same
    layout with images of any raster format, index or colour masks, class_names required)."""
    root: str = "data/potsdam_prepared"
    """Dataset root."""
    train_splits: Tuple[str, ...] = ("train",)
    """Splits to train on: train and/or val (LoveDA's Train / Val folders; the img_dir/ann_dir
    sub-folders otherwise). LoveDA's test-server recipe trains on train and val."""
    val_split: str = "val"
    """Split to evaluate on (it needs labels: the test splits' are held by the servers)."""
    num_classes: int = 5
    """Scored classes (Potsdam 5 with clutter ignored, or 6; LoveDA 7)."""
    class_names: Optional[Tuple[str, ...]] = None
    """Class names, in index order (IoU/<name> in metrics and reports); null takes the dataset's.
    Required for dataset folders."""
    palette: Optional[Tuple[Tuple[int, int, int], ...]] = None
    """folders: the RGB colour of each class, in class order; masks are then colour masks
    converted to indices (a colour outside the palette is an error naming the file). Null: masks
    are index masks."""
    ignore_index: int = 255
    """Label value that is neither trained on nor scored."""
    crop_size: int = 512
    """Training crop side; also the sliding window of evaluation."""
    eval_stride: int = 384
    """Sliding-window stride at evaluation (LoveDA protocol: 384; Potsdam crops: any)."""
    resize_scale: Optional[Tuple[int, int]] = None
    """mmcv RandomResize before the crop: base (width, height) that the image is fitted into,
    keeping its aspect ratio, after multiplying it by a random ratio from resize_ratio_range; null
    keeps the image size. mmseg's recipes: [512, 512] for Potsdam (configs/_base_/datasets/potsdam.py),
    [2048, 512] for LoveDA (loveda.py; its [1024, 1024] is the test-time resize)."""
    resize_ratio_range: Tuple[float, float] = (0.5, 2.0)
    """RandomResize ratio range (low, high) applied to resize_scale (mmseg: [0.5, 2.0])."""
    cat_max_ratio: Optional[float] = 0.75
    """mmseg RandomCrop: retry crops where one class covers more than this fraction."""
    photometric: bool = True
    """Photometric distortion in training."""
    flip_test: bool = False
    """Horizontal-flip test-time augmentation."""
    fraction: float = 1.0
    """Fraction of the training set used (data-efficiency study: 0.01, 0.05, 0.1, 1.0)."""
    fraction_seed: int = 0
    """Seed of the training subset (fixed per study, nested across fractions)."""
    save_predictions: bool = False
    """Write index PNGs of the final evaluation to run_dir/eval/step_*/pred."""

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        if self.dataset == "folders":
            check(bool(self.class_names), "class_names", "required for dataset folders: the name of each class index")
        check(self.palette is None or self.dataset == "folders", "palette",
              "colour masks are read for dataset folders only")
        if self.palette is not None:
            check(len(self.palette) == self.num_classes, "palette",
                  f"needs one colour per class ({self.num_classes}), got {len(self.palette)}")
            check(all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in self.palette), "palette",
                  "colours are [r, g, b] with values in 0..255")
            check(len(set(map(tuple, self.palette))) == len(self.palette), "palette", "colours must be distinct")
        check(self.num_classes > 1, "num_classes", f"must be > 1, got {self.num_classes}")
        check(len(self.train_splits) > 0 and len(set(self.train_splits)) == len(self.train_splits),
              "train_splits", f"name one or more distinct splits, got {list(self.train_splits)}")
        if self.dataset in ("potsdam", "loveda"):
            for name, splits in (("train_splits", self.train_splits), ("val_split", (self.val_split,))):
                bad = [x for x in splits if x not in SPLIT_FOLDERS]
                check(not bad, name, f"{bad} are not splits of {self.dataset} (train, val)")
        check(0 <= self.ignore_index <= 255, "ignore_index", f"must be in 0..255, got {self.ignore_index}")
        check(self.crop_size % 32 == 0, "crop_size", f"must be a multiple of 32, got {self.crop_size}")
        check(0 < self.eval_stride <= self.crop_size, "eval_stride",
              f"must be in (0, crop_size], got {self.eval_stride}")
        check(0 < self.fraction <= 1, "fraction", f"must be in (0, 1], got {self.fraction}")
        check_resize(self.resize_scale, self.resize_ratio_range)
        check(self.class_names is None or len(self.class_names) == self.num_classes, "class_names",
              f"{len(self.class_names or ())} names but num_classes is {self.num_classes}; give one name per class "
              f"and set num_classes to their count")
        check(self.class_names is None or len(set(self.class_names)) == len(self.class_names), "class_names",
              f"names must be distinct, got {list(self.class_names or ())}")


@dataclass
class SegFinetuneConfig(FinetuneConfig):
    """Segmentation fine-tuning run (rsfm finetune seg)."""

    data: SegDataConfig = field(default_factory=SegDataConfig)
    """Data."""
    head: UperNetConfig = field(default_factory=UperNetConfig)
    """UperNet head (norm syncbn by default: BatchNorm statistics over all ranks, mmseg's SyncBN)."""
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        by="iter", length=160_000, type="poly", milestones=(), warmup=1500, warmup_ratio=1e-6))
    """Length and schedule (segmentation recipe: 160k iterations, poly, 1500 warm-up)."""

    def __post_init__(self):
        check(self.data.crop_size == self.backbone.img_size, "data.crop_size",
              f"{self.data.crop_size} differs from backbone.img_size {self.backbone.img_size}")


class SegmentationTask(FinetuneTask):
    """The segmentation task for :func:`rsfm_ds.engine.finetune.finetune`."""

    primary_metric = "mIoU"
    cfg: SegFinetuneConfig

    def class_names(self) -> Tuple[str, ...]:
        d = self.cfg.data
        if d.class_names:
            return tuple(d.class_names)
        if d.dataset == "potsdam":
            return tuple(potsdam_class_names(d.num_classes))
        if d.dataset == "loveda":
            return tuple(LOVEDA_CLASSES)
        return tuple(f"class_{i}" for i in range(d.num_classes))

    def build_model(self) -> nn.Module:
        return SegmentationModel.build(self.cfg.backbone, self.cfg.data.num_classes, self.cfg.head,
                                       self.cfg.data.ignore_index)

    def _pairs(self, splits: Tuple[str, ...]):
        d = self.cfg.data
        if d.dataset == "loveda":
            return [p for split in splits for p in loveda_pairs(d.root, SPLIT_FOLDERS[split])]
        if d.dataset == "folders":
            return [p for split in splits for p in folder_pairs(d.root, split)]
        return [p for split in splits for p in mmseg_pairs(d.root, split)]

    def train_dataset(self) -> SegDataset:
        d = self.cfg.data
        return SegDataset(self._pairs(d.train_splits), train=True, crop_size=d.crop_size, resize_scale=d.resize_scale,
                          resize_ratio_range=d.resize_ratio_range, cat_max_ratio=d.cat_max_ratio,
                          photometric=d.photometric, ignore_index=d.ignore_index,
                          reduce_zero_label=d.dataset == "loveda", fraction=d.fraction,
                          fraction_seed=d.fraction_seed, seed=self.cfg.seed, num_classes=d.num_classes,
                          inputs=self.inputs(), palette=d.palette)

    def eval_dataset(self) -> SegDataset:
        d = self.cfg.data
        return SegDataset(self._pairs((d.val_split,)), train=False, ignore_index=d.ignore_index,
                          reduce_zero_label=d.dataset == "loveda", num_classes=d.num_classes,
                          inputs=self.inputs(), palette=d.palette)

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        out = {"image": torch.stack([s["image"] for s in samples]), "name": [s["name"] for s in samples]}
        if all("label" in s for s in samples):
            out["label"] = torch.stack([s["label"] for s in samples])
        return out

    def to_device(self, batch: Dict[str, Any], device: torch.device, dtype: torch.dtype) -> Dict[str, Any]:
        return {"image": batch["image"].to(device, dtype=dtype, non_blocking=True),
                "label": batch["label"].to(device, non_blocking=True)}

    def evaluate(self, model: nn.Module, batches: Iterator[Tuple[Dict[str, Any], List[bool]]],
                 device: torch.device, dtype: torch.dtype, out_dir: Path) -> Dict[str, float]:
        d = self.cfg.data
        metric = SegMetric(d.num_classes, ignore_index=d.ignore_index, class_names=self.class_names())
        flips = ("horizontal",) if d.flip_test else ()
        for batch, padding in batches:
            images = batch["image"].to(device, dtype=dtype)
            logits = sliding_window_inference(model.logits, images, d.num_classes, crop=d.crop_size,
                                              stride=d.eval_stride, batch_size=4, flips=flips)
            preds = logits.argmax(dim=1).cpu()
            for pred, label, name, pad in zip(preds, batch["label"], batch["name"], padding):
                if pad:
                    continue
                metric.update(pred, label, source=name)
                if d.save_predictions:
                    write_index_png(out_dir / "pred" / name, pred.numpy())
        conf = metric.conf.clone().to(device)
        if dist.is_initialized():
            dist.all_reduce(conf)
        return eval_record(metrics_from_confusion(conf.cpu(), self.class_names()))

    def evaluation_protocol(self) -> str:
        d = self.cfg.data
        names = self.class_names()
        ignored = f"label {d.ignore_index} ignored"
        if d.dataset == "loveda":
            ignored += " (no-data 0 by reduce-zero-label)"
        prepared = Path(d.root) / "prepare.json"
        if d.dataset == "potsdam" and prepared.is_file():
            how = json.loads(prepared.read_text())
            ignored += (f" (protocol {how.get('protocol')}: clutter "
                        f"{'ignored' if how.get('protocol') == 5 else 'a class'}; "
                        f"{'eroded boundaries ignored' if how.get('eroded') else 'full-reference labels'})")
        split = SPLIT_FOLDERS[d.val_split] if d.dataset == "loveda" else d.val_split
        return (f"{d.dataset} {split} split of {d.root}; {len(names)} classes ({', '.join(names)}); {ignored}; "
                f"sliding window {d.crop_size} px, stride {d.eval_stride}{', flip test' if d.flip_test else ''}; "
                f"areas summed over the split (mmseg IoUMetric)")
