"""Cutting a scene of any size into model-sized tiles, and merging detections across tiles.

Tiles follow the one tiling rule of the project (:func:`~rsfm_ds.data.tiling.window_starts`):
windows of ``tile`` pixels every ``tile - overlap`` pixels, the last one clamped to end at the
border, so every pixel is covered and no tile reaches past the scene, except on an axis shorter
than a tile, where the single tile starts at 0 and the caller pads it. This is the grid of the DOTA
devkit's ``ImgSplit_multi_process.py`` (``subsize`` = tile, ``gap`` = overlap) and of mmseg's
``slide_inference`` (``crop_size`` = tile, ``stride`` = tile - overlap).

Detections from overlapping tiles are brought to scene pixels (tile origin added to the box
centre) and merged as mmrotate's large-image inference does (``merge_results`` in
``mmrotate/apis/inference.py``, used by ``demo/huge_image_demo.py``), and as the DOTA devkit's
``ResultMerge_multi_process.py`` and mmrotate 0.x's ``DOTADataset.merge_det`` merge patch
detections: greedy rotated NMS per class at IoU 0.1 over all tiles
(:data:`~rsfm_ds.data.det.merge.MERGE_IOU_THR`), so an object seen by two tiles is kept once, with
its best-scoring box. Segmentation logits of overlapping tiles are averaged per pixel
(:class:`BandAverager`), mmseg's ``slide_inference`` rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from ..config import check
from ..data.det.merge import MERGE_IOU_THR
from ..data.tiling import window_starts
from ..ops.nms import batched_nms_rotated
from .scene_outputs import quantize_probabilities


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a ``height`` x ``width`` scene (module docstring)."""

    height: int
    """Scene rows."""
    width: int
    """Scene columns."""
    tile: int
    """Tile side in pixels."""
    overlap: int
    """Pixels shared by neighbouring tiles (the DOTA devkit's ``gap``); stride = tile - overlap."""

    def __post_init__(self) -> None:
        check(self.height >= 1 and self.width >= 1, "size", f"scene must be at least 1x1, got "
              f"{self.width}x{self.height}")
        check(self.tile >= 1, "tile", f"must be >= 1, got {self.tile}")
        check(0 <= self.overlap < self.tile, "overlap", f"must be in [0, tile={self.tile}), got {self.overlap}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def origins(self) -> np.ndarray:
        """``int64 [T, 2]`` tile origins ``(col, row)``, row by row (top to bottom, left to right)."""
        rows = np.asarray(window_starts(self.height, self.tile, self.stride), dtype=np.int64)
        cols = np.asarray(window_starts(self.width, self.tile, self.stride), dtype=np.int64)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        return np.stack([cc.ravel(), rr.ravel()], axis=1)

    def __len__(self) -> int:
        return len(self.origins())

    def window(self, origin: Tuple[int, int]) -> Tuple[int, int, int, int]:
        """``(col, row, width, height)`` of the scene pixels the tile at ``origin`` covers: the full
        tile, or less on an axis shorter than a tile."""
        col, row = int(origin[0]), int(origin[1])
        return col, row, min(self.tile, self.width - col), min(self.tile, self.height - row)


def boxes_to_scene(boxes: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
    """le90 boxes ``[N, 5]`` in tile pixels -> scene pixels, ``origins [N, 2]`` each box's tile
    ``(col, row)``: the centre moves, size and angle stay."""
    out = boxes.clone()
    out[:, :2] += origins.to(boxes.dtype)
    return out


def merge_tile_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                          iou_thr: float = MERGE_IOU_THR) -> torch.Tensor:
    """Indices ``int64 [K]`` of the detections kept after merging tiles, by decreasing score.

    Args:
        boxes: ``[N, 5]`` le90 boxes in scene pixels (:func:`boxes_to_scene`).
        scores: ``[N]``.
        labels: ``[N]`` class indices; only boxes of one class suppress each other.
        iou_thr: rotated IoU above which the lower-scoring box is dropped (0.1, the devkit's merge).
    """
    check(0.0 <= iou_thr <= 1.0, "iou_thr", f"must be in [0, 1], got {iou_thr}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    return batched_nms_rotated(boxes.float(), scores.float(), labels, iou_thr)


ProbabilitySink = Callable[[int, np.ndarray], None]
"""Receives finished rows of class probabilities: ``(top, uint8 [K, n, W])`` for scene rows
``[top, top + n)``, top to bottom (e.g. :meth:`~rsfm_ds.data.raster.GeoTiffRowWriter.write_rows`)."""


class BandAverager:
    """Logits of overlapping tiles averaged per pixel (sum / tiles covering it), then argmax, with
    only one band of rows held: ``K x tile x width`` sums, whatever the scene's height.

    Tiles come row by row; when a tile row starts at ``row``, no later tile reaches above it, so
    rows above ``row`` are final: their average is taken and the band moves down. The sums are
    the same float additions in the same order as
    :func:`~rsfm_ds.evaluation.sliding_window.sliding_window_inference`'s full-size buffer.

    Args:
        num_classes: K.
        height, width: the scene's size.
        tile: tile side (the band's height).
        probabilities: also pass the softmax of the averaged logits of finished rows on to this
            sink, as ``uint8`` x 255
            (:func:`~rsfm_ds.evaluation.scene_outputs.quantize_probabilities`, what the
            probabilities GeoTIFF holds), so they need not be held for the whole scene.
    """

    def __init__(self, num_classes: int, height: int, width: int, tile: int,
                 probabilities: Optional[ProbabilitySink] = None):
        self.k, self.h, self.w, self.tile = num_classes, height, width, tile
        self.top = 0  # scene row of the band's first row
        self.sum = torch.zeros(num_classes, min(tile, height), width)
        self.count = torch.zeros(min(tile, height), width)
        self.mask = np.zeros((height, width), dtype=np.uint8)
        self.probabilities = probabilities

    def add(self, logits: torch.Tensor, col: int, row: int, w: int, h: int) -> None:
        """Add a tile's logits ``float32 [K, h, w]`` at scene ``(col, row)``."""
        if row > self.top:
            self._finish(row)
        r = row - self.top
        self.sum[:, r:r + h, col:col + w] += logits
        self.count[r:r + h, col:col + w] += 1

    def _finish(self, until: int) -> None:
        """Finalise rows ``[top, until)`` and move the band to start at ``until``."""
        n = until - self.top
        avg = self.sum[:, :n] / self.count[:n]
        self.mask[self.top:until] = avg.argmax(dim=0).to(torch.uint8).numpy()
        if self.probabilities is not None:
            self.probabilities(self.top, quantize_probabilities(torch.softmax(avg, dim=0).numpy()))
        rows = min(self.tile, self.h - until)
        keep = self.sum.shape[1] - n
        fresh = torch.zeros(self.k, rows, self.w)
        fresh_count = torch.zeros(rows, self.w)
        fresh[:, :keep] = self.sum[:, n:]
        fresh_count[:keep] = self.count[n:]
        self.sum, self.count, self.top = fresh, fresh_count, until

    def result(self) -> np.ndarray:
        """``uint8 [H, W]``: the argmax of the averaged logits; call once every tile has been
        added (the last rows' probabilities go to the sink then)."""
        self._finish(self.h)
        return self.mask


__all__ = ["TileGrid", "ProbabilitySink", "BandAverager", "boxes_to_scene", "merge_tile_detections"]
