"""Overlays: rasters as 8-bit RGB, boxes and masks drawn over them, checked against hand-computed
pixels and a real scene crop."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from rsfm_ds.data.raster import read_raster
from rsfm_ds.errors import DataError
from rsfm_ds.evaluation.overlays import (blend_mask, class_palette, described_rgb, display_rgb, draw_polygons,
                                         legend, side_by_side, write_png)

SCENES = Path(__file__).parent / "data" / "scenes"


def test_display_rgb_stretches_each_band_between_its_2nd_and_98th_percentile():
    # Band values 0..100 on a 101-pixel row: the 2nd / 98th percentiles are exactly 2 and 98, so
    # value v shows as round((v - 2) * 255 / 96), clipped to 0..255.
    ramp = np.arange(101, dtype=np.uint16).reshape(1, 1, 101)
    raster = np.concatenate([ramp, ramp * 10, 1000 - ramp], axis=0)  # [3, 1, 101]
    out = display_rgb(raster)
    assert out.shape == (1, 101, 3) and out.dtype == np.uint8
    expected = np.round(np.clip((np.arange(101) - 2) * 255 / 96, 0, 255)).astype(np.uint8)
    assert np.array_equal(out[0, :, 0], expected)
    assert np.array_equal(out[0, :, 1], expected)  # scaling a band does not change its picture
    assert np.array_equal(out[0, :, 2], expected[::-1])  # an inverted band shows inverted
    assert out[0, 50, 0] == round(48 * 255 / 96)


def test_display_rgb_blackens_nodata_and_leaves_it_out_of_the_stretch():
    raster = np.arange(101, dtype=np.uint16).reshape(1, 1, 101).repeat(3, axis=0) + 1  # 1..101
    raster = np.concatenate([np.zeros((3, 1, 50), np.uint16), raster], axis=2)  # 50 nodata pixels
    with_nodata = display_rgb(raster, nodata=0)
    assert (with_nodata[0, :50] == 0).all()
    # The valid part looks exactly like the same values without the border.
    assert np.array_equal(with_nodata[0, 50:], display_rgb(raster[:, :, 50:])[0])
    # Counting the zeros as data moves the 2nd percentile to 0: a different, darker picture.
    assert not np.array_equal(display_rgb(raster)[0, 50:], with_nodata[0, 50:])


def test_display_rgb_passes_uint8_through_and_picks_bands():
    rng = np.random.default_rng(0)
    raster = rng.integers(0, 256, size=(4, 5, 6), dtype=np.uint8)
    assert np.array_equal(display_rgb(raster), raster[:3].transpose(1, 2, 0))
    assert np.array_equal(display_rgb(raster, rgb=(3, 2, 1)), raster[[3, 2, 1]].transpose(1, 2, 0))
    grey = display_rgb(raster[:1], rgb=None)
    assert np.array_equal(grey, np.repeat(raster[0][..., None], 3, axis=2))
    with pytest.raises(DataError, match=r"rgb must name 3 bands in 0..3"):
        display_rgb(raster, rgb=(0, 1, 4))


def test_display_rgb_of_a_real_landsat_crop_with_a_nodata_border():
    raster = read_raster(SCENES / "landsat8_224078_rgb_crop.tif")  # uint16, nodata 0 border
    out = display_rgb(raster, nodata=0)
    border = (raster == 0).any(axis=0)
    assert border.any() and (out[border] == 0).all()
    valid = out[~border]
    # The stretch fills the 8-bit range: about 2% of valid pixels at each end per band.
    assert ((valid == 0).mean(axis=0) < 0.05).all() and ((valid == 255).mean(axis=0) > 0.01).all()


def test_draw_polygons_colours_a_known_outline_and_nothing_else():
    image = np.zeros((40, 40, 3), np.uint8)
    square = np.array([[10, 10, 30, 10, 30, 30, 10, 30]], dtype=np.float64)
    out = draw_polygons(image, square, np.array([1]), ["a", "b"], thickness=1, font_scale=0.3)
    colour = class_palette(2)[1]
    # A 1-px outline through the integer corners: the four edges are the class colour.
    for y, x in [(10, 20), (30, 20), (20, 10), (20, 30), (30, 30)]:
        assert np.array_equal(out[y, x], colour), (y, x)
    # The inside of the square and the far corner of the image stay untouched.
    assert (out[12:29, 12:29] == 0).all() and (out[35:, 35:] == 0).all()
    assert (image == 0).all()  # the input is not changed
    # The label box sits above the first corner, in the class colour, with the name written on it
    # in white (the colour is dark enough): some pixels there are lighter in every channel.
    assert np.array_equal(out[9, 12], colour)
    assert (out[:9, 10:18] > colour + 40).all(axis=-1).any()


def test_draw_polygons_rejects_labels_outside_the_class_names():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DataError, match=r"labels must lie in 0..1"):
        draw_polygons(image, np.zeros((1, 8)), np.array([2]), ["a", "b"])
    assert np.array_equal(draw_polygons(image, np.zeros((0, 8)), np.zeros(0), ["a"]), image)


def test_blend_mask_arithmetic_on_single_pixels():
    image = np.array([[[100, 200, 0], [10, 20, 30], [7, 8, 9]]], np.uint8)  # [1, 3, 3]
    mask = np.array([[0, 1, 255]])
    palette = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    out = blend_mask(image, mask, palette, alpha=0.25)
    assert out[0, 0].tolist() == [round(0.75 * 100 + 0.25 * 255), 150, 0]  # 139, 150, 0
    assert out[0, 1].tolist() == [round(7.5), 15, round(0.75 * 30 + 0.25 * 255)]  # 8 (half to even), 15, 86
    assert out[0, 2].tolist() == [7, 8, 9]  # ignored: the image as it is
    with pytest.raises(DataError, match=r"mask values must lie in 0..1"):
        blend_mask(image, np.array([[0, 2, 255]]), palette)


def test_class_palette_is_fixed_distinct_and_prefix_stable():
    long = class_palette(40)
    assert long.shape == (40, 3) and long.dtype == np.uint8
    assert np.array_equal(class_palette(5), long[:5])
    assert len({tuple(c) for c in long}) == 40


def test_side_by_side_pads_titles_and_round_trips_through_png(tmp_path):
    a = np.full((10, 6, 3), 50, np.uint8)
    b = np.full((14, 8, 3), 200, np.uint8)
    out = side_by_side([a, b], ["ground truth", "prediction"])
    top = out.shape[0] - 14
    assert out.shape == (top + 14, 6 + 4 + 8, 3)
    assert (out[top:top + 10, :6] == 50).all() and (out[top + 10:, :6] == 0).all()
    assert (out[top:, 10:] == 200).all() and (out[top:, 6:10] == 0).all()
    assert out[:top].any()  # the titles are written
    path = write_png(tmp_path / "sub" / "pair.png", out)
    assert np.array_equal(cv2.imread(str(path))[..., ::-1], out)
    with pytest.raises(DataError, match="one title per panel"):
        side_by_side([a, b], ["only one"])


def test_legend_shows_each_class_colour_in_its_row():
    palette = class_palette(3)
    key = legend(["water", "bare", "vegetation"], palette)
    assert key.shape[0] == 3 * 16 + 4
    for i in range(3):
        assert (key[2 + i * 16 + 8, 10] == palette[i]).all()
    with pytest.raises(DataError, match="3 class names but only 2 palette colours"):
        legend(["a", "b", "c"], palette[:2])


def test_display_rgb_measures_a_large_raster_on_a_regular_subsample(monkeypatch):
    import rsfm_ds.evaluation.overlays as overlays

    monkeypatch.setattr(overlays, "STRETCH_SAMPLES", 100)
    raster = np.arange(10_000, dtype=np.uint16).reshape(1, 100, 100).repeat(3, axis=0)
    out = overlays.display_rgb(raster)[..., 0].reshape(-1)
    # Every 100th value (0, 100, ..., 9900) is measured: percentiles 198 and 9702 (linear
    # interpolation between the 2nd/3rd and 98th/99th samples), not 199.98 and 9799.02.
    lo, hi = 198.0, 9702.0
    for v in (0, 198, 199, 4950, 9702, 9999):
        assert out[v] == round(min(max((v - lo) * 255 / (hi - lo), 0), 255)), v


def test_described_rgb_reads_band_descriptions():
    assert described_rgb(["Blue", "green", "red", "nir"]) == (2, 1, 0)
    assert described_rgb(["red", "green", "blue", "nir"]) == (0, 1, 2)
    assert described_rgb(["", "", ""]) is None and described_rgb(["red", "green"]) is None
