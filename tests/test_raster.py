"""rsfm_ds.data.raster against rasterio's own answers on the real scene crops in tests/data/scenes."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rsfm_ds.data.images import IMAGENET_MEAN, IMAGENET_STD
from rsfm_ds.data.raster import (GEOTIFF_BLOCK, IMAGENET_RAW, BandNormalization, Georef, GeoTiffRowWriter,
                                 raster_info, read_raster, valid_mask, write_geotiff)
from rsfm_ds.errors import DataError

SCENES = Path(__file__).parent / "data" / "scenes"
S2 = SCENES / "sentinel2_b02_b03_b04_b08_crop.tif"
L8 = SCENES / "landsat8_224078_rgb_crop.tif"
PNG = Path(__file__).parent / "data" / "dota" / "images" / "P1888.png"


def test_info_matches_rasterio():
    info = raster_info(L8)
    with rasterio.open(L8) as src:
        assert (info.width, info.height, info.count) == (src.width, src.height, src.count) == (288, 256, 3)
        assert info.dtype == "uint16" and info.nodata == 0
        assert info.georef.crs == "EPSG:32621"
        assert info.georef.transform == tuple(src.transform)[:6]
    assert raster_info(S2).band_names == ("blue", "green", "red", "nir")


def test_pixel_to_map_equals_rasterio_corners():
    info = raster_info(S2)
    rows, cols = np.meshgrid(np.arange(0, 256, 37), np.arange(0, 256, 53), indexing="ij")
    with rasterio.open(S2) as src:
        xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel(), offset="ul")
    ours = info.georef.pixel_to_map(np.stack([cols.ravel(), rows.ravel()], axis=1))
    np.testing.assert_allclose(ours, np.stack([xs, ys], axis=1))


def test_window_and_bands_equal_rasterio_reads():
    window = (40, 70, 33, 21)
    with rasterio.open(S2) as src:
        expect = src.read([4, 2], window=Window(*window))
        transform = src.window_transform(Window(*window))
    got = read_raster(S2, window=window, bands=[4, 2])
    assert got.dtype == np.uint16 and got.shape == (2, 21, 33)
    np.testing.assert_array_equal(got, expect)
    assert raster_info(S2).georef.shifted(40, 70).transform == pytest.approx(tuple(transform)[:6])


def test_window_past_the_border_is_zero_filled():
    whole = read_raster(L8)
    got = read_raster(L8, window=(280, 250, 16, 16))
    np.testing.assert_array_equal(got[:, :6, :8], whole[:, 250:, 280:])
    assert not got[:, 6:, :].any() and not got[:, :, 8:].any()


def test_png_reads_as_rgb_band_first():
    got = read_raster(PNG, window=(10, 20, 5, 4))
    bgr = cv2.imread(str(PNG))
    np.testing.assert_array_equal(got, bgr[20:24, 10:15, ::-1].transpose(2, 0, 1))
    assert not raster_info(PNG).georef.is_georeferenced


def test_geotiff_round_trip(tmp_path):
    data = read_raster(S2, window=(0, 0, 20, 10))
    georef = raster_info(S2).georef.shifted(0, 0)
    out = write_geotiff(tmp_path / "x.tif", data[:2], georef, nodata=0, band_names=["blue", "green"])
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), data[:2])
        assert src.crs.to_epsg() == 32618 and tuple(src.transform)[:6] == georef.transform
        assert src.nodata == 0 and src.descriptions == ("blue", "green")
    assert not list(tmp_path.glob(".*tmp"))


def _noise_with_structure(shape, seed=0):
    """Compressible but not constant pixels (deflate would make a constant tile tiny either way)."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(shape[1]), np.arange(shape[2])) % 97
    return (ramp[None] * 3 + rng.integers(0, 8, shape)).astype(np.uint16)


def test_row_writer_in_uneven_bands_equals_the_whole_write(tmp_path):
    # Bands of rows that do not line up with the 256-row tiles, as a scene's tile rows come.
    data = _noise_with_structure((3, 700, 1100))
    georef = raster_info(S2).georef
    # GDAL's block cache (1 MB) smaller than a row of tiles (3 bands x 5 tiles x 128 KB), as for a
    # wide scene with many classes: a tile passed on half-filled would be encoded, evicted and
    # encoded again when its other rows come.
    with rasterio.Env(GDAL_CACHEMAX=1):
        write_geotiff(tmp_path / "whole.tif", data, georef, nodata=0, band_names=["a", "b", "c"])
        with GeoTiffRowWriter(tmp_path / "rows.tif", 3, 700, 1100, np.uint16, georef, nodata=0,
                              band_names=["a", "b", "c"]) as out:
            top = 0
            for n in (100, 37, 300, 1, 262):
                out.write_rows(top, data[:, top:top + n])
                top += n
                assert out.rows_written <= top and (top - out.rows_written) < GEOTIFF_BLOCK + n
            assert not (tmp_path / "rows.tif").exists()  # renamed into place only at the end
    with rasterio.open(tmp_path / "rows.tif") as rows, rasterio.open(tmp_path / "whole.tif") as whole:
        np.testing.assert_array_equal(rows.read(), data)
        assert rows.profile == whole.profile and rows.descriptions == ("a", "b", "c")
        assert rows.block_shapes == [(GEOTIFF_BLOCK, GEOTIFF_BLOCK)] * 3
    # Every compressed tile encoded once: a tile encoded again leaves its first encoding as dead
    # bytes in the file (1.9x the size when rows are passed on as they come).
    assert (tmp_path / "rows.tif").stat().st_size <= 1.01 * (tmp_path / "whole.tif").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.tif", "whole.tif"]


def test_row_writer_leaves_no_file_when_interrupted_or_incomplete(tmp_path):
    data = _noise_with_structure((2, 300, 50))
    open_files = len(os.listdir("/proc/self/fd"))
    with pytest.raises(KeyboardInterrupt):
        with GeoTiffRowWriter(tmp_path / "a.tif", 2, 300, 50, np.uint16) as out:
            out.write_rows(0, data[:, :280])  # one block row already passed on to GDAL
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="280 of 300 rows"):
        with GeoTiffRowWriter(tmp_path / "b.tif", 2, 300, 50, np.uint16) as out:
            out.write_rows(0, data[:, :280])
    assert len(os.listdir("/proc/self/fd")) == open_files  # closed though the writer is still held
    with pytest.raises(ValueError, match="at row 280 expected, got .* at row 279"):
        with GeoTiffRowWriter(tmp_path / "c.tif", 2, 300, 50, np.uint16) as out:
            out.write_rows(0, data[:, :280])
            out.write_rows(279, data[:, 279:])
    assert list(tmp_path.iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == open_files  # every dataset closed


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no band 5"):
        read_raster(S2, bands=[5])
    with pytest.raises(DataError, match="no such raster"):
        raster_info(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="bad.tif"):
        read_raster(bad)
    # A damaged block is found only when read: the header is fine, the error says what GDAL saw.
    damaged = write_geotiff(tmp_path / "damaged.tif", _noise_with_structure((1, 64, 64)), raster_info(S2).georef)
    with rasterio.open(damaged) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    with open(damaged, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)
    assert raster_info(damaged).width == 64
    with pytest.raises(DataError, match=r"damaged.tif: could not read the pixels \(.*IReadBlock failed"):
        read_raster(damaged)


def test_imagenet_raw_equals_unit_scaling():
    pixels = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    expect = (pixels / 255.0 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(IMAGENET_RAW.apply(pixels), expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="expected 3 bands"):
        IMAGENET_RAW.apply(np.zeros((4, 2, 2), np.uint16))
    with pytest.raises(DataError, match="> 0"):
        BandNormalization((1.0,), (0.0,))


def test_georef_json_round_trip():
    g = Georef("EPSG:32618", (10.0, 0.0, 5.0, 0.0, -10.0, 7.0))
    assert Georef.from_json(g.to_json()) == g
    assert Georef.from_json(None) == Georef()


def test_valid_mask_any_band_rule_and_nan_nodata():
    pixels = np.array([[[0, 0, 5]], [[0, 7, 0]]], dtype=np.uint16)  # [2, 1, 3]
    # Invalid only where every band is nodata (GDAL's per-dataset mask), by hand.
    assert valid_mask(pixels, 0).tolist() == [[False, True, True]]
    assert valid_mask(pixels, None).all()
    floats = np.array([[[np.nan, np.nan, 1.0]], [[np.nan, 2.0, np.nan]]], dtype=np.float32)
    assert valid_mask(floats, float("nan")).tolist() == [[False, True, True]]


def test_jpeg_and_png_size_from_the_header_equals_the_decoded_size(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (21, 37, 3), dtype=np.uint8)
    for name in ("a.jpg", "a.png"):
        cv2.imwrite(str(tmp_path / name), image)
        info = raster_info(tmp_path / name)
        assert (info.width, info.height, info.count, info.dtype) == (37, 21, 3, "uint8")
    info = raster_info(PNG)
    assert (info.height, info.width) == cv2.imread(str(PNG)).shape[:2]
    # EXIF orientation 6 (rotate 90): OpenCV decodes it upright, 21 wide and 37 high.
    pil = pytest.importorskip("PIL.Image")
    exif = pil.Exif()
    exif[0x0112] = 6
    pil.fromarray(image).save(tmp_path / "r.jpg", exif=exif)
    info = raster_info(tmp_path / "r.jpg")
    assert (info.width, info.height) == (21, 37) == read_raster(tmp_path / "r.jpg").shape[:0:-1]
    # A damaged body is found when the pixels are read, as a one-line error naming the file.
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:40])
    assert raster_info(tmp_path / "cut.png").width == 37
    with pytest.raises(DataError, match="cut.png"):
        read_raster(tmp_path / "cut.png")
