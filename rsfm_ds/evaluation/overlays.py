"""Pictures of inputs and results a person can look at: any raster as 8-bit RGB, oriented boxes
and segmentation masks drawn over it, panels side by side, PNG files.

Everything here takes and returns ``uint8 [H, W, 3]`` arrays in RGB order (OpenCV's BGR appears
only inside :func:`write_png`), so the pieces compose: ``side_by_side([draw_polygons(display_rgb(
raster), ...), blend_mask(display_rgb(raster), ...)], titles)``.

The drawing follows mmrotate 0.x's ``mmrotate/core/visualization/image.py``
(``imshow_det_rbboxes``): each box is its closed outline in its class colour, labelled
``class|score`` at its first corner; masks are blended over the image as mmseg 1.x's
``mmseg/visualization/local_visualizer.py`` does (``(1 - alpha) * image + alpha * colour``),
with two differences: pixels of the ignore index keep the image's colour (mmseg blends them with
black, darkening unlabelled areas) and values are rounded rather than truncated. Colours come from
one fixed table (mmrotate and mmseg fall back to a seeded random palette for classes they do not
know), so a class keeps its colour across runs and reports.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..data.images import write_image
from ..errors import DataError

# Distinct, saturated colours (RGB) for the first classes; more classes continue around the hue
# circle in golden-ratio steps, which keeps neighbouring indices far apart in hue.
_BASE_PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
], dtype=np.uint8)

STRETCH_SAMPLES = 1_000_000
"""Valid pixels, at most, from which :func:`display_rgb` measures a band's percentiles."""
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TITLE_HEIGHT = 22  # px above each panel of side_by_side
_GAP = 4  # px between panels


def class_palette(n: int) -> np.ndarray:
    """``uint8 [n, 3]`` RGB colours, one per class index; the same ``n`` always gives the same
    colours, and a prefix of a longer palette is the shorter one (class ``i`` keeps its colour)."""
    if n < 0:
        raise ValueError(f"class_palette: n must be >= 0, got {n}")
    if n <= len(_BASE_PALETTE):
        return _BASE_PALETTE[:n].copy()
    extra = np.arange(n - len(_BASE_PALETTE))
    hues = (0.11 + extra * 0.618033988749895) % 1.0
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues]) * 255
    return np.concatenate([_BASE_PALETTE, np.round(rgb).astype(np.uint8)])


def display_rgb(raster: np.ndarray, rgb: Optional[Sequence[int]] = (0, 1, 2),
                nodata: Optional[float] = None) -> np.ndarray:
    """An 8-bit RGB picture ``uint8 [H, W, 3]`` of ``raster [C, H, W]`` (any dtype).

    Args:
        raster: band-first pixels as :func:`rsfm_ds.data.raster.read_raster` returns them.
        rgb: the 0-based bands shown as red, green, blue (e.g. ``(2, 1, 0)`` for a blue, green,
            red, nir Sentinel-2 stack); None: the first three bands, or the one band as grey.
        nodata: the raster's nodata value; a pixel where any shown band holds it (or NaN) is black
            and takes no part in the stretch.

    ``uint8`` bands are shown as they are. Other types are stretched per band between the 2nd
    and 98th percentile of the valid pixels (QGIS's default cumulative-count cut for multi-band
    rasters), clipped to 0..255: a uint16 scene with a few bright outliers still shows its land
    cover instead of a black picture. Above :data:`STRETCH_SAMPLES` valid pixels the percentiles
    are measured on a regular subsample of them.
    """
    raster = np.asarray(raster)
    if raster.ndim != 3:
        raise DataError(f"display_rgb: expected a raster [C, H, W], got shape {raster.shape}")
    count = raster.shape[0]
    if rgb is None:
        rgb = (0, 1, 2) if count >= 3 else (0, 0, 0)
    rgb = tuple(int(b) for b in rgb)
    if len(rgb) != 3 or any(b < 0 or b >= count for b in rgb):
        raise DataError(f"display_rgb: rgb must name 3 bands in 0..{count - 1}, got {rgb}")
    bands = raster[list(rgb)]  # [3, H, W]
    invalid = np.zeros(bands.shape[1:], dtype=bool)
    if nodata is not None:
        invalid |= np.any(bands == nodata, axis=0)
    if np.issubdtype(bands.dtype, np.floating):
        invalid |= np.any(np.isnan(bands), axis=0)
    if bands.dtype == np.uint8:
        out = bands.copy()
    else:
        # Percentiles from at most STRETCH_SAMPLES valid pixels, taken at a regular stride (as
        # viewers estimate them), so a whole scene costs no more than a megapixel to measure.
        valid_flat = np.flatnonzero(~invalid)
        valid_flat = valid_flat[::max(1, -(-len(valid_flat) // STRETCH_SAMPLES))]
        out = np.empty(bands.shape, dtype=np.uint8)
        for i, band in enumerate(bands):  # band by band: one float32 copy of a band at a time
            sample = band.reshape(-1)[valid_flat].astype(np.float64)
            lo, hi = np.percentile(sample, [2.0, 98.0]) if len(sample) else (0.0, 1.0)
            # A constant band (hi == lo) maps to black rather than dividing by zero.
            scale = np.float32(255.0 / (hi - lo)) if hi > lo else np.float32(0.0)
            stretched = (band.astype(np.float32) - np.float32(lo)) * scale
            out[i] = np.round(np.clip(np.nan_to_num(stretched), 0, 255))
    out[:, invalid] = 0
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def described_rgb(band_names: Sequence[str]) -> Optional[Tuple[int, int, int]]:
    """The 0-based ``(red, green, blue)`` bands of a file whose band descriptions name them
    (case-insensitive, e.g. a Sentinel-2 stack described blue, green, red, nir gives ``(2, 1, 0)``);
    None when they do not."""
    names = [str(n).strip().lower() for n in band_names]
    if not {"red", "green", "blue"} <= set(names):
        return None
    return names.index("red"), names.index("green"), names.index("blue")


def _check_image(image: np.ndarray, who: str) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{who}: expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")


def _text_colour(colour: np.ndarray) -> Tuple[int, int, int]:
    """Black on light colours, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_polygons(image: np.ndarray, polygons: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  scores: Optional[np.ndarray] = None, thickness: int = 2, font_scale: float = 0.4) -> np.ndarray:
    """``image`` with oriented boxes drawn on it (a new array; ``image`` is not changed).

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        polygons: ``float [N, 8]`` corners ``x1, y1, ..., x4, y4`` in pixels of ``image`` (DOTA's
            order; pixel centres at integer coordinates, as OpenCV draws).
        labels: ``int [N]`` class indices into ``class_names``.
        class_names: the name of each class index; also fixes the colours (``class_palette``).
        scores: optional ``float [N]`` confidences, written after the name as ``name|0.87``.
        thickness: outline width in pixels.
        font_scale: OpenCV font scale of the labels.

    Raises:
        DataError: shapes that do not fit, or a label outside ``class_names``.
    """
    _check_image(image, "draw_polygons")
    polygons = np.asarray(polygons, dtype=np.float64).reshape(-1, 8) if np.size(polygons) else np.zeros((0, 8))
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(polygons):
        raise DataError(f"draw_polygons: {len(polygons)} polygons but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(f"draw_polygons: labels must lie in 0..{len(class_names) - 1} (one per class name), "
                        f"got {labels.min()}..{labels.max()}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(labels):
            raise DataError(f"draw_polygons: {len(labels)} polygons but {len(scores)} scores")
    out = image.copy()
    palette = class_palette(len(class_names))
    corners = np.round(polygons.reshape(-1, 4, 2)).astype(np.int32)  # [N, 4, 2]
    # One polylines call per class present: OpenCV draws a whole list of outlines in one colour.
    for c in np.unique(labels):
        chosen = corners[labels == c]
        cv2.polylines(out, list(chosen), True, tuple(int(v) for v in palette[c]), thickness, cv2.LINE_8)
    # Text has no batched OpenCV call: one putText per box, after all outlines so labels stay on top.
    for i in range(len(labels)):
        text = class_names[labels[i]] + (f"|{scores[i]:.2f}" if scores is not None else "")
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, 1)
        x, y = int(corners[i, 0, 0]), int(corners[i, 0, 1])
        colour = palette[labels[i]]
        cv2.rectangle(out, (x, y - th - base), (x + tw, y), tuple(int(v) for v in colour), cv2.FILLED)
        cv2.putText(out, text, (x, y - base), _FONT, font_scale, _text_colour(colour), 1, cv2.LINE_AA)
    return out


def blend_mask(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
               ignore_index: int = 255) -> np.ndarray:
    """``image`` with a class mask blended over it: ``round((1 - alpha) * image + alpha *
    palette[mask])`` per pixel and channel; pixels of ``ignore_index`` keep the image's colour.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        mask: ``int [H, W]`` class indices (an index PNG or a prediction).
        palette: ``uint8 [K, 3]`` RGB colour of each class.
        alpha: the mask's weight in 0..1.
        ignore_index: the label of unlabelled pixels.

    Raises:
        DataError: shapes that do not fit, or a class index outside the palette.
    """
    _check_image(image, "blend_mask")
    mask = np.asarray(mask)
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if mask.shape != image.shape[:2]:
        raise DataError(f"blend_mask: mask {mask.shape} does not match image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"blend_mask: alpha must lie in 0..1, got {alpha}")
    labelled = mask != ignore_index
    if labelled.any():
        values = mask[labelled]
        if values.min() < 0 or values.max() >= len(palette):
            raise DataError(f"blend_mask: mask values must lie in 0..{len(palette) - 1} (one per palette colour) "
                            f"or be {ignore_index} (ignored), got {values.min()}..{values.max()}")
    colours = palette[np.where(labelled, mask, 0).astype(np.int64)]  # [H, W, 3]
    blended = np.round((1.0 - alpha) * image.astype(np.float64) + alpha * colours).astype(np.uint8)
    return np.where(labelled[..., None], blended, image)


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str]) -> np.ndarray:
    """One ``uint8 [H, W, 3]`` picture of ``panels`` left to right, each under its title.

    Panels may differ in size: shorter ones are padded with black at the bottom; a 4 px black gap
    separates them.
    """
    if not panels or len(panels) != len(titles):
        raise DataError(f"side_by_side: need one title per panel, got {len(panels)} panels and {len(titles)} titles")
    for p in panels:
        _check_image(p, "side_by_side")
    height = max(p.shape[0] for p in panels) + _TITLE_HEIGHT
    width = sum(p.shape[1] for p in panels) + _GAP * (len(panels) - 1)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    x = 0
    for panel, title in zip(panels, titles):
        h, w = panel.shape[:2]
        out[_TITLE_HEIGHT:_TITLE_HEIGHT + h, x:x + w] = panel
        cv2.putText(out, str(title), (x + 4, _TITLE_HEIGHT - 7), _FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        x += w + _GAP
    return out


def legend(class_names: Sequence[str], palette: np.ndarray, width: int = 0) -> np.ndarray:
    """A ``uint8 [H, W, 3]`` key of the class colours: one 16 px row per class, a swatch of
    ``palette[i]`` then ``class_names[i]``, on black; at least ``width`` px wide."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) < len(class_names):
        raise DataError(f"legend: {len(class_names)} class names but only {len(palette)} palette colours")
    row = 16
    text_w = max([cv2.getTextSize(str(n), _FONT, 0.4, 1)[0][0] for n in class_names] + [0])
    out = np.zeros((row * len(class_names) + 4, max(width, text_w + 32), 3), dtype=np.uint8)
    for i, name in enumerate(class_names):
        y = 2 + i * row
        out[y + 2:y + row - 2, 4:20] = palette[i]
        cv2.putText(out, str(name), (26, y + row - 4), _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_png(path: Union[str, Path], rgb: np.ndarray) -> Path:
    """Write an RGB picture ``uint8 [H, W, 3]`` as the PNG ``path`` (folders created); returns it."""
    _check_image(rgb, "write_png")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, np.ascontiguousarray(rgb[..., ::-1]))


__all__ = ["STRETCH_SAMPLES", "blend_mask", "class_palette", "described_rgb", "display_rgb", "draw_polygons", "legend",
           "side_by_side", "write_png"]
