"""`rsfm shards images` on real georeferenced crops: windows, pixels, georeference, statistics,
band selection, errors, resume, and the pretraining loader over the result.

Oracles are independent of the writer: window offsets from a plain loop over the axis, valid
fractions from GDAL's per-dataset mask (rasterio ``dataset_mask``), pixels from rasterio window
reads, georeference from rasterio's ``window_transform``, statistics from numpy over the pixels.
"""
import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window, transform as window_transform

from rsfm_ds.data.pretrain.band_stats import BandMoments
from rsfm_ds.data.pretrain.loader import PretrainDataConfig, build_pretrain_loader
from rsfm_ds.data.pretrain.manifest import load_manifest
from rsfm_ds.data.pretrain.scenes import write_image_shards
from rsfm_ds.data.pretrain.transforms import normalize_batch, resize_bands
from rsfm_ds.data.raster import IMAGENET_RAW
from rsfm_ds.errors import ConfigError, DataError

SCENES = Path(__file__).parent / "data" / "scenes"
LANDSAT = "landsat8_224078_rgb_crop.tif"
RGBN = "rgbn_crop.tif"
S2 = "sentinel2_b02_b03_b04_b08_crop.tif"


def scene_root(tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "scenes"
    root.mkdir()
    for name in names:
        shutil.copy(SCENES / name, root / name)
    return root


def starts(length: int, tile: int, stride: int):
    """Window offsets written out by hand: step by stride until a window reaches the border."""
    out, x = [], 0
    while True:
        if x + tile >= length:
            out.append(length - tile)
            return out
        out.append(x)
        x += stride


def shard_records(manifest_path: Path):
    """key -> (json record, array) read straight from the tar files."""
    found = {}
    manifest = load_manifest(manifest_path)
    for shard in manifest.shards:
        with tarfile.open(manifest_path.parent / shard.name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[:-5]
                found[key] = (json.loads(data), np.load(io.BytesIO(members[key + ".npy"])))
    return found


def test_landsat_windows_pixels_georef_and_statistics(tmp_path):
    root = scene_root(tmp_path, LANDSAT)
    tile, stride, min_valid = 96, 64, 0.95
    report = write_image_shards(root, tmp_path / "out", tile=tile, stride=stride, min_valid=min_valid, maxcount=5)
    manifest = report.manifest

    with rasterio.open(root / LANDSAT) as src:
        windows = [(c, r) for r in starts(src.height, tile, stride) for c in starts(src.width, tile, stride)]
        fractions = {(c, r): float((src.dataset_mask(window=Window(c, r, tile, tile)) > 0).mean())
                     for c, r in windows}
        kept = {w for w, f in fractions.items() if f >= min_valid}
        assert 0 < len(kept) < len(windows)  # the zero border really removes some windows
        assert manifest.num_samples == len(kept)
        assert manifest.num_windows_low_valid == len(windows) - len(kept)

        records = shard_records(report.manifest_path)
        assert {tuple(rec["window"][:2]) for rec, _ in records.values()} == kept
        valid_pixels = []
        for rec, array in records.values():
            c, r, w, h = rec["window"]
            assert (w, h) == (tile, tile) and rec["path"] == LANDSAT
            expected = src.read(window=Window(c, r, w, h))
            np.testing.assert_array_equal(array, expected)
            assert array.dtype == np.uint16
            assert rec["georef"]["crs"] == "EPSG:32621"
            np.testing.assert_allclose(rec["georef"]["transform"], tuple(window_transform(Window(c, r, w, h),
                                                                                          src.transform))[:6])
            mask = src.dataset_mask(window=Window(c, r, w, h)) > 0
            valid_pixels.append(expected[:, mask])
    values = np.concatenate(valid_pixels, axis=1).astype(np.float64)
    np.testing.assert_allclose(manifest.band_stats["mean"], values.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(manifest.band_stats["std"], values.std(axis=1), rtol=1e-9)
    assert manifest.band_stats["min"] == values.min(axis=1).tolist()
    assert manifest.band_stats["max"] == values.max(axis=1).tolist()
    norm = manifest.normalization()
    np.testing.assert_allclose(norm.std, values.std(axis=1), rtol=1e-9)
    assert manifest.bands == 3 and manifest.dtype == "uint16"
    assert manifest.band_names == ("band1", "band2", "band3")  # the file names none

    # The loader, with an identity crop, yields every window once with its raw pixels, and
    # normalises per band in raw units.
    cfg = PretrainDataConfig(shards=str(report.manifest_path), img_size=tile, crop_scale=(1.0, 1.0),
                             crop_ratio=(1.0, 1.0), hflip=False, num_workers=0, shuffle_buffer=1)
    loader = build_pretrain_loader(cfg, batch_size=4, rank=0, world_size=1)
    seen = {}
    for batch in loader:
        assert batch.pixels.dtype.itemsize == 2 and tuple(batch.pixels.shape[1:]) == (3, tile, tile)
        raw = batch.pixels.numpy().astype(np.float64)
        expect = (raw - np.array(norm.mean)[None, :, None, None]) / np.array(norm.std)[None, :, None, None]
        np.testing.assert_allclose(batch.images.numpy(), expect, rtol=1e-5, atol=1e-4)
        for key, pixels in zip(batch.keys, batch.pixels.numpy()):
            seen[key] = pixels
    assert sorted(seen) == sorted(records)
    for key, pixels in seen.items():
        np.testing.assert_array_equal(pixels, records[key][1])


def test_band_selection_and_whole_file_samples(tmp_path):
    root = scene_root(tmp_path, S2)
    report = write_image_shards(root, tmp_path / "out", bands=(3, 2, 1, 4))
    m = report.manifest
    assert m.num_samples == 1 and m.bands == 4
    assert m.band_names == ("red", "green", "blue", "nir")
    (rec, array), = shard_records(report.manifest_path).values()
    with rasterio.open(root / S2) as src:
        np.testing.assert_array_equal(array, src.read([3, 2, 1, 4]))
        assert rec["window"] == [0, 0, src.width, src.height]
    assert m.normalization_stats["source"] == "measured"
    np.testing.assert_allclose(m.normalization().mean, array.reshape(4, -1).mean(axis=1), rtol=1e-9)


def test_8bit_rgb_takes_imagenet_statistics(tmp_path):
    root = scene_root(tmp_path, RGBN)
    m = write_image_shards(root, tmp_path / "out", tile=128, bands=(1, 2, 3)).manifest
    assert m.num_samples == 4 and m.normalization() == IMAGENET_RAW
    assert m.normalization_stats["source"] == "imagenet"


def test_a_file_with_another_band_count_is_one_error_naming_it(tmp_path):
    root = scene_root(tmp_path, LANDSAT, RGBN)
    with pytest.raises(DataError, match=f"{root / RGBN}: 4 bands of uint8 .* {root / LANDSAT} has 3 bands of uint16"):
        write_image_shards(root, tmp_path / "out", tile=64)
    with pytest.raises(DataError, match=f"{root / LANDSAT}: has 3 bands; no band 4"):
        write_image_shards(root, tmp_path / "out", bands=(1, 2, 4))
    with pytest.raises(ConfigError, match="stride"):
        write_image_shards(root, tmp_path / "out", tile=64, stride=65)


def test_cli_exit_codes(tmp_path, capsys):
    from rsfm_ds.cli import main

    root = scene_root(tmp_path, S2)
    args = ["shards", "images", "--root", str(root), "--tile", "128", "--stride", "96", "--out"]
    assert main(args + [str(tmp_path / "out")]) == 0
    # 256 px, tile 128, stride 96: offsets 0, 96, 128 per axis.
    assert load_manifest(tmp_path / "out" / "manifest.json").num_samples == 9
    out = capsys.readouterr().out
    assert "9 samples" in out and "blue, green, red, nir" in out
    # A bad input: one line on stderr naming the file, exit 2, no traceback (main() is what the
    # console script runs; in-process, as a subprocess would spend seconds importing torch).
    shutil.copy(SCENES / LANDSAT, root / "z.tif")
    assert main(args + [str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(root / "z.tif") in lines[0] and "Traceback" not in err


def test_resume_keeps_finished_shards(tmp_path):
    root = scene_root(tmp_path, S2)
    out = tmp_path / "out"
    first = write_image_shards(root, out, tile=64, stride=64, maxcount=4)
    names = [s.name for s in first.manifest.shards]
    assert len(names) == 4 and first.written == names
    stamps = {n: (out / n).stat().st_mtime_ns for n in names}
    lost = names[2]
    (out / lost).unlink()
    second = write_image_shards(root, out, tile=64, stride=64, maxcount=4)
    assert second.written == [lost] and sorted(second.kept) == sorted(set(names) - {lost})
    for n in names:
        if n != lost:
            assert (out / n).stat().st_mtime_ns == stamps[n]
    assert second.manifest.shards == first.manifest.shards  # byte-identical rewrite, same statistics
    assert second.manifest.band_stats == first.manifest.band_stats


def test_resize_bands_matches_per_band_resizing():
    rng = np.random.default_rng(0)
    region = rng.integers(0, 10000, size=(13, 70, 50), dtype=np.uint16)
    for interp in (cv2.INTER_AREA, cv2.INTER_LINEAR):
        out = np.empty((13, 16, 16), np.uint16)
        resize_bands(region, 16, interp, out)
        for c in range(13):
            np.testing.assert_array_equal(out[c], cv2.resize(region[c], (16, 16), interpolation=interp))


def test_manifest_rules_for_the_loader(tmp_path):
    root = scene_root(tmp_path, S2)
    path = write_image_shards(root, tmp_path / "out", tile=128).manifest_path
    with pytest.raises(ConfigError, match="^data.mean: leave it null"):
        build_pretrain_loader(PretrainDataConfig(shards=str(path), mean=(0.5, 0.5, 0.5)), 2, 0, 1)
    # A format-version-1 manifest (MillionAID, before own imagery) still loads, as 8-bit RGB.
    tree = json.loads(path.read_text())
    for key in ("samples", "band_stats", "normalization", "num_windows_low_valid"):
        tree.pop(key)
    tree["format_version"] = 1
    tree["dataset"] = "millionaid"
    old = tmp_path / "old.json"
    old.write_text(json.dumps(tree))
    m = load_manifest(old)
    assert m.format_version == 1 and m.normalization() is None and m.bands == 3
    assert m.band_names == ("red", "green", "blue")


def test_loader_crops_and_flips_raster_samples(tmp_path):
    root = scene_root(tmp_path, S2)
    report = write_image_shards(root, tmp_path / "out", tile=64, stride=64)
    records = shard_records(report.manifest_path)
    # Full-size crops with random flips: every sample is its window, mirrored or not, and both occur.
    cfg = PretrainDataConfig(shards=str(report.manifest_path), img_size=64, crop_scale=(1.0, 1.0),
                             crop_ratio=(1.0, 1.0), hflip=True, num_workers=0, shuffle_buffer=4)
    flipped = []
    for batch in build_pretrain_loader(cfg, batch_size=5, rank=0, world_size=1):
        for key, pixels in zip(batch.keys, batch.pixels.numpy()):
            raw = records[key][1]
            assert np.array_equal(pixels, raw) or np.array_equal(pixels, raw[:, :, ::-1])
            flipped.append(not np.array_equal(pixels, raw))
    assert len(flipped) == 16 and 0 < sum(flipped) < 16
    # Quarter-area crops come back at 64 px in the stored type, inside each band's value range.
    cfg = dataclasses.replace(cfg, crop_scale=(0.25, 0.25), hflip=False)
    batch = next(iter(build_pretrain_loader(cfg, batch_size=2, rank=0, world_size=1)))
    assert batch.pixels.shape == (2, 4, 64, 64) and batch.pixels.dtype == torch.uint16
    for key, pixels in zip(batch.keys, batch.pixels.numpy()):
        raw = records[key][1]
        assert (pixels.min(axis=(1, 2)) >= raw.min(axis=(1, 2))).all()
        assert (pixels.max(axis=(1, 2)) <= raw.max(axis=(1, 2))).all()


def test_band_moments_merged_in_chunks_equal_numpy_and_skip_nan():
    rng = np.random.default_rng(1)
    values = rng.normal(1000.0, 50.0, size=(3, 500)).astype(np.float32)
    values[1, rng.choice(500, 40, replace=False)] = np.nan  # band 2 only
    values[2, 7] = np.inf
    total = BandMoments(3)
    for chunk in np.array_split(values, [13, 200, 201, 420], axis=1):  # uneven, one of 1 column
        part = BandMoments(3)
        part.add_pixels(chunk)
        total.merge(BandMoments.from_json(part.to_json()))  # through the manifest's JSON, as on resume
    v = np.where(np.isfinite(values), values, np.nan).astype(np.float64)
    assert total.count.tolist() == [500, 460, 499]
    np.testing.assert_allclose(total.mean, np.nanmean(v, axis=1), rtol=1e-12)
    np.testing.assert_allclose(total.std, np.nanstd(v, axis=1), rtol=1e-9)
    np.testing.assert_array_equal(total.min, np.nanmin(v, axis=1))
    np.testing.assert_array_equal(total.max, np.nanmax(v, axis=1))


def test_normalize_batch_raw_units_and_non_finite_to_zero():
    pixels = torch.tensor([[[[10.0, float("nan")]], [[float("inf"), 300.0]]]])  # [1, 2, 1, 2]
    out = normalize_batch(pixels, (2.0, 100.0), (4.0, 50.0), unit=1.0)
    assert out.tolist() == [[[[2.0, 0.0]], [[0.0, 4.0]]]]  # (10 - 2) / 4, (300 - 100) / 50 by hand
    grey = normalize_batch(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert grey.flatten().tolist() == [2.0, 1.0, 0.5]  # (1 - 0.5) / std


def test_scan_survives_a_symlink_loop_and_skips_the_output(tmp_path):
    from rsfm_ds.data.pretrain.scenes import scan_scenes

    root = scene_root(tmp_path, S2)
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # sub/up -> root: a loop
    (root / "out").mkdir()
    shutil.copy(SCENES / S2, root / "out" / "old.tif")
    scan = scan_scenes(root, exclude=root / "out")
    assert [f.path for f in scan.files] == [S2]


def test_band_list_argument_of_shards_and_predict():
    import argparse

    from rsfm_ds.cli.common import band_list

    assert band_list("4,3,2,8") == (4, 3, 2, 8)
    for bad in ("4,a", "0,1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="1-based band numbers"):
            band_list(bad)
