"""``rsfm dota split`` on raster scenes (multi-band, 16-bit, georeferenced GeoTIFFs): patches keep
the scene's bands, data type and nodata, and each lies on the ground where it was cut."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio

from rsfm_ds.cli import main
from rsfm_ds.data.bands import InputBands
from rsfm_ds.data.det.dataset import DetectionDataset, dota_records
from rsfm_ds.data.det.split import SplitConfig, parse_patch_name, split_dota
from rsfm_ds.data.raster import BandNormalization, raster_info, read_raster, write_geotiff

SCENES = Path(__file__).parent / "data" / "scenes"
S2 = SCENES / "sentinel2_b02_b03_b04_b08_crop.tif"  # 256 x 256, 4 bands uint16, EPSG:32618
# Objects of two classes, some crossing the 160 px windows' borders (cut by the devkit rule).
LABELS = ("imagesource:Sentinel-2\ngsd:10\n"
          "20 30 60 30 60 70 20 70 ship 0\n"
          "140 100 190 100 190 130 140 130 harbor 0\n"
          "90 150 130 180 110 205 70 175 ship 1\n"
          "200 200 250 200 250 240 200 240 harbor 0\n")


def _scene_folder(root: Path, pixels: np.ndarray, nodata=None, suffix=".tif") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    if suffix == ".tif":
        write_geotiff(root / "images" / f"s2{suffix}", pixels, raster_info(S2).georef, nodata=nodata,
                      band_names=raster_info(S2).band_names[:len(pixels)])
    else:  # the same geometry as an 8-bit image, split as DOTA's PNGs are
        cv2.imwrite(str(root / "images" / f"s2{suffix}"), pixels)
    (root / "labelTxt" / "s2.txt").write_text(LABELS)
    return root


def _labels(folder: Path) -> dict:
    return {p.name: p.read_text() for p in sorted((folder / "labelTxt").iterdir())}


def _corners_on_the_ground(path: Path, window, rate: float) -> None:
    """The patch's corners map to where its window's corners lie in the scene."""
    x0, y0, x1, y1 = window
    w, h = x1 - x0, y1 - y0
    patch, scene = raster_info(path).georef, raster_info(S2).georef
    assert patch.crs == scene.crs
    got = patch.pixel_to_map(np.float64([[0, 0], [w, h]]))
    want = scene.pixel_to_map(np.float64([[x0, y0], [x1, y1]]) / rate)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rule", ["devkit", "mmrotate"])
def test_uint16_scene_splits_into_geotiff_patches_with_the_labels_of_an_8bit_split(tmp_path, rule):
    pixels = read_raster(S2)
    src = _scene_folder(tmp_path / "src", pixels, nodata=65535)
    png = _scene_folder(tmp_path / "png", np.zeros((256, 256, 3), np.uint8), suffix=".png")
    # mmrotate at rate 0.5: one 320 px window over the 256 px scene, padded past the border.
    config = SplitConfig(rule=rule, size=160, gap=40, rates=(1.0, 0.5) if rule == "mmrotate" else (1.0,))
    report = split_dota(src, tmp_path / "out", config, classes=("ship", "harbor"))
    split_dota(png, tmp_path / "out_png", config, classes=("ship", "harbor"))
    # The labels depend on the geometry only: the same files as for an 8-bit image of that size.
    assert _labels(tmp_path / "out") == _labels(tmp_path / "out_png") and report.patch_objects > 0
    patches = sorted((tmp_path / "out" / "images").iterdir())
    assert [p.stem for p in patches] == sorted(p.stem for p in (tmp_path / "out_png" / "images").iterdir())
    assert all(p.suffix == ".tif" for p in patches) and len(patches) == report.patches
    padded = 0
    for path in patches:
        name = parse_patch_name(path.stem)
        side = name.size or config.size
        window = (name.x, name.y, name.x + side, name.y + side)
        with rasterio.open(path) as patch:
            got = patch.read()
            assert patch.dtypes[0] == "uint16" and patch.nodata == 65535
            assert patch.descriptions == ("blue", "green", "red", "nir")
        want = np.full((4, side, side), 65535, np.uint16)
        inside = pixels[:, name.y:name.y + side, name.x:name.x + side]
        want[:, :inside.shape[1], :inside.shape[2]] = inside
        np.testing.assert_array_equal(got, want)
        padded += inside.shape[1:] != (side, side)
        _corners_on_the_ground(path, window, 1.0)
    assert padded == (1 if rule == "mmrotate" else 0)


def test_resized_rate_resizes_like_the_devkit_and_scales_the_georeference(tmp_path):
    pixels = read_raster(S2)
    src = _scene_folder(tmp_path / "src", pixels)
    split_dota(src, tmp_path / "out", SplitConfig(size=96, gap=16, rates=(0.5,)), classes=("ship", "harbor"))
    resized = cv2.resize(pixels.transpose(1, 2, 0), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    patches = sorted((tmp_path / "out" / "images").iterdir())
    assert len(patches) == 4  # 128 px resized: windows at 0 and 32 each way
    for path in patches:
        name = parse_patch_name(path.stem)
        assert name.rate == 0.5
        x0, y0 = int(name.x), int(name.y)
        np.testing.assert_array_equal(read_raster(path), resized[y0:y0 + 96, x0:x0 + 96].transpose(2, 0, 1))
        _corners_on_the_ground(path, (x0, y0, x0 + 96, y0 + 96), 0.5)


def test_types_opencv_does_not_resize_keep_their_type(tmp_path):
    pixels = read_raster(S2)[:2].astype(np.int32) * 1000 - 500_000  # outside int16's range
    src = _scene_folder(tmp_path / "src", pixels)
    split_dota(src, tmp_path / "out", SplitConfig(size=128, gap=0, rates=(0.5,)), classes=("ship", "harbor"))
    (path,) = (tmp_path / "out" / "images").iterdir()
    got = read_raster(path)
    want = cv2.resize(pixels.transpose(1, 2, 0).astype(np.float64), None, fx=0.5, fy=0.5,
                      interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
    assert got.dtype == np.int32 and np.abs(got - want).max() <= 0.5


def test_patches_of_a_multiband_scene_are_training_samples(tmp_path):
    src = _scene_folder(tmp_path / "src", read_raster(S2))
    split_dota(src, tmp_path / "out", SplitConfig(size=160, gap=40), classes=("ship", "harbor"))
    records = dota_records(tmp_path / "out", ("ship", "harbor"))
    norm = BandNormalization((1000.0,) * 4, (500.0,) * 4)
    dataset = DetectionDataset(records, 160, train=True, inputs=InputBands(norm, in_chans=4))
    sample = dataset[0]
    assert sample["image"].shape == (4, 160, 160) and len(sample["boxes"]) > 0


def test_a_pad_colour_is_refused_for_a_raster(tmp_path, capsys):
    src = _scene_folder(tmp_path / "src", read_raster(S2))
    code = main(["dota", "split", "--src", str(src), "--out", str(tmp_path / "out"), "--size", "128",
                 "--gap", "0", "--classes", "ship,harbor", "--pad-value", "1", "2", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "s2.tif: a georeferenced 4-band uint16 raster is cut into GeoTIFF patches" in err[0]
    assert "--pad-value" in err[0]


def test_one_band_scene_resized_keeps_its_band(tmp_path):
    # Panchromatic / SAR scenes have one band; OpenCV's resize returns [h, w] for it.
    pixels = read_raster(S2)[3:]  # the NIR band alone
    src = _scene_folder(tmp_path / "src", pixels)
    split_dota(src, tmp_path / "out", SplitConfig(size=128, gap=0, rates=(0.5,)), classes=("ship", "harbor"))
    (path,) = (tmp_path / "out" / "images").iterdir()
    want = cv2.resize(pixels[0], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(read_raster(path), want[None])


def test_resizing_does_not_blend_nodata_into_the_data(tmp_path):
    pixels = read_raster(S2)
    pixels[:, 100:140, :60] = 0  # a nodata patch, as around a scene's footprint
    src = _scene_folder(tmp_path / "src", pixels, nodata=0)
    split_dota(src, tmp_path / "out", SplitConfig(size=128, gap=0, rates=(0.5,)), classes=("ship", "harbor"))
    (path,) = (tmp_path / "out" / "images").iterdir()
    got = read_raster(path)

    def resized(image):
        return cv2.resize(image.transpose(1, 2, 0), None, fx=0.5, fy=0.5,
                          interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)

    # Which output pixels the nodata pixels feed, found by changing their value.
    other = pixels.copy()
    other[:, 100:140, :60] = 5000
    fed = (resized(pixels) != resized(other)).any(axis=0)
    assert 0 < fed.sum() < fed.size
    nodata = (got == 0).all(axis=0)
    assert np.array_equal(nodata, fed)  # those, and only those, are nodata
    np.testing.assert_array_equal(got[:, ~fed], resized(pixels)[:, ~fed])
