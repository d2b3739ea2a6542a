"""Own imagery (any tree of JPEG / PNG / TIFF / GeoTIFF files) into pretraining shards.

``rsfm shards images`` (docs/shards.md, "Own imagery"):

1. Scan: every file under ``root`` with a raster suffix (:data:`~rsfm_ds.data.raster.RASTER_SUFFIXES`),
   sorted by '/'-separated relative path; other files are listed as skipped. Each raster's header
   is read: after ``bands`` selection every file must have the same band count and data type, else
   a one-line :class:`DataError` names the first file that differs.
2. Tile: a scene is cut into ``tile`` x ``tile`` windows every ``stride`` pixels along each axis;
   the last window of an axis is clamped to end at the border (:func:`~rsfm_ds.data.tiling.window_starts`,
   the rule of mmseg's ``slide_inference`` and the DOTA devkit's splitter), so every pixel is in a
   window and none is padded. A scene side shorter than ``tile`` gives one window of that side.
   Without ``tile`` a file is one sample.
3. Write: windows are packed into shards by the MillionAID writer's machinery (:mod:`.shards`:
   same shuffling, packing, parallel writing, journal and resume). Within a shard the windows are
   read grouped by file (each file is opened once per shard); the sample order inside a shard is
   that read order, the loader's shuffle buffer mixes it.

Valid pixels: a pixel is nodata when every selected band equals the nodata value (GDAL's
per-dataset mask rule: a pixel is valid if any band is; NaN matches a NaN nodata). The nodata value
is ``nodata`` if given, else the file's declared one, else there is none. A window whose fraction
of valid pixels is below ``min_valid`` is left out and counted (``num_windows_low_valid``).

Per sample (key ``<shard:06d>-<index:06d>``):
  ``.npy``  the window's raw pixels, ``[C, H, W]`` in the files' data type (``numpy.save``), lossless;
  ``.json`` ``{"path", "window": [col, row, width, height], "georef": {"crs", "transform"},
            "width", "height", "bands", "dtype", "nodata", "valid_fraction"}``.

Every sample is ``.npy``, 8-bit RGB included: windows cut from scenes have no source bytes to keep,
and re-encoding them as JPEG would lose information while PNG decodes ~10x slower than a raw
array is copied; one lossless layout also gives the loader one path for every band count and type.

Statistics (:class:`~.band_stats.BandMoments`): per-band count, mean, std, min, max over the valid
pixels of the written samples, merged from per-shard moments. The manifest's ``normalization`` is
what the loader applies, ``(raw - mean) / std`` per band in raw units
(:class:`~rsfm_ds.data.raster.BandNormalization`): the measured statistics, except for 3-band
uint8 imagery, which takes :data:`~rsfm_ds.data.raster.IMAGENET_RAW` like MillionAID and the
fine-tuning default for 8-bit RGB, so all 8-bit RGB models see the same input scale.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...config import check
from ...errors import DataError
from ..raster import (IMAGENET_RAW, RASTER_SUFFIXES, RASTERIO_SUFFIXES, Georef, RasterInfo, raster_info,
                      read_raster, valid_mask)
from ..tiling import window_starts
from .band_stats import BandMoments
from .manifest import Manifest, SkippedFile
from .shards import WriteReport, finish_shards, plan_shards, write_planned_shards

SHARD_PREFIX = "images"


@dataclass(frozen=True)
class SceneWindow:
    """One planned sample: a window of a source file."""

    relpath: str
    """Path relative to the root, '/'-separated."""
    col: int
    row: int
    width: int
    height: int
    size: int
    """Bytes of the window's raw pixels (for shard packing)."""
    mtime_ns: int
    """Modification time of the file: part of the plan fingerprint, so edited files are re-sharded."""

    @property
    def window(self) -> Tuple[int, int, int, int]:
        return self.col, self.row, self.width, self.height


@dataclass(frozen=True)
class ImageOptions:
    """How windows are cut and stored; part of every shard's plan fingerprint."""

    tile: Optional[int] = None
    """Window side in pixels; None makes every file one sample."""
    stride: Optional[int] = None
    """Step between windows (default: ``tile``, windows that touch)."""
    nodata: Optional[float] = None
    """Nodata value of every file; None takes each file's declared one (or none)."""
    min_valid: float = 0.0
    """Fraction of valid pixels a window needs to be written."""
    bands: Optional[Tuple[int, ...]] = None
    """1-based bands to keep, in this order; None keeps all."""

    def __post_init__(self) -> None:
        check(self.tile is None or self.tile >= 8, "tile", f"must be >= 8 pixels, got {self.tile}")
        check(self.stride is None or self.tile is not None, "stride", "needs --tile")
        check(self.stride is None or 1 <= self.stride <= (self.tile or 0), "stride",
              f"must be within 1..tile ({self.tile}) so windows leave no gaps, got {self.stride}")
        check(0.0 <= self.min_valid <= 1.0, "min_valid", f"must be within 0..1, got {self.min_valid}")
        check(self.bands is None or (len(self.bands) > 0 and all(b >= 1 for b in self.bands)), "bands",
              f"1-based band numbers, got {self.bands}")


@dataclass
class SceneScan:
    """Result of :func:`scan_scenes`."""

    root: Path
    files: List[RasterInfo]
    """Readable rasters, sorted by relative path (``path`` relative to ``root``)."""
    mtimes: Dict[str, int]
    skipped: List[SkippedFile]
    bands: int
    dtype: str
    band_names: Tuple[str, ...]


def scan_scenes(root: Union[str, Path], bands: Optional[Sequence[int]] = None,
                exclude: Optional[Union[str, Path]] = None) -> SceneScan:
    """List the rasters under ``root`` and check they agree in bands (after ``bands``) and type.

    ``exclude`` is a folder left out of the scan (the shard output, when it lies under ``root``).

    Raises:
        DataError: ``root`` is not a folder, holds no raster, a file lacks a selected band, or a
            file's band count / data type differs from the first file's (naming both).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    found: List[str] = []
    skipped: List[SkippedFile] = []
    skip_dir = Path(exclude).resolve() if exclude is not None else None
    seen = {root.resolve()}  # folders entered, by real path: a symlink back up the tree is entered once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = (Path(dirpath) / d).resolve()
            if real != skip_dir and real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        rel = Path(dirpath).relative_to(root).parts
        for name in filenames:
            relpath = "/".join((*rel, name))
            if name.startswith("."):
                continue
            if name.lower().endswith(RASTER_SUFFIXES):
                found.append(relpath)
            else:
                skipped.append(SkippedFile(relpath, "not a raster file (" + ", ".join(RASTER_SUFFIXES) + ")"))
    found.sort()
    files: List[RasterInfo] = []
    mtimes: Dict[str, int] = {}
    first: Optional[Tuple[str, int, str]] = None
    for relpath in found:
        try:
            info = raster_info(root / relpath)
        except DataError as e:
            skipped.append(SkippedFile(relpath, f"unreadable: {str(e).split(': ', 1)[-1]}"))
            continue
        if bands is not None:
            bad = [b for b in bands if not 1 <= b <= info.count]
            if bad:
                raise DataError(f"{root / relpath}: has {info.count} bands; no band {bad[0]} "
                                f"(--bands are numbered from 1)")
        count = len(bands) if bands is not None else info.count
        if first is None:
            first = (relpath, count, info.dtype)
        elif (count, info.dtype) != first[1:]:
            raise DataError(f"{root / relpath}: {count} bands of {info.dtype} after band selection, but "
                            f"{root / first[0]} has {first[1]} bands of {first[2]}; every input must agree "
                            f"(choose bands with --bands, or shard the two kinds apart)")
        files.append(dataclasses.replace(info, path=relpath))
        mtimes[relpath] = (root / relpath).stat().st_mtime_ns
    if first is None:
        raise DataError(f"{root}: no raster files ({', '.join(RASTER_SUFFIXES)})")
    names = files[0].band_names
    index = list(bands) if bands is not None else list(range(1, files[0].count + 1))
    band_names = tuple((names[b - 1] if b - 1 < len(names) and names[b - 1] else f"band{b}") for b in index)
    skipped.sort(key=lambda s: s.path)
    return SceneScan(root, files, mtimes, skipped, first[1], first[2], band_names)


def plan_windows(info: RasterInfo, tile: Optional[int], stride: Optional[int], bands: int, itemsize: int,
                 mtime_ns: int) -> List[SceneWindow]:
    """The windows of one file, row-major (:func:`~rsfm_ds.data.tiling.window_starts` per axis)."""
    if tile is None:
        cols, rows, w, h = [0], [0], info.width, info.height
    else:
        step = stride or tile
        w, h = min(tile, info.width), min(tile, info.height)
        cols, rows = window_starts(info.width, w, step), window_starts(info.height, h, step)
    size = bands * w * h * itemsize
    return [SceneWindow(info.path, c, r, w, h, size, mtime_ns) for r in rows for c in cols]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


@dataclass
class SceneEncoder:
    """Reads the planned windows of a shard and encodes them (:class:`~.shards.SampleEncoder`)."""

    root: Path
    georefs: Dict[str, Dict[str, Any]]
    """relpath -> ``Georef.to_json()`` of the whole file."""
    nodatas: Dict[str, Optional[float]]
    """relpath -> the nodata value in force for it."""
    bands: int
    options: ImageOptions
    _moments: Optional[BandMoments] = field(default=None, init=False, repr=False)
    """Statistics of the shard being written (reset by :meth:`encode_shard`)."""

    def encode_shard(self, items: Sequence[SceneWindow]
                     ) -> Iterator[Tuple[SceneWindow, Optional[Dict[str, bytes]], str]]:
        self._moments = BandMoments(self.bands)
        order = sorted(items, key=lambda w: (w.relpath, w.row, w.col))
        for relpath, windows in itertools.groupby(order, key=lambda w: w.relpath):
            yield from self._encode_file(relpath, list(windows))

    def _encode_file(self, relpath: str, windows: List[SceneWindow]
                     ) -> Iterator[Tuple[SceneWindow, Optional[Dict[str, bytes]], str]]:
        path = self.root / relpath
        scene: Optional[np.ndarray] = None
        if path.suffix.lower() not in RASTERIO_SUFFIXES:
            # JPEG / PNG decode whole: decode once for all of this shard's windows of the file.
            try:
                scene = read_raster(path, bands=self.options.bands)
            except DataError as e:
                for w in windows:
                    yield w, None, f"unreadable: {str(e).split(': ', 1)[-1]}"
                return
        georef = Georef.from_json(self.georefs[relpath])
        nodata = self.nodatas[relpath]
        for w in windows:
            if scene is not None:
                pixels = np.ascontiguousarray(scene[:, w.row:w.row + w.height, w.col:w.col + w.width])
            else:
                try:
                    pixels = read_raster(path, window=w.window, bands=self.options.bands)
                except DataError as e:
                    yield w, None, f"unreadable window {list(w.window)}: {str(e).split(': ', 1)[-1]}"
                    continue
            mask = valid_mask(pixels, nodata)
            fraction = float(mask.mean())
            if fraction < self.options.min_valid:
                self._moments.low_valid += 1
                continue
            self._moments.add_pixels(pixels[:, mask])
            record = {"path": relpath, "window": list(w.window), "georef": georef.shifted(w.col, w.row).to_json(),
                      "width": w.width, "height": w.height, "bands": self.bands, "dtype": pixels.dtype.name,
                      "nodata": nodata, "valid_fraction": fraction}
            yield w, {"npy": _npy_bytes(pixels), "json": json.dumps(record).encode()}, ""

    def shard_stats(self) -> Optional[Dict[str, Any]]:
        return self._moments.to_json() if self._moments is not None else None


def write_image_shards(root: Union[str, Path], out: Union[str, Path], tile: Optional[int] = None,
                       stride: Optional[int] = None, nodata: Optional[float] = None, min_valid: float = 0.0,
                       bands: Optional[Sequence[int]] = None, maxcount: int = 1000, maxsize: int = 10 ** 9,
                       workers: int = 1, shuffle_seed: Optional[int] = 0,
                       log: Optional[Callable[[str], None]] = None) -> WriteReport:
    """Shard the rasters under ``root`` into ``out/images-%06d.tar`` + ``out/manifest.json``.

    Args:
        root: folder searched recursively for JPEG / PNG / TIFF / GeoTIFF files.
        out: output folder (created); a previous run's shards there are kept when they verify.
        tile: window side in pixels (None: one sample per file).
        stride: step between windows (default ``tile``).
        nodata: nodata value of all files (default: each file's declared one, else none).
        min_valid: fraction of valid pixels a window needs; others are counted and left out.
        bands: 1-based bands to keep, in this order (e.g. ``(4, 3, 2, 8)``).
        maxcount: samples per shard at most.
        maxsize: bytes per shard at most (raw pixels plus tar overhead).
        workers: processes writing shards in parallel.
        shuffle_seed: seed of the window order across shards; None keeps the scan order.
        log: called with one line per finished shard.

    Raises:
        DataError: no rasters, or files that disagree in bands or data type (module docstring).
        ConfigError: an argument out of range (the message names it).
    """
    root, out = Path(root), Path(out)
    options = ImageOptions(tile=tile, stride=stride, nodata=nodata, min_valid=min_valid,
                           bands=tuple(bands) if bands is not None else None)
    check(workers >= 1, "workers", f"must be >= 1, got {workers}")
    scan = scan_scenes(root, options.bands, exclude=out)
    itemsize = np.dtype(scan.dtype).itemsize
    windows = [w for info in scan.files
               for w in plan_windows(info, tile, stride, scan.bands, itemsize, scan.mtimes[info.path])]
    plans = plan_shards(windows, SHARD_PREFIX, maxcount, maxsize, shuffle_seed, options)
    encoder = SceneEncoder(root, {f.path: f.georef.to_json() for f in scan.files},
                           {f.path: nodata if nodata is not None else f.nodata for f in scan.files},
                           scan.bands, options)
    records, skipped, actions = write_planned_shards(plans, out, encoder, workers, log)
    moments = BandMoments(scan.bands)
    for r in records:
        moments.merge(BandMoments.from_json(r.stats))
    stats = moments.summary()
    if scan.bands == 3 and scan.dtype == "uint8":
        norm = {"mean": list(IMAGENET_RAW.mean), "std": list(IMAGENET_RAW.std), "source": "imagenet"}
    else:
        # A constant band (std 0) would divide by zero; 1 leaves it centred and unscaled.
        std = [s if s > 0 else 1.0 for s in stats["std"]]
        norm = {"mean": stats["mean"], "std": std, "source": "measured"}
    manifest = Manifest(
        dataset="images", split="", shards=records, classes=[],
        skipped=sorted(scan.skipped + skipped, key=lambda s: s.path),
        options={"maxcount": maxcount, "maxsize": maxsize, "shuffle_seed": shuffle_seed,
                 **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()}},
        root=str(root.resolve()),
        samples={"member": "npy", "bands": scan.bands, "band_names": list(scan.band_names), "dtype": scan.dtype,
                 "nodata": nodata},
        band_stats=stats, normalization_stats=norm)
    finish_shards(manifest, out, SHARD_PREFIX, log)
    if manifest.num_samples == 0:
        raise DataError(f"{out}: no samples written: {manifest.num_windows_low_valid} of {len(windows)} windows "
                        f"have fewer valid pixels than --min-valid {min_valid}, the others were unreadable")
    return WriteReport(out / "manifest.json", manifest, actions["written"], actions["kept"])


__all__ = ["SceneWindow", "ImageOptions", "SceneScan", "scan_scenes", "plan_windows",
           "SceneEncoder", "write_image_shards"]
