"""Raster files of any kind as band-first arrays with their georeference, and the one input
normalisation every task shares.

Reading: GeoTIFF / TIFF through rasterio (GDAL: any band count and data type, windows read without
loading the scene, the CRS and the affine pixel-to-map transform); JPEG / PNG / BMP through OpenCV
(8-bit, converted to RGB). Either way the result is ``[C, H, W]`` in the file's own data type and
band order, so an RGB JPEG and an RGB GeoTIFF come out alike.

Normalisation (:class:`BandNormalization`): ``(raw - mean) / std`` per band, with ``mean`` and
``std`` in the file's raw units. For 8-bit RGB imagery it is the ImageNet statistics times 255
(:data:`IMAGENET_RAW`): the same numbers as scaling to [0, 1] and normalising with ImageNet's mean
and standard deviation, which MAE pretraining and the mmrotate / mmseg recipes do. Other imagery
takes per-band statistics measured over its valid pixels (``rsfm shards images`` stores them in
the manifest), so a uint16 Sentinel-2 band and an 8-bit band both arrive near zero mean, unit
variance, with no lossy rescaling of the stored values.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError, writing
from .images import IMAGENET_MEAN, IMAGENET_STD, read_rgb

PathLike = Union[str, Path]
RASTERIO_SUFFIXES = (".tif", ".tiff", ".gtif", ".vrt", ".jp2", ".img")
OPENCV_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
RASTER_SUFFIXES = RASTERIO_SUFFIXES + OPENCV_SUFFIXES


@dataclass(frozen=True)
class Georef:
    """Where pixels lie on the ground: a CRS and the affine pixel-to-map transform.

    ``transform`` is GDAL's / rasterio's ``(a, b, c, d, e, f)``: the map coordinates of the pixel
    corner ``(col, row)`` are ``x = a * col + b * row + c``, ``y = d * col + e * row + f``
    (``col, row = 0, 0`` is the top-left corner of the top-left pixel; a pixel centre is at +0.5).
    Both None for an image without georeference (a PNG, a plain TIFF): coordinates stay pixels.
    """

    crs: Optional[str] = None
    """The coordinate reference system as WKT, or an ``EPSG:<code>`` string when it has one."""
    transform: Optional[Tuple[float, float, float, float, float, float]] = None

    @property
    def is_georeferenced(self) -> bool:
        return self.transform is not None

    def pixel_to_map(self, xy: np.ndarray) -> np.ndarray:
        """Map coordinates ``[..., 2]`` of pixel coordinates ``xy [..., 2]`` (col, row order, pixel
        corners as above); ``xy`` itself (as float64) when not georeferenced."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.transform is None:
            return xy.copy()
        a, b, c, d, e, f = self.transform
        x, y = xy[..., 0], xy[..., 1]
        return np.stack([a * x + b * y + c, d * x + e * y + f], axis=-1)

    def shifted(self, col_off: int, row_off: int) -> "Georef":
        """The georeference of a window whose top-left pixel is ``(col_off, row_off)`` here."""
        if self.transform is None:
            return self
        a, b, c, d, e, f = self.transform
        return Georef(self.crs, (a, b, a * col_off + b * row_off + c, d, e, d * col_off + e * row_off + f))

    def resized(self, rate: float) -> "Georef":
        """The georeference of this raster resized by ``rate`` (``cv2.resize(fx=fy=rate)``: the
        new pixel grid's corners are the old ones times ``rate``), so each pixel covers
        ``1 / rate`` times the ground along each axis."""
        if self.transform is None or rate == 1.0:
            return self
        a, b, c, d, e, f = self.transform
        return Georef(self.crs, (a / rate, b / rate, c, d / rate, e / rate, f))

    def to_json(self) -> dict:
        return {"crs": self.crs, "transform": list(self.transform) if self.transform else None}

    @staticmethod
    def from_json(data: Optional[dict]) -> "Georef":
        if not data:
            return Georef()
        t = data.get("transform")
        return Georef(data.get("crs"), tuple(float(v) for v in t) if t else None)

    def to_rasterio(self):
        """``(crs, transform)`` as rasterio objects (None for what is missing)."""
        from affine import Affine
        from rasterio.crs import CRS

        crs = CRS.from_user_input(self.crs) if self.crs else None
        return crs, (Affine(*self.transform) if self.transform else None)


@dataclass(frozen=True)
class RasterInfo:
    """What a raster file holds, without its pixels."""

    path: str
    width: int
    height: int
    count: int
    """Bands."""
    dtype: str
    """numpy name of the pixel type (uint8, uint16, int16, float32, ...)."""
    nodata: Optional[float]
    """The file's declared nodata value (None when it declares none)."""
    georef: Georef
    band_names: Tuple[str, ...]
    """The file's band descriptions ('' where a band has none)."""


def _is_rasterio(path: Path) -> bool:
    return path.suffix.lower() in RASTERIO_SUFFIXES


def _crs_text(crs) -> Optional[str]:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def _georef(src) -> Georef:
    t = src.transform
    # rasterio reports the identity transform for files without one; that is no georeference.
    if src.crs is None and tuple(t)[:6] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0):
        return Georef()
    return Georef(_crs_text(src.crs), tuple(float(v) for v in tuple(t)[:6]))


def _open(path: Path):
    import rasterio

    if not path.is_file():
        raise DataError(f"{path}: no such raster file")
    try:
        with warnings.catch_warnings():
            # A raster without georeference is read as pixels (Georef() says it has none).
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise DataError(f"{path}: not a raster GDAL can read ({str(e).splitlines()[0]})") from None


def raster_info(path: PathLike) -> RasterInfo:
    """The size, bands, data type, nodata value and georeference of ``path``.

    Raises:
        DataError: no such file, or one that neither GDAL nor OpenCV reads.
    """
    path = Path(path)
    if _is_rasterio(path):
        with _open(path) as src:
            return RasterInfo(str(path), src.width, src.height, src.count, src.dtypes[0], src.nodata,
                              _georef(src), tuple(d or "" for d in src.descriptions))
    size = _header_size(path)
    if size is None:  # BMP, or a header this reader does not parse: decode to learn the size
        image = read_rgb(path)
        size = image.shape[1], image.shape[0]
    return RasterInfo(str(path), size[0], size[1], 3, "uint8", None, Georef(), ("red", "green", "blue"))


def _header_size(path: Path) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of a JPEG or PNG from its header alone (listing a tree of images then
    decodes none of them; a damaged body is found when the pixels are read); None otherwise, and
    None for a file with EXIF metadata: OpenCV turns such an image upright by its orientation tag,
    which can swap width and height, so only decoding gives the size the pixels will have."""
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        return None
    data = path.read_bytes()
    if b"Exif\x00\x00" in data[:65536] or b"eXIf" in data:
        return None
    if suffix == ".png":
        # Signature, then the IHDR chunk: length, type, width and height as big-endian uint32.
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return None
    from .jpeg import jpeg_size

    try:
        return jpeg_size(data)
    except ValueError:
        return None


def read_raster(path: PathLike, window: Optional[Tuple[int, int, int, int]] = None,
                bands: Optional[Sequence[int]] = None) -> np.ndarray:
    """Pixels of ``path`` as ``[C, H, W]`` in the file's data type.

    Args:
        window: ``(col_off, row_off, width, height)`` in pixels; None reads the whole raster. Parts
            of the window outside the raster are filled with 0.
        bands: 1-based band numbers to read, in this order; None reads every band.

    Raises:
        DataError: no such file, an unreadable one, or a band number it does not have.
    """
    path = Path(path)
    if _is_rasterio(path):
        from rasterio.windows import Window

        with _open(path) as src:
            index = list(bands) if bands is not None else list(range(1, src.count + 1))
            bad = [b for b in index if not 1 <= b <= src.count]
            if bad:
                raise DataError(f"{path}: has {src.count} bands; no band {bad[0]} (bands are numbered from 1)")
            try:
                if window is None:
                    return src.read(index)
                col, row, w, h = window
                if col >= 0 and row >= 0 and col + w <= src.width and row + h <= src.height:
                    # A window inside the raster is a plain read: a boundless one goes through a VRT
                    # opened per call, ~40x slower for a small tile, and every tile of a scene and
                    # every window of ``rsfm shards images`` is one.
                    return src.read(index, window=Window(col, row, w, h))
                return src.read(index, window=Window(col, row, w, h), boundless=True, fill_value=0)
            except Exception as e:  # GDAL reports a damaged block only when it is read
                # rasterio's own message points to the GDAL error it chained ("See previous exception").
                cause = e.__cause__ or e.__context__ or e
                raise DataError(f"{path}: could not read the pixels ({str(cause).splitlines()[0]})") from None
    image = np.ascontiguousarray(read_rgb(path).transpose(2, 0, 1))
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= 3]
        if bad:
            raise DataError(f"{path}: has 3 bands; no band {bad[0]} (bands are numbered from 1)")
        image = image[[b - 1 for b in bands]]
    if window is not None:
        col, row, w, h = window
        out = np.zeros((image.shape[0], h, w), image.dtype)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + h, image.shape[1]), min(col + w, image.shape[2])
        if r1 > r0 and c1 > c0:
            out[:, r0 - row:r1 - row, c0 - col:c1 - col] = image[:, r0:r1, c0:c1]
        image = out
    return image


GEOTIFF_BLOCK = 256
"""Tile side of the GeoTIFFs written here: a GIS reads a window without decoding whole rows."""


class GeoTiffRowWriter:
    """A tiled, compressed GeoTIFF written top to bottom, a band of rows at a time, so a
    scene-sized output never has to be held whole (``with`` block).

    The file gets ``georef``'s CRS and transform, ``nodata`` and the band descriptions
    ``band_names``; GDAL writes a BigTIFF where the data could pass 4 GiB. It is written under a
    hidden temporary name and renamed when the ``with`` block ends without an exception, every
    row written; on an exception the temporary file is removed, so a file under ``path`` is always
    complete. Rows are passed on to GDAL in whole rows of tiles (:data:`GEOTIFF_BLOCK`), so every
    compressed tile is encoded once, whatever the bands' heights: at most ``count x (block + band
    height) x width`` values are held.

    Args:
        path: the file to write.
        count, height, width: bands and size of the image.
        dtype: the pixels' numpy data type.
    """

    def __init__(self, path: PathLike, count: int, height: int, width: int, dtype, georef: Georef = Georef(),
                 nodata: Optional[float] = None, band_names: Sequence[str] = (), compress: str = "deflate"):
        self.path = Path(path)
        self.count, self.height, self.width = count, height, width
        self.dtype = np.dtype(dtype)
        self.band_names = tuple(band_names)
        if self.band_names and len(self.band_names) != count:
            raise ValueError(f"{self.path}: {len(self.band_names)} band names for {count} bands")
        crs, transform = georef.to_rasterio()
        self.profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=self.dtype.name,
                            compress=compress, nodata=nodata, bigtiff="IF_SAFER", tiled=True,
                            blockxsize=GEOTIFF_BLOCK, blockysize=GEOTIFF_BLOCK)
        if crs is not None:
            self.profile["crs"] = crs
        if transform is not None:
            self.profile["transform"] = transform
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.rows_received = 0  # rows given to write_rows
        self.rows_written = 0  # rows passed on to GDAL
        self._pending = []
        self._dst = None

    def __enter__(self) -> "GeoTiffRowWriter":
        import rasterio

        with writing(self.path), warnings.catch_warnings():
            # A file without georeference is a legitimate output (a PNG scene's mask or patches).
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            self._dst = rasterio.open(self.tmp, "w", **self.profile)
        return self

    def write_rows(self, top: int, rows: np.ndarray) -> None:
        """Write ``rows [count, n, width]`` (or ``[n, width]`` for one band) at scene rows
        ``[top, top + n)``; bands come in order, each starting where the previous one ended."""
        rows = rows[None] if rows.ndim == 2 else rows
        if top != self.rows_received or rows.shape[0] != self.count or rows.shape[2] != self.width:
            raise ValueError(f"{self.path}: rows [{self.count}, n, {self.width}] at row {self.rows_received} "
                             f"expected, got {list(rows.shape)} at row {top}")
        if top + rows.shape[1] > self.height:
            raise ValueError(f"{self.path}: rows up to {top + rows.shape[1]} passed the height {self.height}")
        self._pending.append(rows.astype(self.dtype, copy=False))
        self.rows_received += rows.shape[1]
        ready = self.rows_received if self.rows_received == self.height else \
            self.rows_received // GEOTIFF_BLOCK * GEOTIFF_BLOCK
        if ready > self.rows_written:
            self._flush(ready)

    def _flush(self, until: int) -> None:
        """Pass rows ``[rows_written, until)`` on to GDAL; keep the rest pending."""
        from rasterio.windows import Window

        pending = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
        n = until - self.rows_written
        with writing(self.path):
            self._dst.write(pending[:, :n], window=Window(0, self.rows_written, self.width, n))
        self._pending = [pending[:, n:]] if pending.shape[1] > n else []
        self.rows_written = until

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                if exc_type is None:
                    if self.rows_received != self.height:
                        raise ValueError(f"{self.path}: {self.rows_received} of {self.height} rows written")
                    with writing(self.path):
                        for i, name in enumerate(self.band_names, start=1):
                            self._dst.set_band_description(i, name)
            finally:
                with writing(self.path):
                    self._dst.close()
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_geotiff(path: PathLike, array: np.ndarray, georef: Georef = Georef(), nodata: Optional[float] = None,
                  band_names: Sequence[str] = (), compress: str = "deflate") -> Path:
    """Write ``array`` (``[C, H, W]`` or ``[H, W]``) to a tiled, compressed GeoTIFF with ``georef``'s
    CRS and transform (:class:`GeoTiffRowWriter`: a BigTIFF where the data could pass 4 GiB;
    written to a temporary name and renamed, so a file under ``path`` is always complete)."""
    data = array[None] if array.ndim == 2 else array
    with GeoTiffRowWriter(path, data.shape[0], data.shape[1], data.shape[2], data.dtype, georef, nodata,
                          band_names, compress) as out:
        out.write_rows(0, data)
    return Path(path)


def valid_mask(pixels: np.ndarray, nodata: Optional[float]) -> np.ndarray:
    """``bool [H, W]``: True where a pixel of ``pixels [C, H, W]`` is valid, i.e. where any band
    differs from ``nodata`` (GDAL's per-dataset mask rule); a NaN ``nodata`` matches NaN pixels.
    All True when ``nodata`` is None."""
    if nodata is None:
        return np.ones(pixels.shape[1:], bool)
    if math.isnan(nodata):
        return ~np.isnan(pixels).all(axis=0)
    return (pixels != nodata).any(axis=0)


@dataclass(frozen=True)
class BandNormalization:
    """``(raw - mean) / std`` per band, in the raw units of the stored pixels (module docstring)."""

    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise DataError(f"band normalisation: {len(self.mean)} means but {len(self.std)} standard deviations")
        bad = [s for s in self.std if not (s > 0 and math.isfinite(s))]
        if bad:
            raise DataError(f"band normalisation: standard deviations must be finite and > 0, got {bad[0]}")

    @property
    def bands(self) -> int:
        return len(self.mean)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """``float32 [C, H, W]`` of ``raw [C, H, W]`` (any numeric dtype).

        Raises:
            DataError: ``raw`` has another band count.
        """
        if raw.shape[0] != self.bands:
            raise DataError(f"band normalisation: expected {self.bands} bands, got an image with {raw.shape[0]}")
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        inv = (1.0 / np.asarray(self.std, np.float32))[:, None, None]
        return (raw.astype(np.float32) - mean) * inv


IMAGENET_RAW = BandNormalization(tuple(255.0 * m for m in IMAGENET_MEAN), tuple(255.0 * s for s in IMAGENET_STD))
"""ImageNet's RGB statistics in 8-bit units: the normalisation of 8-bit RGB imagery."""


__all__ = ["Georef", "RasterInfo", "raster_info", "read_raster", "GEOTIFF_BLOCK", "GeoTiffRowWriter",
           "write_geotiff", "valid_mask", "BandNormalization", "IMAGENET_RAW", "RASTER_SUFFIXES",
           "RASTERIO_SUFFIXES", "OPENCV_SUFFIXES"]
