"""The pixels of ``rsfm dota split``'s patches: read from the full image, cut, padded, written.

Two kinds of image (:func:`open_split_image` tells them apart):

- **8-bit images** (PNG, JPEG, BMP, and three-band uint8 TIFFs without georeference), as the DOTA
  release ships them: :class:`EightBitImage` reads them with OpenCV in BGR order, as the devkit
  (``cv2.imread``) and mmrotate (``mmcv.imread``) do, pads with the rule's colour
  (:attr:`~rsfm_ds.data.det.split.SplitConfig.padding`) and writes the patches in the chosen
  format (``--ext``, ``cv2.imwrite``).
- **Rasters** (TIFFs that are georeferenced, have another band count or another data type, e.g.
  a four-band uint16 GeoTIFF scene, and every other format GDAL reads: VRT, JP2, ERDAS .img):
  :class:`RasterScene` keeps every band in the file's data type and writes GeoTIFF patches
  (``.tif``) with the file's nodata value, band descriptions and the patch's own georeference
  (the scene's transform scaled by ``1 / rate`` and moved to the window's corner), so a patch lies
  where it came from. Padding past the border is
  the file's nodata value, or 0 when it declares none (the rules' colours are 8-bit BGR). At
  rate 1 (and always under the mmrotate rule, which never resizes) each window is read from the
  file on its own, so scenes larger than memory split; a resized rate resizes the whole scene as
  the devkit does (``cv2.resize``, bicubic), through float64 for types OpenCV does not resize
  (int8, int32, uint32 rounded back; float16), and a resized pixel that the bicubic kernel
  computes from a nodata pixel is nodata (:func:`resized_invalid`), not a blend of nodata and
  data.

Reading a 16-bit or multi-band TIFF with OpenCV's ``IMREAD_COLOR``, as the references do, would
keep three bands and scale 16-bit values to 8 bits without a word; rasters never take that path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ...errors import DataError
from ..images import read_bgr, write_image
from ..raster import RasterInfo, raster_info, read_raster, valid_mask, write_geotiff

PathLike = Union[str, Path]
_OPENCV_RESIZE_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
OPENCV_READS = (".png", ".jpg", ".jpeg", ".bmp")
"""Files only OpenCV reads here; TIFFs are 8-bit images for OpenCV when three-band uint8 without
georeference, any other file a raster for GDAL."""


def crop_window(image: np.ndarray, window: Sequence[int], pad_value) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` of ``[H, W, C]``, padded with ``pad_value`` (one value per channel,
    or one for all) past the border."""
    x0, y0, x1, y1 = window
    out = np.empty((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    out[...] = np.asarray(pad_value, dtype=image.dtype)
    part = image[y0:y1, x0:x1]
    out[:part.shape[0], :part.shape[1]] = part
    return out


def resize_by_rate(image: np.ndarray, rate: float) -> np.ndarray:
    """Resize ``[H, W, C]`` by ``rate`` with bicubic interpolation (the devkit's), the identity for
    rate 1; the size is :func:`~rsfm_ds.data.det.split.scaled_size`, the channels stay (OpenCV
    returns ``[h, w]`` for one). Pixel types OpenCV does not resize go through float64: integers
    rounded and clipped back to their type, floats (float16) cast back."""
    if rate == 1.0:
        return image
    if image.dtype.type in _OPENCV_RESIZE_DTYPES:
        out = cv2.resize(image, None, fx=rate, fy=rate, interpolation=cv2.INTER_CUBIC)
    else:
        out = cv2.resize(image.astype(np.float64), None, fx=rate, fy=rate, interpolation=cv2.INTER_CUBIC)
        if image.dtype.kind in "iu":
            info = np.iinfo(image.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(image.dtype)
    return out if out.ndim == 3 else out[..., None]


def resized_invalid(valid: np.ndarray, rate: float, size: Tuple[int, int]) -> np.ndarray:
    """``bool [h, w]``: the pixels of an image resized by ``rate`` to ``size`` ``(h, w)``
    (:func:`resize_by_rate`) that a bicubic kernel computes from a source pixel where
    ``valid [H, W]`` is False.

    OpenCV's bicubic taps for output pixel ``x`` are the source pixels ``floor(s) - 1 ..
    floor(s) + 2`` around ``s = (x + 0.5) / rate - 0.5``, clamped to the image (its
    ``cv::resize``); the kernel is separable, so rows and columns are taken in turn."""
    invalid = ~valid
    rows = _cubic_taps(size[0], rate, valid.shape[0])  # [h, 4]
    cols = _cubic_taps(size[1], rate, valid.shape[1])  # [w, 4]
    by_col = invalid[:, cols].any(axis=2)  # [H, w]
    return by_col[rows].any(axis=1)  # [h, w]


def _cubic_taps(n_out: int, rate: float, n_in: int) -> np.ndarray:
    """``int64 [n_out, 4]``: the source indices each output index's bicubic kernel reads."""
    start = np.floor((np.arange(n_out) + 0.5) / rate - 0.5).astype(np.int64) - 1
    return np.clip(start[:, None] + np.arange(4), 0, n_in - 1)


class EightBitImage:
    """An 8-bit image split as the references split DOTA's (module docstring)."""

    def __init__(self, path: Path, padding: Tuple[int, int, int], ext: str):
        self.path, self.padding, self.ext = path, padding, ext
        self.image = read_bgr(path)
        self.height, self.width = self.image.shape[:2]
        self._scale, self._resized = 1.0, self.image

    def write_patch(self, window: Sequence[int], scale: float, stem: Path) -> Path:
        """Write the patch ``window`` ``(x0, y0, x1, y1)`` of the image resized by ``scale`` as
        ``<stem><ext>``; returns its path. Patches come grouped by scale: one resized copy is kept."""
        if scale != self._scale:
            self._scale, self._resized = scale, resize_by_rate(self.image, scale)
        path = stem.with_name(stem.name + self.ext)
        write_image(path, crop_window(self._resized, window, self.padding))
        return path


class RasterScene:
    """A raster split into GeoTIFF patches with its bands, type and georeference (module docstring)."""

    ext = ".tif"

    def __init__(self, path: Path, info: RasterInfo):
        self.path, self.info = path, info
        self.width, self.height = info.width, info.height
        nodata = info.nodata
        self.padding = 0 if nodata is None else nodata
        self.band_names = info.band_names if any(info.band_names) else ()
        self._scale: Optional[float] = None
        self._resized: Optional[np.ndarray] = None

    def write_patch(self, window: Sequence[int], scale: float, stem: Path) -> Path:
        """Write the patch ``window`` ``(x0, y0, x1, y1)`` of the scene resized by ``scale`` as
        ``<stem>.tif``; returns its path."""
        x0, y0, x1, y1 = (int(v) for v in window)
        if scale == 1.0:
            pixels = read_raster(self.path, window=(x0, y0, x1 - x0, y1 - y0))  # 0 past the border
            inside_w, inside_h = max(0, min(x1, self.width) - x0), max(0, min(y1, self.height) - y0)
            if self.padding != 0 and (inside_w < x1 - x0 or inside_h < y1 - y0):
                inside = pixels[:, :inside_h, :inside_w].copy()
                pixels[...] = np.asarray(self.padding, dtype=pixels.dtype)
                pixels[:, :inside_h, :inside_w] = inside
        else:
            if scale != self._scale:
                self._resized = None  # release the previous rate's copy before making the next
                image = np.ascontiguousarray(read_raster(self.path).transpose(1, 2, 0))
                resized = resize_by_rate(image, scale)
                if self.info.nodata is not None:
                    # Bicubic weights would blend nodata into its neighbours (values that are
                    # neither data nor nodata): pixels within the kernel's reach of it are nodata.
                    valid = valid_mask(image.transpose(2, 0, 1), self.info.nodata)
                    nodata = resized_invalid(valid, scale, resized.shape[:2])
                    resized[nodata] = np.asarray(self.info.nodata, resized.dtype)
                self._scale, self._resized = scale, resized
            pixels = crop_window(self._resized, window, self.padding).transpose(2, 0, 1)
        georef = self.info.georef.resized(scale).shifted(x0, y0)
        path = stem.with_name(stem.name + self.ext)
        write_geotiff(path, np.ascontiguousarray(pixels), georef, nodata=self.info.nodata,
                      band_names=self.band_names)
        return path


def open_split_image(path: PathLike, padding: Tuple[int, int, int], ext: str,
                     pad_value_given: bool = False) -> Union[EightBitImage, RasterScene]:
    """The image at ``path`` as an :class:`EightBitImage` or a :class:`RasterScene` (module
    docstring); ``padding`` and ``ext`` apply to 8-bit images.

    Raises:
        DataError: an unreadable file; a raster when an explicit pad colour was asked for
            (``pad_value_given``), which is a B, G, R colour for 8-bit images.
    """
    path = Path(path)
    if path.suffix.lower() not in OPENCV_READS:
        info = raster_info(path)
        # A TIFF may be a plain 8-bit RGB image; any other GDAL format (VRT, JP2, ERDAS .img) is
        # one OpenCV may not read at all.
        if path.suffix.lower() not in (".tif", ".tiff") or info.count != 3 or info.dtype != "uint8" \
                or info.georef.is_georeferenced:
            if pad_value_given:
                what = "georeferenced " if info.georef.is_georeferenced else ""
                raise DataError(f"{path}: a {what}{info.count}-band {info.dtype} raster is cut into GeoTIFF "
                                f"patches padded with its nodata value (or 0); --pad-value is a B G R colour "
                                f"for 8-bit images")
            return RasterScene(path, info)
    return EightBitImage(path, padding, ext)


__all__ = ["OPENCV_READS", "crop_window", "resize_by_rate", "resized_invalid", "EightBitImage", "RasterScene",
           "open_split_image"]
