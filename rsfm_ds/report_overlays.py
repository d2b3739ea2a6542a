"""Ground truth beside prediction for a few held-out images of a fine-tuning run, as PNGs.

Everything comes from the run directory: ``config.yaml`` (the run's resolved config: which images
and labels it was evaluated on, its classes, bands and palette) and the predictions its last
evaluation wrote, ``eval/step_<N>/task1`` (detection: DOTA Task1 files; ``task1_patches`` when
patches were merged to full images, since the evaluated images are the patches) or
``eval/step_<N>/pred`` (segmentation: index PNGs, written with ``data.save_predictions=true``).
The task is the one whose main metric the evaluation holds (``mAP``: det, ``mIoU``: seg; for an
evaluation without labels, the one whose predictions the step folder holds), and the held-out
images are read through that task's own evaluation dataset, so an own-class dataset or a DIOR-R
image set is shown exactly as it was scored (its class names and, for masks, its palette).

Detections scoring above ``score_thr`` are drawn (0.3, mmrotate 0.x's ``show_result`` default in
``mmrotate/models/detectors/base.py``); the Task1 files keep every detection down to the test
score threshold (0.05), which would bury the picture.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

from .config import check
from .data.raster import raster_info, read_raster
from .errors import DataError
from .evaluation.overlays import (blend_mask, class_palette, described_rgb, display_rgb, draw_polygons, legend,
                                  side_by_side, write_png)


@dataclass(frozen=True)
class OverlayOptions:
    """What the report draws for each fine-tuning run."""

    images: int = 3
    """Held-out images per run (evenly spaced over the evaluation set in its order); 0: none."""
    score_thr: float = 0.3
    """Detections drawn: those scoring above this (mmrotate's show_result default, its rule)."""
    rgb: Optional[Tuple[int, int, int]] = None
    """0-based bands of the image files shown as red, green, blue; None: the bands described as
    red, green and blue in the file when it names them, else the first three."""
    alpha: float = 0.5
    """Weight of the class colours over the image in segmentation overlays."""
    max_side: int = 768
    """Pictures are shrunk so that their longer side is at most this many pixels."""

    def __post_init__(self):
        check(self.images >= 0, "images", f"must be >= 0, got {self.images}")
        check(0.0 <= self.score_thr <= 1.0, "score_thr", f"must lie in 0..1, got {self.score_thr}")
        check(self.rgb is None or len(self.rgb) == 3, "rgb", f"needs 3 band indices, got {self.rgb}")
        check(0.0 <= self.alpha <= 1.0, "alpha", f"must lie in 0..1, got {self.alpha}")
        check(self.max_side >= 64, "max_side", f"must be >= 64, got {self.max_side}")


@dataclass(frozen=True)
class Overlay:
    """One written picture."""

    path: Path
    image_id: str
    """The image shown (its id or file stem); ``legend`` for the key of class colours."""
    caption: str
    """One line for the report: the image and what each panel shows."""


def _evenly_spaced(count: int, wanted: int) -> List[int]:
    if count == 0 or wanted == 0:
        return []
    return sorted(set(np.linspace(0, count - 1, min(wanted, count)).round().astype(int).tolist()))


def _display(path: Path, options: OverlayOptions) -> Tuple[np.ndarray, float]:
    """``(uint8 [h, w, 3] picture, scale)`` of an image file, shrunk by ``scale`` to fit."""
    info = raster_info(path)
    rgb = options.rgb if options.rgb is not None else described_rgb(info.band_names)
    picture = display_rgb(read_raster(path), rgb, info.nodata)
    return _shrink(picture, options.max_side, cv2.INTER_AREA)


def _shrink(picture: np.ndarray, max_side: int, interpolation: int) -> Tuple[np.ndarray, float]:
    scale = min(1.0, max_side / max(picture.shape[:2]))
    if scale == 1.0:
        return picture, 1.0
    size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
    return cv2.resize(picture, size, interpolation=interpolation), scale


def _last_eval_step(run_dir: Path) -> Tuple[Optional[dict], Optional[Path]]:
    records = sorted((run_dir / "eval").glob("step_*.json"))
    if not records:
        return None, None
    return json.loads(records[-1].read_text()), records[-1].with_suffix("")


# What an evaluation of each task leaves in its step folder, for evaluations without metrics
# (a validation set without labels).
_OUTPUT_FOLDERS = {"det": "task1", "seg": "pred"}


def _task(run_dir: Path, result: dict, step_dir: Path):
    """``(task name, task)`` of the run: the task whose main metric the evaluation holds, else
    the one whose predictions its step folder holds."""
    from .engine.tasks import TASKS

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise DataError(f"{config}: no such file (the run's resolved config, written when it starts)")
    by_metric = [name for name, spec in TASKS.items() if spec.metric in result]
    by_output = [name for name, folder in _OUTPUT_FOLDERS.items() if (step_dir / folder).is_dir()]
    if by_metric or by_output:
        spec = TASKS[(by_metric + by_output)[0]]
        return spec.name, spec.build(spec.load_config(config))
    raise DataError(f"{run_dir}: the last evaluation holds none of the metrics "
                    f"{', '.join(s.metric for s in TASKS.values())} and no predictions; which task it was is unknown")


def detection_overlays(task, step_dir: Path, out_dir: Path, prefix: str, options: OverlayOptions
                       ) -> List[Overlay]:
    """Ground truth | prediction pictures for ``options.images`` images of ``task``'s evaluation set."""
    from .data.det.dota import read_task1_dir

    names = tuple(task.class_names())
    det_dir = step_dir / "task1_patches" if (step_dir / "task1_patches").is_dir() else step_dir / "task1"
    detections = read_task1_dir(det_dir, names)
    records = task.eval_dataset().records
    overlays = []
    for k in _evenly_spaced(len(records), options.images):
        record = records[k]
        picture, scale = _display(Path(record.image_path), options)
        pred_polygons, pred_labels, pred_scores = [], [], []
        for label, name in enumerate(names):
            dets = detections[name]
            keep = (dets.image_ids == record.image_id) & (dets.scores > options.score_thr)
            pred_polygons.append(dets.polygons[keep])
            pred_labels.append(np.full(int(keep.sum()), label))
            pred_scores.append(dets.scores[keep])
        polygons, labels = np.concatenate(pred_polygons), np.concatenate(pred_labels)
        truth = draw_polygons(picture, np.asarray(record.polygons, np.float64) * scale, record.labels, names)
        pred = draw_polygons(picture, polygons * scale, labels, names, np.concatenate(pred_scores))
        panel = side_by_side([truth, pred], [f"ground truth: {len(record.labels)}",
                                             f"prediction: {len(labels)} (score > {options.score_thr:g})"])
        path = write_png(out_dir / f"{prefix}_overlay_{k}.png", panel)
        caption = f"{record.image_id}: ground truth | prediction ({det_dir.name})"
        overlays.append(Overlay(path, record.image_id, caption))
    return overlays


def segmentation_overlays(task, step_dir: Path, out_dir: Path, prefix: str, options: OverlayOptions
                          ) -> List[Overlay]:
    """Image | ground truth | prediction pictures for ``options.images`` images with saved predictions."""
    from .data.seg.labels import read_index_png

    pred_dir = step_dir / "pred"
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: no saved predictions (the run writes them with data.save_predictions=true)")
    names = tuple(task.class_names())
    palette = _palette(task, len(names))
    dataset = task.eval_dataset()
    chosen = [i for i, (image, _) in enumerate(dataset.pairs) if (pred_dir / image.name).with_suffix(".png").is_file()]
    overlays = []
    for k in _evenly_spaced(len(chosen), options.images):
        index = chosen[k]
        image_path = Path(dataset.pairs[index][0])
        picture, scale = _display(image_path, options)
        size = (picture.shape[1], picture.shape[0])
        label = dataset.load(index)[1]
        pred = read_index_png((pred_dir / image_path.name).with_suffix(".png"))
        ignore = task.cfg.data.ignore_index
        panels = [picture]
        titles = ["image"]
        if label is not None:
            panels.append(blend_mask(picture, cv2.resize(label, size, interpolation=cv2.INTER_NEAREST), palette,
                                     options.alpha, ignore))
            titles.append("ground truth")
        panels.append(blend_mask(picture, cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST), palette,
                                 options.alpha, ignore))
        titles.append("prediction")
        path = write_png(out_dir / f"{prefix}_overlay_{k}.png", side_by_side(panels, titles))
        overlays.append(Overlay(path, image_path.stem, f"{image_path.name}: " + " | ".join(titles)))
    if overlays:
        key = legend(names, palette)
        overlays.append(Overlay(write_png(out_dir / f"{prefix}_legend.png", key), "legend", "class colours"))
    return overlays


def _palette(task, count: int) -> np.ndarray:
    """The run's ``data.palette`` (RGB per class) when it sets one, else :func:`class_palette`."""
    given = getattr(task.cfg.data, "palette", None)
    if given:
        return np.asarray(given, dtype=np.uint8).reshape(-1, 3)
    return class_palette(count)


def run_overlays(run_dir: Path, out_dir: Path, prefix: str, options: OverlayOptions) -> List[Overlay]:
    """The overlays of a fine-tuning run's last evaluation (module docstring), written to
    ``out_dir/<prefix>_overlay_<k>.png``; [] when the run has no evaluation.

    Raises:
        DataError: no config.yaml, a task that cannot be told, images, labels or predictions missing.
    """
    result, step_dir = _last_eval_step(run_dir)
    if result is None or options.images == 0:
        return []
    name, task = _task(run_dir, result, step_dir)
    draw = detection_overlays if name == "det" else segmentation_overlays
    return draw(task, step_dir, out_dir, prefix, options)


__all__ = ["Overlay", "OverlayOptions", "detection_overlays", "run_overlays", "segmentation_overlays"]
