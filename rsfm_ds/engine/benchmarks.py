"""From a fine-tuned checkpoint to the four benchmarks' results: ``rsfm submit`` and ``rsfm eval``'s
checkpoint verbs (docs/submission.md).

* :func:`submit_dota`: DOTA test images (whole, or patches written by ``rsfm dota split``) ->
  detections -> patches merged back to whole images (offsets, rates, per-class rotated NMS 0.1,
  as the training evaluation) -> the Task 1 archive (:func:`~rsfm_ds.evaluation.submission.write_dota_submission`).
* :func:`submit_loveda`: LoveDA Test images -> sliding-window predictions -> the archive of index
  PNGs (:func:`~rsfm_ds.evaluation.submission.write_loveda_submission`).
* :func:`evaluate_dior`: the DIOR-R test image set -> detections, written as ``Task1_<class>.txt``
  files and scored against the public test annotations (DOTA devkit protocol, VOC07 AP).
* :func:`evaluate_potsdam`: the prepared Potsdam test tiles (``rsfm potsdam prepare --eroded``,
  split ``val``) -> predictions, written as index PNGs and scored against the eroded labels.

Each one runs in one process on one device (:class:`~rsfm_ds.engine.inference.InferenceOptions`)
and checks what a user can get wrong before the model is built: the archive path, the config's
task and dataset, the input folders.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..data.det.dataset import DetectionDataset, DetRecord, dior_records, dota_records, select_classes
from ..data.det.dota import DOTA_CLASS_LISTS, write_task1_dir
from ..data.det.merge import merge_detections
from ..data.det.split import IMAGE_EXTENSIONS, is_patch_name
from ..data.seg.dataset import SegDataset, mmseg_pairs
from ..data.seg.loveda import LOVEDA_CLASSES, LOVEDA_DOMAINS, list_loveda
from ..data.seg.potsdam import class_names as potsdam_class_names
from ..errors import ConfigError, DataError, check_output_is_not_input
from ..evaluation.detection_results import to_task1
from ..evaluation.rotated_map import DEVKIT, MMROTATE, MapResult, class_list, evaluate_rotated_map
from ..evaluation.seg_metrics import SegMetric, SegResult
from ..evaluation.scene_outputs import write_json_atomic
from ..evaluation.segmentation_results import write_index_png
from ..evaluation.submission import (SubmissionReport, check_archive_path, write_dota_submission,
                                     write_loveda_submission)
from .inference import (InferenceOptions, load_finetuned_model, load_task_config, predict_detections,
                        predict_segmentation)

PathLike = Union[str, Path]
PROTOCOLS = {"devkit": DEVKIT, "mmrotate": MMROTATE}


@dataclass
class LocalEvaluation:
    """A local test-set score.

    Attributes:
        result: the metrics (:class:`MapResult` for DIOR-R, :class:`SegResult` for Potsdam).
        record: what ``metrics.json`` holds.
        out_dir: where the predictions and ``metrics.json`` were written.
    """

    result: Union[MapResult, SegResult]
    record: Dict[str, object]
    out_dir: Path


def _require_dataset(cfg, allowed: Sequence[str], config: PathLike, command: str) -> None:
    if cfg.data.dataset not in allowed:
        raise ConfigError(f"{config}: data.dataset is {cfg.data.dataset!r}; {command} needs "
                          f"{' or '.join(repr(a) for a in allowed)}")


def _require_folder(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such folder ({what})")
    return path


def dota_test_records(images: PathLike, classes: Sequence[str]) -> List[DetRecord]:
    """Unlabelled records of DOTA test images: a DOTA-format folder (``images/`` inside, e.g.
    ``rsfm dota split``'s output) or a folder of image files.

    Raises:
        DataError: no such folder, or no image in it.
    """
    folder = _require_folder(images, "DOTA test images, or a folder with images/")
    if (folder / "images").is_dir():
        return [DetRecord(r.image_id, r.image_path, np.zeros((0, 8)), [], [], labelled=False)
                for r in dota_records(folder, classes)]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) and no images/ folder")
    return [DetRecord(p.stem, p, np.zeros((0, 8)), [], [], labelled=False) for p in files]


def submit_dota(config: PathLike, checkpoint: PathLike, images: PathLike, out: PathLike,
                overrides: Sequence[str] = (), tag: Optional[str] = None,
                options: InferenceOptions = InferenceOptions(),
                patch_dets: Optional[PathLike] = None) -> SubmissionReport:
    """The DOTA Task 1 archive of a fine-tuned detector on the test images.

    Args:
        config: the fine-tuning run config (``det``, a DOTA dataset).
        checkpoint: see :func:`~rsfm_ds.engine.inference.load_full_weights`.
        images: the test images (:func:`dota_test_records`). When every image is a patch
            (``<id>__<rate>__<x>___<y>``), detections are merged back to whole images.
        out: the ``.zip`` to write.
        overrides: ``section.field=value`` overrides of the config.
        tag: tag within a checkpoints folder.
        options: device, precision, batch size, workers.
        patch_dets: also write the patch-level ``Task1_<class>.txt`` files here (before merging).

    Raises:
        ConfigError: a bad archive path, a config of another task or of DIOR-R.
        DataError: no test images.
        CheckpointError: the checkpoint is missing or does not fit.
    """
    check_archive_path(out, [images])
    if patch_dets is not None:
        check_output_is_not_input(patch_dets, [images])
    cfg = load_task_config("det", config, overrides)
    _require_dataset(cfg, tuple(DOTA_CLASS_LISTS), config, "rsfm submit dota")
    dataset_classes = DOTA_CLASS_LISTS[cfg.data.dataset]
    records = dota_test_records(images, dataset_classes)
    loaded = load_finetuned_model("det", cfg, checkpoint, tag, options)
    dataset = DetectionDataset(records, cfg.backbone.img_size, train=False)
    per_image = predict_detections(loaded, dataset, options)
    detections = to_task1(per_image, loaded.task.classes)
    patches = all(is_patch_name(r.image_id) for r in records)
    if patch_dets is not None:
        write_task1_dir(patch_dets, detections, dataset_classes)
    merged = merge_detections(detections) if patches else detections
    return write_dota_submission(merged, dataset_classes, out)


def loveda_test_images(images: PathLike) -> List[Path]:
    """LoveDA test images: the LoveDA root (``Test/{Urban,Rural}/images_png``), the ``Test`` folder
    itself, or a folder of PNGs.

    Raises:
        DataError: no such folder, or no PNG in it.
    """
    folder = _require_folder(images, "LoveDA root, its Test folder, or a folder of PNG images")
    if (folder / "Test").is_dir():
        return [s.image for s in list_loveda(folder, "Test")]
    domains = [folder / d / "images_png" for d in LOVEDA_DOMAINS if (folder / d / "images_png").is_dir()]
    files = sorted(p for d in domains for p in d.glob("*.png")) if domains else sorted(folder.glob("*.png"))
    if not files:
        raise DataError(f"{folder}: no LoveDA test images (*.png here, in {{Urban,Rural}}/images_png or "
                        f"Test/{{Urban,Rural}}/images_png)")
    return files


def submit_loveda(config: PathLike, checkpoint: PathLike, images: PathLike, out: PathLike,
                  overrides: Sequence[str] = (), tag: Optional[str] = None,
                  options: InferenceOptions = InferenceOptions(), encoding: str = "index") -> SubmissionReport:
    """The LoveDA archive of a fine-tuned segmenter on the test images (arguments as
    :func:`submit_dota`; ``encoding`` see :data:`~rsfm_ds.evaluation.submission.LOVEDA_ENCODINGS`).

    Sliding windows of ``data.crop_size`` every ``data.eval_stride`` px (the LoveDA protocol: 512,
    384), ``data.flip_test`` as configured.

    Raises:
        ConfigError: a bad archive path, a config of another task or dataset, a config whose
            ``data.num_classes`` is not LoveDA's 7.
        DataError: no test images.
        CheckpointError: the checkpoint is missing or does not fit.
    """
    check_archive_path(out, [images])
    cfg = load_task_config("seg", config, overrides)
    _require_dataset(cfg, ("loveda",), config, "rsfm submit loveda")
    if cfg.data.num_classes != len(LOVEDA_CLASSES):
        raise ConfigError(f"{config}: data.num_classes is {cfg.data.num_classes}; LoveDA has {len(LOVEDA_CLASSES)}")
    files = loveda_test_images(images)
    loaded = load_finetuned_model("seg", cfg, checkpoint, tag, options)
    d = cfg.data
    dataset = SegDataset([(p, None) for p in files], train=False, ignore_index=d.ignore_index)
    predictions = ((name, pred) for name, pred, _ in
                   predict_segmentation(loaded, dataset, d.num_classes, d.crop_size, d.eval_stride, d.flip_test,
                                        options))
    report = write_loveda_submission(predictions, out, encoding)
    report.counts = {domain: sum(1 for p in files if p.parent.parent.name == domain) for domain in LOVEDA_DOMAINS}
    return report


def evaluate_dior(config: PathLike, checkpoint: PathLike, out_dir: PathLike, overrides: Sequence[str] = (),
                  tag: Optional[str] = None, options: InferenceOptions = InferenceOptions(),
                  root: Optional[PathLike] = None, split: Optional[str] = None) -> LocalEvaluation:
    """Score a fine-tuned detector on DIOR-R's public test set.

    Detections of the image set ``split`` (default the config's ``data.val_split``, ``test``) of
    ``root`` (default ``data.root``) are written to ``out_dir/task1/Task1_<class>.txt`` (the
    config's classes) and scored with the config's ``data.protocol`` (devkit by default: IoU > 0.5,
    difficult objects ignored, VOC07 11-point AP); ``out_dir/metrics.json`` holds the result.

    Raises:
        ConfigError: a config of another task or not of DIOR-R; ``out_dir`` is the dataset root.
        DataError, AnnotationError: the image set, an image or an annotation is missing or bad.
        CheckpointError: the checkpoint is missing or does not fit.
    """
    extra = ([f"data.root={root}"] if root is not None else []) + ([f"data.val_split={split}"] if split else [])
    overrides = list(overrides) + extra
    cfg = load_task_config("det", config, overrides)
    _require_dataset(cfg, ("dior",), config, "rsfm eval dior")
    d = cfg.data
    check_output_is_not_input(out_dir, [d.root])
    classes = cfg.classes()
    records = dior_records(d.root, (d.val_split,))
    if tuple(classes) != tuple(class_list("dior")):
        records = select_classes(records, class_list("dior"), classes)
    loaded = load_finetuned_model("det", cfg, checkpoint, tag, options)
    per_image = predict_detections(loaded, DetectionDataset(records, cfg.backbone.img_size, train=False), options)
    detections = to_task1(per_image, classes)
    out_dir = Path(out_dir)
    write_task1_dir(out_dir / "task1", detections, classes)
    protocol = PROTOCOLS[d.protocol]
    result = evaluate_rotated_map(detections, {r.image_id: r for r in records}, classes, protocol)
    record: Dict[str, object] = dict(benchmark="dior", split=d.val_split, root=str(d.root), config=str(config),
                                     checkpoint=str(checkpoint), **result.to_json())
    record["protocol"] = f"{protocol.describe()} ({d.protocol})"
    write_json_atomic(out_dir / "metrics.json", record)
    return LocalEvaluation(result, record, out_dir)


def _potsdam_protocol(root: Path, full_labels: bool) -> Dict[str, object]:
    """``prepare.json`` of a prepared Potsdam root, checked to hold the eroded labels."""
    path = root / "prepare.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; {root} is not an `rsfm potsdam prepare` output")
    prepared = json.loads(path.read_text())
    if not prepared.get("eroded") and not full_labels:
        raise DataError(f"{path}: prepared from the full-reference labels; the benchmark scores the eroded ones: "
                        f"prepare with `rsfm potsdam prepare --eroded` (or pass --full-labels to score these)")
    return prepared


def evaluate_potsdam(config: PathLike, checkpoint: PathLike, out_dir: PathLike, overrides: Sequence[str] = (),
                     tag: Optional[str] = None, options: InferenceOptions = InferenceOptions(),
                     root: Optional[PathLike] = None, full_labels: bool = False) -> LocalEvaluation:
    """Score a fine-tuned segmenter on Potsdam's 14 test tiles.

    Reads the ``val`` split of the prepared root (``root``, default ``data.root``; ``rsfm potsdam
    prepare`` puts the test tiles there), whose labels must be the eroded ones (boundaries
    ignored) unless ``full_labels``. Predictions (sliding windows, as the training evaluation)
    are written as index PNGs to ``out_dir/pred/`` and scored with mmseg's IoUMetric semantics
    (areas summed over the split); ``out_dir/metrics.json`` holds OA (aAcc), mIoU, mF1 and the
    per-class values in percent.

    Raises:
        ConfigError: a config of another task or not of Potsdam; ``out_dir`` is the dataset root.
        DataError: not a prepared root, full-reference labels, missing images or labels.
        CheckpointError: the checkpoint is missing or does not fit.
    """
    overrides = list(overrides) + ([f"data.root={root}"] if root is not None else [])
    cfg = load_task_config("seg", config, overrides)
    _require_dataset(cfg, ("potsdam",), config, "rsfm eval potsdam")
    d = cfg.data
    check_output_is_not_input(out_dir, [d.root])
    prepared = _potsdam_protocol(Path(d.root), full_labels)
    if prepared.get("protocol") is not None and int(prepared["protocol"]) != d.num_classes:
        raise ConfigError(f"{config}: data.num_classes is {d.num_classes} but {d.root} was prepared for "
                          f"{prepared['protocol']} classes")
    names = tuple(d.class_names) if d.class_names else tuple(potsdam_class_names(d.num_classes))
    dataset = SegDataset(mmseg_pairs(d.root, "val"), train=False, ignore_index=d.ignore_index,
                         num_classes=d.num_classes)
    loaded = load_finetuned_model("seg", cfg, checkpoint, tag, options)
    out_dir = Path(out_dir)
    metric = SegMetric(d.num_classes, ignore_index=d.ignore_index, class_names=names)
    for name, pred, label in predict_segmentation(loaded, dataset, d.num_classes, d.crop_size, d.eval_stride,
                                                  d.flip_test, options):
        metric.update(torch.from_numpy(pred.astype(np.int64)), label, source=name)
        write_index_png(out_dir / "pred" / name, pred)
    result = metric.compute()
    record = dict(benchmark="potsdam", split="val (the 14 test tiles)", root=str(d.root), config=str(config),
                  checkpoint=str(checkpoint), eroded=bool(prepared.get("eroded")), **result.to_json())
    write_json_atomic(out_dir / "metrics.json", record)
    return LocalEvaluation(result, record, out_dir)


__all__ = ["LocalEvaluation", "dota_test_records", "loveda_test_images", "submit_dota", "submit_loveda",
           "evaluate_dior", "evaluate_potsdam"]
