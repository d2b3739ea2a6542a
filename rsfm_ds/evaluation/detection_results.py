"""From a detector's outputs to result files: per-image detections, Task1 detections by class.

The fine-tuning evaluation (:class:`rsfm_ds.engine.detection.DetectionTask`) runs
:func:`predict` on its share of the evaluation set, gathers the ranks' results and turns them
into ``{class: Detections}`` with :func:`to_task1`, the layout of the DOTA server's
``Task1_<class>.txt`` files (:func:`rsfm_ds.data.det.dota.write_task1_dir` writes them).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..data.det.dota import Detections
from ..ops.rotated import box_to_polygon

ImageResult = Tuple[np.ndarray, np.ndarray, np.ndarray]
"""One image's detections in the file's pixels: boxes ``float32 [D, 5]``, scores, labels."""


@torch.no_grad()
def predict(model: nn.Module, batches: Iterator[Tuple[Dict[str, Any], List[bool]]],
            to_device: Callable[[Dict[str, Any]], Dict[str, Any]]) -> List[Tuple[str, ImageResult]]:
    """Run ``model`` (eval mode) on ``(batch, is_padding)`` pairs; ``(image id, detections)`` for
    every real sample, boxes divided by the sample's resize factor (back to the file's pixels)."""
    out = []
    for batch, padding in batches:
        dets = model(to_device(batch))
        for d, pad, image_id, scale in zip(dets, padding, batch["image_ids"], batch["scales"]):
            if pad:
                continue
            boxes = d.boxes.float().cpu()
            boxes = torch.cat([boxes[:, :4] / scale, boxes[:, 4:]], dim=1)
            out.append((image_id, (boxes.numpy(), d.scores.float().cpu().numpy(), d.labels.cpu().numpy())))
    return out


def to_task1(per_image: Dict[str, ImageResult], classes: Sequence[str]) -> Dict[str, Detections]:
    """Per-image detections -> ``{class: Detections}`` with polygons (Task1 layout), images in
    sorted order, each image's detections in its own order."""
    ids = sorted(per_image)
    counts = [len(per_image[i][1]) for i in ids]
    image_ids = np.repeat(np.asarray(ids, dtype=str), counts)
    boxes = np.concatenate([per_image[i][0].reshape(-1, 5) for i in ids]) if ids else np.zeros((0, 5))
    scores = np.concatenate([per_image[i][1] for i in ids]) if ids else np.zeros(0)
    labels = np.concatenate([per_image[i][2] for i in ids]) if ids else np.zeros(0, dtype=np.int64)
    polygons = box_to_polygon(torch.from_numpy(boxes).double()).numpy()
    return {name: Detections(image_ids[labels == c], scores[labels == c], polygons[labels == c])
            for c, name in enumerate(classes)}


__all__ = ["ImageResult", "predict", "to_task1"]
