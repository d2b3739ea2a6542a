"""``rsfm dota split``: cut DOTA images and labels into fixed-size, overlapping patches.

Two rules (``SplitConfig.rule``, docs/detection_data.md), each writing the labels of its
reference exactly; :mod:`.split_rules` holds what each does with an object cut by a window.

``devkit`` -- the DOTA devkit's ``ImgSplit_multi_process.py`` (``splitbase.SplitSingle``):

- Scales: for each rate the image is resized by ``rate`` (``cv2.resize``, ``fx = fy = rate``,
  ``INTER_CUBIC``; the identity for rate 1) and the label coordinates, truncated to integers,
  are multiplied by ``rate``; windows of ``size`` px are then cut from the resized image.
- Names ``<image id>__<rate>__<x>___<y>``, ``x, y`` the window corner in the resized image and
  the rate as the devkit's ``str(rate)`` of the rate a user passes (``1``, ``0.5``, ``1.5``):
  written shortest-exact here, so ``P0001__1__0___824``.
- Padding 0 (black) where a window reaches past the resized image.

``mmrotate`` -- mmrotate 0.x ``tools/data/dota/split/img_split.py`` (``get_sliding_window``,
``crop_and_save_img``, ``main``):

- Scales: the image is not resized; a rate changes the window instead, to ``int(size / rate)``
  px with gap ``int(gap / rate)`` in image pixels (the detector's resize brings a patch to
  ``size``). Windows of all rates are pooled and those whose share inside the image
  (clipped window area / window area) is ``<= img_rate_thr`` are dropped; when none passes,
  those within 0.01 of the largest share are kept.
- Names ``<image id>__<window side>__<x>___<y>``, e.g. ``P0001__2048__0___0`` at rate 0.5.
- Padding ``(104, 116, 124)`` (B, G, R: the ImageNet mean colour), from its ``split_configs``.

Both: windows step by ``size - gap`` from 0 and the last of a row or column is moved back to end
at the border (one window at 0 when the side is not longer than the window), columns outer
(:func:`sliding_windows`); a label file per patch, empty when no object is written, with the
image's ``imagesource`` header and ``gsd / rate`` for a resized patch. Names are parsed back by
:func:`parse_patch_name`, which tells the two apart (a rate is a decimal or below
:data:`MIN_NAMED_SIZE`; a window side is an integer from it up).

Pixels (:mod:`.split_pixels`): 8-bit images are read, padded and written as the references do;
raster scenes (GeoTIFFs that are georeferenced, multi-band or not 8-bit) give GeoTIFF patches
with their bands, data type, nodata value and georeference.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import ConfigError, DataError, check_output_is_not_input
from ..raster import RASTERIO_SUFFIXES
from ..tiling import window_starts
from .dota import DOTA_V2_CLASSES, DotaAnnotation, parse_dota_label, write_dota_label
from .split_pixels import open_split_image
from .split_rules import WindowObjects, devkit_window_objects, mmrotate_window_objects, self_intersecting

PathLike = Union[str, Path]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SCENE_SUFFIXES = IMAGE_EXTENSIONS + tuple(s for s in RASTERIO_SUFFIXES if s not in IMAGE_EXTENSIONS)
"""Images a DOTA-format folder may hold: the DOTA formats and every raster format read through GDAL."""
SplitRule = Literal["devkit", "mmrotate"]
SPLIT_RULES: Tuple[str, ...] = ("devkit", "mmrotate")
RULE_PAD_VALUES: Dict[str, Tuple[int, int, int]] = {"devkit": (0, 0, 0), "mmrotate": (104, 116, 124)}
"""Each rule's padding colour (B, G, R): the devkit's zeros, mmrotate's ``padding_value``."""
PatchNaming = Literal["auto", "rate", "size"]
PATCH_NAMINGS: Tuple[str, ...] = ("auto", "rate", "size")
MIN_NAMED_SIZE = 16
"""An integer middle field of a patch name from this value up is a window side (mmrotate), below
it a rate (devkit): no useful rate is that large, and no useful window that small."""
_PATCH_NAME = re.compile(r"^(?P<image>.+)__(?P<mid>\d+(?:\.\d+)?)__(?P<x>\d+)___(?P<y>\d+)$")


@dataclass(frozen=True)
class SplitConfig:
    """How images are cut into patches.

    Attributes:
        rule: whose labels to reproduce: ``"devkit"`` (the DOTA devkit's
            ``ImgSplit_multi_process.py``: cut objects clipped to the window) or ``"mmrotate"``
            (mmrotate's ``img_split.py``: cut objects kept whole). See the module docstring.
        size: window side in pixels of the resized image (mmrotate: ``int(size / rate)`` pixels
            of the image).
        gap: overlap of neighbouring windows, same units as ``size`` (stride = size - gap).
        rates: resize factors; each gives its own set of patches (multi-scale: 0.5, 1.0, 1.5).
        iof_thr: devkit: a cut object keeps its difficulty when ``IoF > iof_thr``, else it is
            written with difficulty 2; mmrotate: an object is written when ``IoF >= iof_thr``.
            ``IoF`` = area of the object inside the window / its area. Both references: 0.7.
        pad_value: B, G, R colour of the padding of windows reaching past an 8-bit image; None:
            the rule's (:data:`RULE_PAD_VALUES`). Raster scenes are padded with their nodata value
            or 0 (:mod:`.split_pixels`).
        img_rate_thr: mmrotate only: windows whose share inside the image is not above this
            are dropped (mmrotate's ``img_rate_thr``, 0.6).
        ext: patch format of 8-bit images: ``.png`` (lossless, default), ``.jpg``, ``.bmp`` or
            ``.tif``; raster scenes give GeoTIFF patches (:mod:`.split_pixels`).
    """

    rule: SplitRule = "devkit"
    size: int = 1024
    gap: int = 200
    rates: Tuple[float, ...] = (1.0,)
    iof_thr: float = 0.7
    pad_value: Optional[Tuple[int, int, int]] = None
    img_rate_thr: float = 0.6
    ext: str = ".png"

    def __post_init__(self) -> None:
        if self.rule not in SPLIT_RULES:
            raise ConfigError(f"rule: expected one of {', '.join(SPLIT_RULES)}, got {self.rule!r}")
        if self.size < 1:
            raise ConfigError(f"size: must be >= 1, got {self.size}")
        if not 0 <= self.gap < self.size:
            raise ConfigError(f"gap: must be in [0, size={self.size}), got {self.gap}")
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        if not self.rates or any(not (math.isfinite(r) and r > 0) for r in self.rates):
            raise ConfigError(f"rates: need one or more positive numbers, got {self.rates}")
        if len(set(format_rate(r) for r in self.rates)) != len(self.rates):
            raise ConfigError(f"rates: repeated rate in {self.rates}")
        if self.rule == "devkit" and max(self.rates) >= MIN_NAMED_SIZE:
            raise ConfigError(f"rates: devkit rates must be below {MIN_NAMED_SIZE} (larger ones read as "
                              f"mmrotate window sides in patch names), got {max(self.rates)}")
        if self.rule == "mmrotate":
            sides = [int(self.size / r) for r in self.rates]
            if len(set(sides)) != len(sides):
                raise ConfigError(f"rates: mmrotate names patches by window side; rates {self.rates} "
                                  f"give the same side twice ({sides})")
            for rate, side in zip(self.rates, sides):
                if side < MIN_NAMED_SIZE or side <= int(self.gap / rate):
                    raise ConfigError(f"size: mmrotate window at rate {format_rate(rate)} is {side} px with "
                                      f"gap {int(self.gap / rate)}: need a side >= {MIN_NAMED_SIZE} "
                                      f"above its gap")
        if not 0.0 < self.iof_thr <= 1.0:
            raise ConfigError(f"iof_thr: must be in (0, 1], got {self.iof_thr}")
        if self.pad_value is not None:
            if len(self.pad_value) != 3 or any(not 0 <= int(v) <= 255 for v in self.pad_value):
                raise ConfigError(f"pad_value: need 3 integers in [0, 255] (B G R), got {self.pad_value}")
            object.__setattr__(self, "pad_value", tuple(int(v) for v in self.pad_value))
        if not 0.0 <= self.img_rate_thr < 1.0:
            raise ConfigError(f"img_rate_thr: must be in [0, 1), got {self.img_rate_thr}")
        if self.ext not in (".png", ".jpg", ".bmp", ".tif"):
            raise ConfigError(f"ext: expected .png, .jpg, .bmp or .tif, got {self.ext!r}")

    @property
    def padding(self) -> Tuple[int, int, int]:
        """``pad_value``, or the rule's when unset."""
        return RULE_PAD_VALUES[self.rule] if self.pad_value is None else self.pad_value


def format_rate(rate: float) -> str:
    """Shortest exact positional decimal of ``rate``: ``1``, ``0.5``, ``1.5``."""
    return np.format_float_positional(float(rate), trim="-")


def format_patch_name(image_id: str, rate: float, x: int, y: int) -> str:
    """The devkit's ``<image id>__<rate>__<x>___<y>``, e.g. ``P0001__1__0___824``."""
    return f"{image_id}__{format_rate(rate)}__{int(x)}___{int(y)}"


def format_sized_patch_name(image_id: str, side: int, x: int, y: int) -> str:
    """mmrotate's ``<image id>__<window side>__<x>___<y>``, e.g. ``P0001__2048__0___0``."""
    return f"{image_id}__{int(side)}__{int(x)}___{int(y)}"


@dataclass(frozen=True)
class PatchName:
    """The parts of a patch name.

    Attributes:
        image_id: the full image's id.
        rate: patch pixels per image pixel: the devkit's rate, 1 for mmrotate's names (those
            patches keep the image's resolution). Image coordinates are ``(p + (x, y)) / rate``.
        x, y: the window's corner in patch pixels.
        size: the window side of an mmrotate name, None for a devkit name.
    """

    image_id: str
    rate: float
    x: int
    y: int
    size: Optional[int] = None


def parse_patch_name(name: str, naming: PatchNaming = "auto") -> PatchName:
    """Inverse of :func:`format_patch_name` and :func:`format_sized_patch_name`.

    Args:
        name: ``<image id>__<middle>__<x>___<y>``.
        naming: what the middle field is: ``"rate"`` (devkit), ``"size"`` (mmrotate's window
            side, an integer) or ``"auto"``: a side when it is an integer >= :data:`MIN_NAMED_SIZE`,
            else a rate.

    Raises:
        DataError: ``name`` is not such a name (the message quotes it).
    """
    if naming not in PATCH_NAMINGS:
        raise ConfigError(f"naming: expected one of {', '.join(PATCH_NAMINGS)}, got {naming!r}")
    m = _PATCH_NAME.match(name)
    if m is None or float(m["mid"]) <= 0 or (naming == "size" and "." in m["mid"]):
        what = {"auto": "<rate or window side>", "rate": "<rate>", "size": "<window side>"}[naming]
        raise DataError(f"{name!r} is not a patch name <image id>__{what}__<x>___<y> "
                        f"(e.g. P0001__1__0___824 or P0001__1024__0___824)")
    mid = m["mid"]
    sized = naming == "size" or (naming == "auto" and "." not in mid and int(mid) >= MIN_NAMED_SIZE)
    if sized:
        return PatchName(m["image"], 1.0, int(m["x"]), int(m["y"]), int(mid))
    return PatchName(m["image"], float(mid), int(m["x"]), int(m["y"]))


def is_patch_name(name: str, naming: PatchNaming = "auto") -> bool:
    """Whether :func:`parse_patch_name` reads ``name`` (an image id that is a patch's)."""
    try:
        parse_patch_name(name, naming)
    except ValueError:
        return False
    return True


def sliding_windows(width: int, height: int, size: int, gap: int) -> np.ndarray:
    """Windows over a ``width`` x ``height`` image: ``int64 [K, 4]`` ``(x0, y0, x0 + size, y0 + size)``.

    Row-major over ``y`` within ``x`` (both references: columns outer). See the module docstring.
    """
    xs = np.asarray(window_starts(width, size, size - gap), dtype=np.int64)
    ys = np.asarray(window_starts(height, size, size - gap), dtype=np.int64)
    x0 = np.repeat(xs, len(ys))
    y0 = np.tile(ys, len(xs))
    return np.stack([x0, y0, x0 + size, y0 + size], axis=1)


def scaled_size(width: int, height: int, rate: float) -> Tuple[int, int]:
    """``(width, height)`` of an image resized by ``rate`` as ``cv2.resize(fx=rate, fy=rate)``
    makes it: each side times the rate, rounded half to even (OpenCV's ``cvRound``)."""
    if rate == 1.0:
        return int(width), int(height)
    return int(round(width * rate)), int(round(height * rate))


@dataclass(frozen=True)
class WindowSet:
    """The windows of one rate.

    Attributes:
        rule: the split rule (it decides how patches are named).
        rate: the configured rate.
        scale: the factor the image is resized by before cutting (devkit: ``rate``; mmrotate: 1).
        width, height: size of the image after that resize.
        size: the window side in those pixels.
        windows: ``int64 [K, 4]`` ``(x0, y0, x0 + size, y0 + size)`` in those pixels.
    """

    rule: str
    rate: float
    scale: float
    width: int
    height: int
    size: int
    windows: np.ndarray

    def name(self, image_id: str, k: int) -> str:
        """The name of window ``k``: devkit names carry the rate, mmrotate's the side."""
        x, y = int(self.windows[k, 0]), int(self.windows[k, 1])
        if self.rule == "devkit":
            return format_patch_name(image_id, self.rate, x, y)
        return format_sized_patch_name(image_id, self.size, x, y)


def plan_windows(width: int, height: int, config: SplitConfig) -> List[WindowSet]:
    """The windows of a ``width`` x ``height`` image at every rate, in ``config.rates`` order."""
    if config.rule == "devkit":
        out = []
        for rate in config.rates:
            w, h = scaled_size(width, height, rate)
            windows = sliding_windows(w, h, config.size, config.gap)
            out.append(WindowSet(config.rule, rate, rate, w, h, config.size, windows))
        return out
    sets = [(rate, int(config.size / rate), int(config.gap / rate)) for rate in config.rates]
    windows = [sliding_windows(width, height, side, gap) for _, side, gap in sets]
    pooled = np.concatenate(windows).astype(np.float64)
    inside = pooled.copy()
    inside[:, 0::2] = np.clip(inside[:, 0::2], 0, width)
    inside[:, 1::2] = np.clip(inside[:, 1::2], 0, height)
    share = (np.prod(inside[:, 2:] - inside[:, :2], axis=1) / np.prod(pooled[:, 2:] - pooled[:, :2], axis=1))
    if not (share > config.img_rate_thr).any():
        share[np.abs(share - share.max()) < 0.01] = 1.0  # mmrotate: keep the best-covered windows
    keep = np.split(share > config.img_rate_thr, np.cumsum([len(w) for w in windows])[:-1])
    return [WindowSet(config.rule, rate, 1.0, width, height, side, w[kept])
            for (rate, side, _), w, kept in zip(sets, windows, keep)]


@dataclass
class Patch:
    """One window of one image at one rate.

    Attributes:
        name: the patch name (:func:`format_patch_name` or :func:`format_sized_patch_name`).
        window: ``(x0, y0, x1, y1)`` in the image resized by ``scale``.
        scale: the factor the image is resized by before this window is cut.
        annotation: the objects written, in patch coordinates (None when splitting without labels).
        objects: ``int64 [M]`` indices of those objects in the image's annotation.
    """

    name: str
    window: Tuple[int, int, int, int]
    scale: float
    annotation: Optional[DotaAnnotation]
    objects: np.ndarray


def _window_objects(ann: DotaAnnotation, ws: WindowSet, config: SplitConfig) -> WindowObjects:
    if config.rule == "devkit":
        # parse_dota_poly2 truncates the file's coordinates to integers before scaling.
        polys = np.trunc(ann.polygons.astype(np.float64)) * ws.rate
        return devkit_window_objects(polys, ann.difficult, ws.windows, ws.width, ws.height, ws.size,
                                     config.iof_thr)
    return mmrotate_window_objects(ann.polygons, ann.difficult, ws.windows, config.iof_thr)


def split_annotation(ann: Optional[DotaAnnotation], image_id: str, width: int, height: int,
                     config: SplitConfig) -> List[Patch]:
    """The patches of one image at every rate (geometry and labels only, no pixels).

    Args:
        ann: the image's objects in image pixels, or None (unlabelled image).
        image_id: the image's id (patch name prefix).
        width, height: the image's size.
        config: the rule, window size, gap, rates and thresholds.
    """
    patches = []
    for ws in plan_windows(width, height, config):
        names = [ws.name(image_id, k) for k in range(len(ws.windows))]
        if ann is None:
            patches += [Patch(n, tuple(w), ws.scale, None, np.zeros(0, np.int64))
                        for n, w in zip(names, ws.windows.tolist())]
            continue
        found = _window_objects(ann, ws, config)
        bounds = np.searchsorted(found.window, np.arange(len(ws.windows) + 1))
        gsd = None if ann.gsd is None else ann.gsd / ws.scale
        for k, (name, window) in enumerate(zip(names, ws.windows.tolist())):
            rows = slice(bounds[k], bounds[k + 1])
            sel = found.obj[rows]
            patch_ann = replace(ann, polygons=found.polygons[rows], labels=ann.labels[sel],
                                difficult=found.difficult[rows], gsd=gsd, skipped=0)
            patches.append(Patch(name, tuple(window), ws.scale, patch_ann, sel))
    return patches


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
    """Objects in no patch at any rate (not enough inside any window, zero area, a cut the
    devkit rule does not write, or self-intersecting)."""
    self_intersecting: int = 0
    """Of the dropped, the self-intersecting polygons with area (both references stop on them)."""

    def add(self, other: "SplitReport") -> None:
        for name in ("images", "patches", "objects", "patch_objects", "dropped", "self_intersecting"):
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
    image = open_split_image(image_path, config.padding, config.ext, config.pad_value is not None)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if ann is not None:
        (out_dir / "labelTxt").mkdir(parents=True, exist_ok=True)
    report = SplitReport(images=1, objects=0 if ann is None else len(ann))
    placed = np.zeros(0 if ann is None else len(ann), dtype=bool)
    patches = split_annotation(ann, image_id, image.width, image.height, config)
    for patch in patches:
        placed[patch.objects] = True
        image.write_patch(patch.window, patch.scale, out_dir / "images" / patch.name)
        if patch.annotation is not None:
            write_dota_label(out_dir / "labelTxt" / f"{patch.name}.txt", patch.annotation)
            report.patch_objects += len(patch.annotation)
    report.patches = len(patches)
    report.dropped = int((~placed).sum())
    if ann is not None:
        report.self_intersecting = int(self_intersecting(ann.polygons).sum())
    return report


def _find_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected the DOTA images/ folder)")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SCENE_SUFFIXES)


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
