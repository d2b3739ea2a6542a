"""One scene through a fine-tuned model, tile by tile: the inputs of ``rsfm predict`` checked
and read by window, detections merged across tiles, segmentation logits averaged band by band
(:mod:`rsfm_ds.engine.predict` runs these over many files and writes the outputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check
from ..data.det.dataset import SIZE_DIVISOR
from ..data.raster import (RASTER_SUFFIXES, RASTERIO_SUFFIXES, BandNormalization, RasterInfo, raster_info,
                           read_raster, valid_mask)
from ..errors import DataError
from ..evaluation.scene_tiling import (BandAverager, ProbabilitySink, TileGrid, boxes_to_scene,
                                      merge_tile_detections)
from ..evaluation.sliding_window import sliding_window_inference
from ..ops.box_geometry import box_to_polygon
from .inference import LoadedModel

PathLike = Union[str, Path]
NODATA_CLASS = 255
"""Mask value of pixels that are nodata in the scene (also the GeoTIFF's declared nodata)."""

# ---------------------------------------------------------------------------- inputs


def list_inputs(paths: Sequence[PathLike]) -> List[Path]:
    """The raster files named by ``paths``: files as given, folders as every raster file in them
    (sorted, not recursive).

    Raises:
        DataError: a path that does not exist, a file of an unknown kind, a folder without rasters,
            two inputs with the same stem (their outputs would collide), or no input at all.
    """
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no raster files in this folder ({', '.join(RASTER_SUFFIXES)})")
            out.extend(found)
        elif not p.exists():
            raise DataError(f"{p}: no such file or folder")
        elif p.suffix.lower() not in RASTER_SUFFIXES:
            raise DataError(f"{p}: not a raster file (expected one of {', '.join(RASTER_SUFFIXES)})")
        else:
            out.append(p)
    if not out:
        raise DataError("inputs: no input files")
    seen: Dict[str, Path] = {}
    for p in out:
        if p.stem in seen and seen[p.stem].resolve() != p.resolve():
            raise DataError(f"{p}: same name as {seen[p.stem]}; their outputs would collide ({p.stem}.*)")
        seen[p.stem] = p
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class SceneInput:
    """One input checked against the model: what is read and how it is normalised."""

    info: RasterInfo
    bands: Optional[Tuple[int, ...]]
    """1-based bands read (None: all)."""
    normalization: BandNormalization

    @property
    def path(self) -> Path:
        return Path(self.info.path)


def check_input(path: PathLike, bands: Optional[Tuple[int, ...]], normalization: BandNormalization,
                in_chans: int, require_8bit: bool = False) -> SceneInput:
    """``path`` as the model reads it.

    Raises:
        DataError: the file is unreadable, lacks a band in ``bands``, gives another band count
            than the model's ``in_chans`` (message names the file and both counts), or is not
            8-bit where ``require_8bit`` (the ImageNet default normalisation, for 8-bit RGB only).
    """
    info = raster_info(path)
    if require_8bit and info.dtype != "uint8":
        raise DataError(f"{path}: {info.dtype} pixels but the model's config sets no normalisation (the default, "
                        f"ImageNet statistics x 255, is for 8-bit RGB); set data.band_mean and data.band_std in "
                        f"the file's raw units, or data.band_stats, as the model was fine-tuned")
    if bands is not None:
        bad = [b for b in bands if b > info.count]
        if bad:
            raise DataError(f"{path}: has {info.count} bands; no band {bad[0]} (bands: {list(bands)})")
    count = len(bands) if bands is not None else info.count
    if count != in_chans:
        how = f"bands {list(bands)}" if bands is not None else f"all {info.count} bands"
        raise DataError(f"{path}: reading {how} gives {count} bands but the model takes {in_chans} "
                        f"(choose bands with --bands or data.bands)")
    if normalization.bands != count:
        raise DataError(f"{path}: {count} bands but the input normalisation has {normalization.bands} "
                        f"(data.band_mean / data.band_std)")
    return SceneInput(info, bands, normalization)


def read_tile(scene: SceneInput, window: Tuple[int, int, int, int], tile: int,
              decoded: Optional[np.ndarray] = None) -> Tuple[torch.Tensor, np.ndarray]:
    """One tile: ``(float32 [C, tile, tile] normalised, zero-padded; bool [h, w] valid)`` for the
    scene window ``(col, row, w, h)``. A pixel is invalid where every band holds the scene's
    declared nodata value; invalid pixels, and non-finite values of float rasters, are set to 0
    (the mean) after normalisation.
    ``decoded``: the whole image ``[C, H, W]`` already in memory (a JPEG / PNG, which has no windowed
    reads), sliced instead of reading the file."""
    col, row, w, h = window
    if decoded is not None:
        raw = decoded[:, row:row + h, col:col + w]
    else:
        raw = read_raster(scene.path, window=(col, row, w, h), bands=scene.bands)
    valid = valid_mask(raw, scene.info.nodata)  # a NaN nodata too (NaN == NaN is False)
    x = scene.normalization.apply(raw)
    x[:, ~valid] = 0.0
    if raw.dtype.kind == "f":  # a NaN / inf in some bands of a valid pixel would spread through the model
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    out = torch.from_numpy(x)
    return F.pad(out, (0, tile - w, 0, tile - h)), valid


def _tile_batches(scene: SceneInput, grid: TileGrid, batch_size: int, progress: bool
                  ) -> Iterator[Tuple[torch.Tensor, np.ndarray, List[np.ndarray]]]:
    """``(tiles [n, C, tile, tile], origins int64 [n, 2], valid masks)`` in grid order."""
    from tqdm import tqdm

    origins = grid.origins()
    # JPEG / PNG decode whole: once per scene, not once per tile (8-bit, so small next to a GeoTIFF).
    decoded = None if scene.path.suffix.lower() in RASTERIO_SUFFIXES else read_raster(scene.path, bands=scene.bands)
    bar = tqdm(total=len(origins), desc=scene.path.name, unit="tile", disable=not progress, leave=False)
    try:
        for k in range(0, len(origins), batch_size):
            chunk = origins[k:k + batch_size]
            read = [read_tile(scene, grid.window(o), grid.tile, decoded) for o in chunk]
            yield torch.stack([t for t, _ in read]), chunk, [v for _, v in read]
            bar.update(len(chunk))
    finally:
        bar.close()


# ---------------------------------------------------------------------------- detection


@dataclass
class SceneDetections:
    """Detections of one scene in scene pixels, best first.

    Attributes:
        boxes: ``float32 [D, 5]`` le90 ``(cx, cy, w, h, theta)``.
        polygons: ``float64 [D, 8]`` their corners ``x1 y1 ... x4 y4``.
        scores: ``float32 [D]``; labels: ``int64 [D]``.
        tiles: tiles run; before_merge: detections of all tiles before the cross-tile NMS.
    """

    boxes: np.ndarray
    polygons: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    tiles: int
    before_merge: int


@torch.no_grad()
def predict_scene_detections(loaded: LoadedModel, scene: SceneInput, tile: int, overlap: int,
                             batch_size: int = 4, iou_thr: float = 0.1, progress: bool = False) -> SceneDetections:
    """Oriented R-CNN over ``scene`` in tiles, merged across tiles (module docstring)."""
    grid = TileGrid(scene.info.height, scene.info.width, tile, overlap)
    side = -(-tile // SIZE_DIVISOR) * SIZE_DIVISOR  # the batch padding of collate_detection
    boxes, scores, labels = [], [], []
    for tiles, origins, _ in _tile_batches(scene, grid, batch_size, progress):
        sizes = [(grid.window(o)[3], grid.window(o)[2]) for o in origins]
        images = F.pad(tiles, (0, side - tile, 0, side - tile)).to(loaded.device, loaded.dtype)
        for det, origin in zip(loaded.model({"images": images, "image_sizes": sizes}), origins):
            b = det.boxes.float().cpu()
            boxes.append(boxes_to_scene(b, torch.from_numpy(origin).expand(len(b), 2)))
            scores.append(det.scores.float().cpu())
            labels.append(det.labels.cpu())
    b = torch.cat(boxes) if boxes else torch.zeros(0, 5)
    s = torch.cat(scores) if scores else torch.zeros(0)
    lab = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    keep = merge_tile_detections(b, s, lab, iou_thr)
    kept = b[keep]
    return SceneDetections(kept.numpy(), box_to_polygon(kept.double()).numpy(), s[keep].numpy(),
                           lab[keep].numpy(), len(grid), int(b.shape[0]))


# ---------------------------------------------------------------------------- segmentation


@dataclass
class SceneSegmentation:
    """The class mask of one scene.

    Attributes:
        mask: ``uint8 [H, W]`` class indices, :data:`NODATA_CLASS` on nodata pixels.
        tiles: tiles run.
    """

    mask: np.ndarray
    tiles: int


@torch.no_grad()
def predict_scene_segmentation(loaded: LoadedModel, scene: SceneInput, num_classes: int, tile: int, overlap: int,
                               batch_size: int = 4, probabilities: Optional[ProbabilitySink] = None,
                               progress: bool = False) -> SceneSegmentation:
    """UperNet over ``scene`` in tiles, logits averaged where tiles overlap (module docstring).

    ``probabilities``: receives the softmax of the averaged logits x 255 (uint8, what
    ``<stem>_probs.tif`` holds) a band of finished rows at a time, top to bottom (nodata pixels
    included: the mask marks them)."""
    info = scene.info
    # uint8 mask with NODATA_CLASS (255) reserved: class indices must stay below it.
    check(1 <= num_classes <= NODATA_CLASS, "num_classes",
          f"a uint8 mask with {NODATA_CLASS} for nodata holds at most {NODATA_CLASS} classes, got {num_classes}")
    grid = TileGrid(info.height, info.width, tile, overlap)
    acc = BandAverager(num_classes, info.height, info.width, tile, probabilities)
    valid = np.zeros((info.height, info.width), dtype=bool)
    for tiles, origins, masks in _tile_batches(scene, grid, batch_size, progress):
        images = tiles.to(loaded.device, loaded.dtype)
        # One window per tile: sliding_window_inference brings strided logits to tile resolution.
        logits = sliding_window_inference(loaded.model.logits, images, num_classes, crop=tile, stride=tile,
                                          batch_size=len(images)).cpu()
        for out, origin, m in zip(logits, origins, masks):
            col, row, w, h = grid.window(origin)
            acc.add(out[:, :h, :w], col, row, w, h)
            valid[row:row + h, col:col + w] |= m
    mask = acc.result()
    mask[~valid] = NODATA_CLASS
    return SceneSegmentation(mask, len(grid))


__all__ = ["NODATA_CLASS", "list_inputs", "SceneInput", "check_input", "read_tile", "SceneDetections",
           "predict_scene_detections", "SceneSegmentation", "predict_scene_segmentation"]
