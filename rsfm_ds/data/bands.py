"""How a fine-tuning dataset reads and normalises its images: which bands, which statistics, how
many channels the backbone takes.

Every fine-tuning dataset (detection and segmentation) holds one :class:`InputBands` and goes
through it for the pixels of an image file:

- :meth:`InputBands.read`: ``[H, W, C]`` in the file's data type. 8-bit RGB files (JPEG / PNG /
  BMP, no band selection) keep the dataset's own OpenCV reader, so the DOTA, DIOR-R, Potsdam and
  LoveDA samples are exactly what they were; anything else (multi-band GeoTIFF, a band selection)
  goes through :func:`~rsfm_ds.data.raster.read_raster`;
- :meth:`InputBands.check`: the band count must equal the backbone's ``in_chans`` (a one-line
  ``DataError`` naming the file, ``data.bands`` and ``backbone.in_chans``), and an image that is
  normalised by the 8-bit RGB default must be 8-bit (a uint16 scene under ImageNet statistics
  would train on garbage: the error names ``data.band_mean``);
- :meth:`InputBands.check_file`: the band-count check of :meth:`check` from the file's header
  alone, which a dataset runs on its first image when it is built (before any model is);
- :meth:`InputBands.normalize`: ``(raw - mean) / std`` per band in raw units
  (:class:`~rsfm_ds.data.raster.BandNormalization`), on ``[H, W, C]`` after the geometric
  augmentations, as mmrotate's / mmseg's ``Normalize`` comes after them in their pipelines.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import DataError
from .images import IMAGENET_MEAN, IMAGENET_STD
from .raster import IMAGENET_RAW, OPENCV_SUFFIXES, BandNormalization, raster_info, read_raster

# OpenCV's resize / warpAffine, which the augmentations use, take these pixel types; others
# (uint32, int8, float64...) are read as float32, which holds their values or rounds them benignly.
_OPENCV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


@dataclass(frozen=True)
class InputBands:
    """The bands a dataset reads, their normalisation and the backbone's channel count."""

    normalization: BandNormalization = IMAGENET_RAW
    """Per-band ``(raw - mean) / std`` in raw units; one entry per band read."""
    bands: Optional[Tuple[int, ...]] = None
    """1-based bands read from each file, in this order; None reads them all."""
    in_chans: int = 3
    """Channels of the backbone's patch embedding: every image must have this many bands."""
    require_8bit: bool = False
    """The normalisation is the 8-bit RGB default (nothing was configured): other pixel types
    are an error naming data.band_mean."""

    def __post_init__(self) -> None:
        if self.normalization.bands != self.in_chans:
            raise DataError(f"input normalisation has {self.normalization.bands} bands but backbone.in_chans is "
                            f"{self.in_chans}")

    def _bands_text(self) -> str:
        return "all bands" if self.bands is None else f"data.bands={list(self.bands)}"

    def read(self, path: Path, rgb_reader: Callable[[Path], np.ndarray]) -> np.ndarray:
        """Pixels of ``path`` as ``[H, W, C]`` (checked with :meth:`check`).

        ``rgb_reader`` reads an 8-bit RGB file as ``uint8 [H, W, 3]``; it serves JPEG / PNG /
        BMP files when no band selection is configured (the benchmarks' path, unchanged)."""
        path = Path(path)
        if self.bands is None and path.suffix.lower() in OPENCV_SUFFIXES:
            image = rgb_reader(path)
        else:
            image = np.ascontiguousarray(read_raster(path, bands=self.bands).transpose(1, 2, 0))
            if image.dtype not in _OPENCV_DTYPES:
                image = image.astype(np.float32)
        self.check(path, image)
        return image

    def check(self, path: Path, image: np.ndarray) -> None:
        """Raise a one-line ``DataError`` naming ``path`` when ``image [H, W, C]`` does not fit."""
        self.check_count(path, image.shape[2] if image.ndim == 3 else 1)
        if self.require_8bit and image.dtype != np.uint8:
            raise DataError(f"{path}: {image.dtype} pixels but no normalisation is configured (the default, "
                            f"ImageNet statistics x 255, is for 8-bit RGB); set data.band_mean and "
                            f"data.band_std in the file's raw units, or data.band_stats")

    def check_file(self, path: Path) -> None:
        """Raise a one-line ``DataError`` naming ``path`` when the image :meth:`read` would return
        has not ``in_chans`` bands; reads the file's header only (an 8-bit RGB file read without a
        band selection is 3 bands, whatever it stores: the RGB reader converts grey and RGBA)."""
        path = Path(path)
        if self.bands is not None:
            channels = len(self.bands)
        elif path.suffix.lower() in OPENCV_SUFFIXES:
            channels = 3
        else:
            channels = raster_info(path).count
        self.check_count(path, channels)

    def check_count(self, path: Path, channels: int) -> None:
        """Raise a one-line ``DataError`` naming ``path`` when ``channels`` is not ``in_chans``."""
        if channels != self.in_chans:
            raise DataError(f"{path}: {channels} bands ({self._bands_text()}) but backbone.in_chans is "
                            f"{self.in_chans}; set data.bands to {self.in_chans} bands or backbone.in_chans "
                            f"to {channels}")

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """``float32 [H, W, C]`` ``(image - mean) / std`` of ``image [H, W, C]`` (or ``[H, W]``,
        which OpenCV leaves of a one-band image)."""
        if image.ndim == 2:
            image = image[:, :, None]
        mean, std = normalization_arrays(self.normalization)
        return (image.astype(np.float32) - mean) / std


def normalization_arrays(norm: BandNormalization) -> Tuple[np.ndarray, np.ndarray]:
    """``float32 [C]`` mean and std of ``norm``.

    For :data:`~rsfm_ds.data.raster.IMAGENET_RAW` these are the float32 products
    ``float32(ImageNet value) * 255`` the datasets have always used (the float64 product rounded
    to float32 differs in the last bit for one band), so the benchmarks' tensors stay bit-identical.
    """
    if norm == IMAGENET_RAW:
        return (np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255, np.asarray(IMAGENET_STD, dtype=np.float32) * 255)
    return np.asarray(norm.mean, dtype=np.float32), np.asarray(norm.std, dtype=np.float32)


__all__ = ["InputBands", "normalization_arrays"]
