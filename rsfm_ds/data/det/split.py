"""``rsfm dota split``: cut DOTA images and labels into fixed-size, overlapping patches.

Conventions (docs/detection_data.md), with where they follow the DOTA devkit
(``ImgSplit_multi_process.py``) or mmrotate (``tools/data/dota/split/img_split.py``):

- Scales (devkit): for each rate the image is resized by ``rate`` (``cv2.INTER_CUBIC``) and the
  polygons multiplied by ``rate``; windows are then cut from the resized image.
- Windows (both): ``size`` x ``size`` with stride ``size - gap``, starting at 0; the last window
  of a row or column is moved back to end at the image border; an image side shorter than
  ``size`` gets one window at 0. Windows reaching past the image are padded to ``size`` with
  ``pad_value``, BGR order as written by OpenCV (mmrotate's ``padding_value`` [104, 116, 124]:
  the ImageNet mean colour).
- Names: ``<image id>__<rate>__<x>___<y>``, as the devkit, with ``x, y`` the window's top-left
  corner in the resized image and the rate written shortest-exact (``1``, ``0.5``, ``1.5``), so
  ``P0001__1__0___824``. mmrotate writes the window size in the middle field instead
  (``P0001__1024__0___824``) and does not resize; names are parsed here as rates, so merge
  patches split by this module (or by the devkit), not by mmrotate's splitter.
- Objects (mmrotate): an object goes to every window where ``IoF = area(object inside the
  window) / area(object) >= iof_thr``; its polygon is kept whole (translated, not clipped to the
  window) and its difficult flag is kept. The devkit instead clips the polygon to the window,
  approximates the clip by a quadrilateral and writes objects below the threshold with
  difficult = 2; mmrotate writes 2 for every cut object. Keeping the flag and the full extent
  gives the detector the object's true box. Zero-area polygons are dropped (IoF 0), as in both.
- Labels: a DOTA label file per patch (empty when no object qualifies), with the image's
  ``imagesource`` header and ``gsd / rate`` (a resized pixel covers ``1 / rate`` as much ground).

The IoF of all objects x windows is computed at once (no shapely, no Python loop over pairs):
see :func:`polygon_rect_iof`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from multiprocessing import Pool
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ...errors import ConfigError, DataError, check_output_is_not_input
from ..images import read_bgr, write_image
from ..tiling import window_starts
from .dota import DOTA_V2_CLASSES, DotaAnnotation, parse_dota_label, write_dota_label

PathLike = Union[str, Path]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_PATCH_NAME = re.compile(r"^(?P<image>.+)__(?P<rate>\d+(?:\.\d+)?)__(?P<x>\d+)___(?P<y>\d+)$")


@dataclass(frozen=True)
class SplitConfig:
    """How images are cut into patches.

    Attributes:
        size: window side in pixels of the resized image.
        gap: overlap of neighbouring windows in pixels (stride = size - gap).
        rates: resize factors; each gives its own set of patches (multi-scale: 0.5, 1.0, 1.5).
        iof_thr: keep an object in a window when its area inside / its area >= this.
        pad_value: BGR colour of the padding of windows reaching past the image.
        ext: patch image format: ``.png`` (lossless, default), ``.jpg``, ``.bmp`` or ``.tif``.
    """

    size: int = 1024
    gap: int = 200
    rates: Tuple[float, ...] = (1.0,)
    iof_thr: float = 0.7
    pad_value: Tuple[int, int, int] = (104, 116, 124)
    ext: str = ".png"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"size: must be >= 1, got {self.size}")
        if not 0 <= self.gap < self.size:
            raise ConfigError(f"gap: must be in [0, size={self.size}), got {self.gap}")
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        if not self.rates or any(not (math.isfinite(r) and r > 0) for r in self.rates):
            raise ConfigError(f"rates: need one or more positive numbers, got {self.rates}")
        if len(set(format_rate(r) for r in self.rates)) != len(self.rates):
            raise ConfigError(f"rates: repeated rate in {self.rates}")
        if not 0.0 < self.iof_thr <= 1.0:
            raise ConfigError(f"iof_thr: must be in (0, 1], got {self.iof_thr}")
        if len(self.pad_value) != 3 or any(not 0 <= int(v) <= 255 for v in self.pad_value):
            raise ConfigError(f"pad_value: need 3 integers in [0, 255] (B G R), got {self.pad_value}")
        if self.ext not in (".png", ".jpg", ".bmp", ".tif"):
            raise ConfigError(f"ext: expected .png, .jpg, .bmp or .tif, got {self.ext!r}")


def format_rate(rate: float) -> str:
    """Shortest exact positional decimal of ``rate``: ``1``, ``0.5``, ``1.5``."""
    return np.format_float_positional(float(rate), trim="-")


def format_patch_name(image_id: str, rate: float, x: int, y: int) -> str:
    """``<image id>__<rate>__<x>___<y>``, e.g. ``P0001__1__0___824``."""
    return f"{image_id}__{format_rate(rate)}__{int(x)}___{int(y)}"


@dataclass(frozen=True)
class PatchName:
    """The parts of a patch name."""

    image_id: str
    rate: float
    x: int
    y: int


def parse_patch_name(name: str) -> PatchName:
    """Inverse of :func:`format_patch_name`.

    Raises:
        DataError: ``name`` is not ``<image id>__<rate>__<x>___<y>`` (the message quotes it).
    """
    m = _PATCH_NAME.match(name)
    if m is None or float(m["rate"]) <= 0:
        raise DataError(f"{name!r} is not a patch name <image id>__<rate>__<x>___<y> "
                        f"(e.g. P0001__1__0___824)")
    return PatchName(m["image"], float(m["rate"]), int(m["x"]), int(m["y"]))


def sliding_windows(width: int, height: int, size: int, gap: int) -> np.ndarray:
    """Windows over a ``width`` x ``height`` image: ``int64 [K, 4]`` ``(x0, y0, x0 + size, y0 + size)``.

    Row-major over ``y`` within ``x`` (the devkit's order: columns outer). See the module docstring.
    """
    xs = np.asarray(window_starts(width, size, size - gap), dtype=np.int64)
    ys = np.asarray(window_starts(height, size, size - gap), dtype=np.int64)
    x0 = np.repeat(xs, len(ys))
    y0 = np.tile(ys, len(xs))
    return np.stack([x0, y0, x0 + size, y0 + size], axis=1)


def _clipped_ydx(px: np.ndarray, py: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """``sum over edges of the integral of (clamp(y, y0, y1) - y0) dx over x in [x0, x1]``.

    ``px, py``: ``[P, V]`` closed polygons (edge i joins vertex i and i + 1); ``rects``: ``[P, 4]``.
    For any simple polygon this equals the contour integral of ``y dx`` around the polygon
    clipped to the rectangle: along every vertical line the clamped crossings bound exactly the
    part of the cross-section inside ``[y0, y1]``. So its ratio to the unclipped integral is
    area(polygon inside rectangle) / area(polygon), whatever the orientation. Each edge is
    integrated exactly: clamp(y(x)) is linear between the x where y(x) crosses y0 or y1, so the
    trapezoid rule over those pieces is exact.
    """
    x0, y0, x1, y1 = (rects[:, i:i + 1] for i in range(4))  # [P, 1]
    xa, ya = px, py
    xb, yb = np.roll(px, -1, axis=1), np.roll(py, -1, axis=1)
    dx = xb - xa
    slope = np.divide(yb - ya, dx, out=np.zeros_like(dx), where=dx != 0)
    lo = np.clip(np.minimum(xa, xb), x0, x1)
    hi = np.clip(np.maximum(xa, xb), x0, x1)
    flat = slope == 0
    safe = np.where(flat, 1.0, slope)
    # Where the edge's line meets y = y0 and y = y1 (irrelevant for flat edges: any point works).
    c0 = np.clip(np.where(flat, lo, xa + (y0 - ya) / safe), lo, hi)
    c1 = np.clip(np.where(flat, lo, xa + (y1 - ya) / safe), lo, hi)
    pts = np.sort(np.stack([lo, c0, c1, hi], axis=-1), axis=-1)  # [P, V, 4]
    g = np.clip(ya[..., None] + slope[..., None] * (pts - xa[..., None]), y0[..., None], y1[..., None])
    g = g - y0[..., None]
    integral = (0.5 * (g[..., 1:] + g[..., :-1]) * np.diff(pts, axis=-1)).sum(-1)  # [P, V]
    return np.where(dx > 0, integral, -integral).sum(-1)


def polygon_rect_iof(polygons: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Intersection over the polygon's own area, for every polygon x rectangle.

    Args:
        polygons: ``[N, 2V]`` simple polygons ``x1 y1 ... xV yV`` (any orientation; DOTA: V = 4).
        rects: ``[K, 4]`` axis-aligned ``(x0, y0, x1, y1)``.

    Returns:
        ``float64 [N, K]`` in [0, 1]; 0 for zero-area polygons. Exact up to rounding: pairs whose
        bounding boxes are disjoint or nested are decided from the boxes, the rest are clipped in
        one vectorised pass (:func:`_clipped_ydx`).
    """
    polys = np.asarray(polygons, dtype=np.float64)
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    n, k = len(polys), len(rects)
    px, py = polys[:, 0::2], polys[:, 1::2]  # [N, V]
    area = 0.5 * ((np.roll(px, -1, axis=1) - px) * (np.roll(py, -1, axis=1) + py)).sum(1)  # ydx, signed
    hbb = np.stack([px.min(1), py.min(1), px.max(1), py.max(1)], axis=1)
    lo_x, lo_y, hi_x, hi_y = (hbb[:, None, i] for i in range(4))
    rx0, ry0, rx1, ry1 = (rects[None, :, i] for i in range(4))
    inside = (lo_x >= rx0) & (lo_y >= ry0) & (hi_x <= rx1) & (hi_y <= ry1)  # [N, K]
    touching = (lo_x < rx1) & (hi_x > rx0) & (lo_y < ry1) & (hi_y > ry0)
    iof = np.zeros((n, k), dtype=np.float64)
    valid = np.abs(area) > 0
    iof[inside & valid[:, None]] = 1.0
    pi, ri = np.nonzero(touching & ~inside & valid[:, None])
    if len(pi):
        iof[pi, ri] = np.clip(_clipped_ydx(px[pi], py[pi], rects[ri]) / area[pi], 0.0, 1.0)
    return iof


@dataclass
class Patch:
    """One window of one image at one rate.

    Attributes:
        name: :func:`format_patch_name`.
        window: ``(x0, y0, x1, y1)`` in the resized image.
        annotation: the objects kept, in patch coordinates (None when splitting without labels).
        objects: ``int64 [M]`` indices of those objects in the image's annotation.
    """

    name: str
    window: Tuple[int, int, int, int]
    annotation: Optional[DotaAnnotation]
    objects: np.ndarray


def split_annotation(ann: Optional[DotaAnnotation], image_id: str, width: int, height: int,
                     rate: float, config: SplitConfig) -> List[Patch]:
    """The patches of one image at one rate (geometry only, no pixels).

    Args:
        ann: the image's objects in original pixels, or None (unlabelled image).
        image_id: the image's id (patch name prefix).
        width, height: size of the image *resized by rate*.
        rate: the resize factor applied to ``ann``'s polygons.
        config: window size, gap, IoF threshold.
    """
    windows = sliding_windows(width, height, config.size, config.gap)
    if ann is not None:
        polys = ann.polygons.astype(np.float64) * rate
        keep = polygon_rect_iof(polys, windows) >= config.iof_thr  # [N, K]
        gsd = None if ann.gsd is None else ann.gsd / rate
    patches = []
    for k, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        patch_ann, sel = None, np.zeros(0, dtype=np.int64)
        if ann is not None:
            sel = np.flatnonzero(keep[:, k])
            shifted = polys[sel] - np.array([x0, y0] * 4, dtype=np.float64)
            patch_ann = replace(ann, polygons=shifted, labels=ann.labels[sel],
                                difficult=ann.difficult[sel], gsd=gsd, skipped=0)
        patches.append(Patch(format_patch_name(image_id, rate, x0, y0), (x0, y0, x1, y1), patch_ann, sel))
    return patches


def crop_window(image: np.ndarray, window: Sequence[int], pad_value: Sequence[int]) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` of ``[H, W, 3]``, padded with ``pad_value`` past the border."""
    x0, y0, x1, y1 = window
    out = np.empty((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    out[...] = np.asarray(pad_value, dtype=image.dtype)
    part = image[y0:y1, x0:x1]
    out[:part.shape[0], :part.shape[1]] = part
    return out


def resize_by_rate(image: np.ndarray, rate: float) -> np.ndarray:
    """Resize by ``rate`` with bicubic interpolation (the devkit's), the identity for rate 1."""
    if rate == 1.0:
        return image
    return cv2.resize(image, None, fx=rate, fy=rate, interpolation=cv2.INTER_CUBIC)


@dataclass
class SplitReport:
    """What :func:`split_dota` wrote."""

    images: int = 0
    patches: int = 0
    objects: int = 0
    """Objects read from the label files."""
    patch_objects: int = 0
    """Object entries written over all patches (an object can be in several)."""
    dropped: int = 0
    """Objects in no patch at any rate (IoF below the threshold everywhere, or zero area)."""

    def add(self, other: "SplitReport") -> None:
        for name in ("images", "patches", "objects", "patch_objects", "dropped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def split_image(image_path: PathLike, ann: Optional[DotaAnnotation], out_dir: PathLike,
                config: SplitConfig = SplitConfig(), image_id: Optional[str] = None) -> SplitReport:
    """Write the patches of one image: ``out_dir/images/<name><ext>`` and, with ``ann``,
    ``out_dir/labelTxt/<name>.txt``.

    Args:
        image_path: the full image.
        ann: its objects, or None for an unlabelled (test) image.
        out_dir: output root (``images/`` and ``labelTxt/`` are created).
        config: see :class:`SplitConfig`.
        image_id: patch name prefix (default: the image's file stem).
    """
    out_dir = Path(out_dir)
    image_id = image_id or Path(image_path).stem
    image = read_bgr(image_path)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if ann is not None:
        (out_dir / "labelTxt").mkdir(parents=True, exist_ok=True)
    report = SplitReport(images=1, objects=0 if ann is None else len(ann))
    placed = np.zeros(0 if ann is None else len(ann), dtype=bool)
    for rate in config.rates:
        resized = resize_by_rate(image, rate)
        height, width = resized.shape[:2]
        patches = split_annotation(ann, image_id, width, height, rate, config)
        for patch in patches:
            placed[patch.objects] = True
            crop = crop_window(resized, patch.window, config.pad_value)
            target = out_dir / "images" / f"{patch.name}{config.ext}"
            write_image(target, crop)
            if patch.annotation is not None:
                write_dota_label(out_dir / "labelTxt" / f"{patch.name}.txt", patch.annotation)
                report.patch_objects += len(patch.annotation)
        report.patches += len(patches)
    report.dropped = int((~placed).sum())
    return report


def _find_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected the DOTA images/ folder)")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _split_one(args: Tuple[Path, Optional[Path], Path, SplitConfig, Tuple[str, ...]]) -> SplitReport:
    image_path, label_path, out_dir, config, classes = args
    ann = None if label_path is None else parse_dota_label(label_path, classes)
    return split_image(image_path, ann, out_dir, config)


def split_dota(src: PathLike, out: PathLike, config: SplitConfig = SplitConfig(),
               classes: Sequence[str] = DOTA_V2_CLASSES, workers: int = 1) -> SplitReport:
    """Split every image of ``src/images/`` (with ``src/labelTxt/<id>.txt`` when that folder exists)
    into ``out/images/`` and ``out/labelTxt/``.

    Args:
        src: a DOTA folder with ``images/`` and optionally ``labelTxt/``.
        out: output folder (created; existing patch files of the same name are overwritten).
        config: see :class:`SplitConfig`.
        classes: class list the label files are checked against.
        workers: processes (images are independent).

    Raises:
        DataError: no ``images/`` folder, or ``labelTxt/`` exists but lacks an image's file.
        AnnotationError: a malformed label file (named with its line).
    """
    src, out = Path(src), Path(out)
    check_output_is_not_input(out, [src])
    images = _find_images(src / "images")
    label_dir = src / "labelTxt"
    jobs = []
    for image_path in images:
        label_path = None
        if label_dir.is_dir():
            label_path = label_dir / f"{image_path.stem}.txt"
            if not label_path.is_file():
                raise DataError(f"{label_path}: no label file for image {image_path.name}")
        jobs.append((image_path, label_path, out, config, tuple(classes)))
    report = SplitReport()
    if workers > 1 and len(jobs) > 1:
        with Pool(min(workers, len(jobs))) as pool:
            for r in pool.imap_unordered(_split_one, jobs):
                report.add(r)
    else:
        for job in jobs:
            report.add(_split_one(job))
    return report
