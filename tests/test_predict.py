"""``rsfm predict det|seg``: tiling, cross-tile merging and georeferenced outputs, on the real
scene crops of tests/data/scenes with debug-preset models saved straight after construction."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import Polygon

from launching import DEEPSPEED, MARK, free_port, job_processes, wait_for
from rsfm_ds.cli import main
from rsfm_ds.data.raster import IMAGENET_RAW, BandNormalization, Georef, raster_info, read_raster, write_geotiff
from rsfm_ds.engine.inference import InferenceOptions, load_finetuned_model, load_task_config
from rsfm_ds.engine.scene_prediction import (NODATA_CLASS, SceneInput, check_input, predict_scene_detections,
                                             predict_scene_segmentation, read_tile)
from rsfm_ds.engine.tasks import get_task
from rsfm_ds.evaluation.scene_outputs import geojson_crs
from rsfm_ds.evaluation.scene_tiling import TileGrid, boxes_to_scene, merge_tile_detections
from rsfm_ds.evaluation.sliding_window import sliding_window_inference
from rsfm_ds.ops.box_geometry import box_to_polygon

ROOT = Path(__file__).resolve().parents[1]
SCENES = ROOT / "tests" / "data" / "scenes"
RGBN = SCENES / "rgbn_crop.tif"  # 4 bands uint8 red, green, blue, nir; EPSG:32618
S2 = SCENES / "sentinel2_b02_b03_b04_b08_crop.tif"  # 4 bands uint16
SEG_CONFIG = ROOT / "configs" / "seg" / "potsdam_debug.yaml"
DET_CONFIG = ROOT / "configs" / "det" / "dota2_debug.yaml"
# Small tiles keep the debug models fast on a CPU.
SEG_OVERRIDES = ["backbone.img_size=64", "data.crop_size=64", "data.eval_stride=64"]
DET_OVERRIDES = ["backbone.img_size=128"]
CPU = ["--device", "cpu", "--no-progress"]


def _save(task: str, config: Path, overrides, path: Path) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = load_task_config(task, config, overrides)
    model = get_task(task).build(cfg).build_model()
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return {"seg": _save("seg", SEG_CONFIG, SEG_OVERRIDES, d / "seg.safetensors"),
            "det": _save("det", DET_CONFIG, DET_OVERRIDES, d / "det.safetensors")}


def _loaded(task, models):
    config, overrides = (SEG_CONFIG, SEG_OVERRIDES) if task == "seg" else (DET_CONFIG, DET_OVERRIDES)
    cfg = load_task_config(task, config, overrides)
    return load_finetuned_model(task, cfg, models[task], options=InferenceOptions(device="cpu"))


def _crop(src: Path, dst: Path, width: int, height: int, nodata=None, zero_cols: int = 0) -> Path:
    """A window of ``src`` (top-left), bands 1-3, as a GeoTIFF with the window's transform."""
    with rasterio.open(src) as s:
        data = s.read([1, 2, 3], window=rasterio.windows.Window(0, 0, width, height))
        profile = dict(driver="GTiff", width=width, height=height, count=3, dtype=data.dtype.name, crs=s.crs,
                       transform=s.transform, nodata=nodata)
    data[:, :, :zero_cols] = 0
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)
    return dst


def _normalised(path: Path) -> torch.Tensor:
    return torch.from_numpy(IMAGENET_RAW.apply(read_raster(path)))[None]


# ------------------------------------------------------------------------------ tiling and merging


def test_read_tile_nan_nodata_is_invalid_zero_and_padded(tmp_path):
    data = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    data[:, 1, 2] = np.nan  # every band nodata: invalid
    data[0, 3, 4] = np.nan  # one band only: valid (GDAL's per-dataset mask rule)
    path = write_geotiff(tmp_path / "f.tif", data, Georef("EPSG:32618", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0)),
                         nodata=float("nan"))
    scene = SceneInput(raster_info(path), None, BandNormalization((1.0, 2.0), (2.0, 4.0)))
    x, valid = read_tile(scene, (1, 0, 4, 4), 8)
    assert x.shape == (2, 8, 8) and valid.shape == (4, 4)
    assert valid.sum() == 15 and not valid[1, 1]
    assert x[:, 1, 1].tolist() == [0.0, 0.0] and not x[:, 4:].any() and not x[:, :, 4:].any()
    # (raw - mean) / std by hand: band 1 at (col 1, row 0) is 1, band 2 is 21.
    assert x[:, 0, 0].tolist() == [0.0, 4.75]
    assert x[0, 3, 3] == 0.0 and x[1, 3, 3] == (39.0 - 2.0) / 4.0  # the NaN band of a valid pixel: 0


def test_tile_grid_is_the_split_grid_by_hand():
    grid = TileGrid(height=300, width=500, tile=256, overlap=56)  # stride 200
    # columns 0, 200 and the last clamped to 500 - 256 = 244; rows 0 and 300 - 256 = 44
    assert grid.origins().tolist() == [[0, 0], [200, 0], [244, 0], [0, 44], [200, 44], [244, 44]]
    small = TileGrid(height=100, width=80, tile=256, overlap=0)
    assert small.origins().tolist() == [[0, 0]] and small.window((0, 0)) == (0, 0, 80, 100)


def test_one_object_seen_by_two_tiles_is_kept_once():
    # Tiles at columns 0 and 200 both see an object at scene x = 230; the second copy is slightly
    # off. Another class at the same place and a distinct object must survive.
    tile_boxes = torch.tensor([[230.0, 50, 40, 20, 0.3],   # tile 0, class 0, score 0.9
                               [31.0, 51, 41, 19, 0.32],  # tile 1: the same object, score 0.8
                               [30.0, 50, 40, 20, 0.3],   # tile 1, class 1 at the same place
                               [150.0, 150, 30, 30, 0.0]])  # tile 1, elsewhere
    origins = torch.tensor([[0, 0], [200, 0], [200, 0], [200, 0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    boxes = boxes_to_scene(tile_boxes, origins)
    assert boxes[1, 0] == 231.0 and boxes[3, 0] == 350.0
    a, b = (Polygon(p.reshape(4, 2).tolist()) for p in box_to_polygon(boxes[:2].double()).numpy())
    assert a.intersection(b).area / a.union(b).area > 0.1  # shapely: the copies overlap well above 0.1
    keep = merge_tile_detections(boxes, scores, labels, iou_thr=0.1)
    assert keep.tolist() == [0, 2, 3]


def test_geojson_crs_member_is_gdals():
    assert geojson_crs("EPSG:32618") == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32618"}}
    assert geojson_crs("EPSG:4326") is None and geojson_crs(None) is None


# ------------------------------------------------------------------------------ segmentation


def test_seg_geotiff_keeps_transform_crs_size_and_nodata(models, tmp_path):
    scene = _crop(RGBN, tmp_path / "scene.tif", 150, 100, nodata=0, zero_cols=10)
    code = main(["predict", "seg", "--weights", str(models["seg"]), "--config", str(SEG_CONFIG),
                 "--inputs", str(scene), "--out", str(tmp_path / "out"), *SEG_OVERRIDES, *CPU])
    assert code == 0
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "out" / "scene.tif") as out:
        assert (out.width, out.height, out.count, out.dtypes[0]) == (150, 100, 1, "uint8")
        assert out.crs == src.crs and out.transform == src.transform
        mask = out.read(1)
        assert out.nodata == NODATA_CLASS
    assert (mask[:, :10] == NODATA_CLASS).all() and (mask[:, 10:] < 5).all()
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    (record,) = summary["inputs"]
    assert record["tiles"] == 3 * 2 and sum(record["counts"].values()) == 140 * 100
    assert (tmp_path / "out" / "scene_overlay.png").is_file()


def test_seg_scene_of_one_tile_equals_a_plain_forward(models, tmp_path):
    loaded = _loaded("seg", models)
    scene = _crop(RGBN, tmp_path / "one.tif", 64, 64)
    got = predict_scene_segmentation(loaded, check_input(scene, None, IMAGENET_RAW, 3), 5, tile=64, overlap=0)
    with torch.no_grad():
        logits = loaded.model.logits(_normalised(scene))
        logits = torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    assert np.array_equal(got.mask, logits.argmax(1)[0].numpy())


def test_seg_pixels_of_one_tile_equal_that_tiles_forward(models, tmp_path):
    loaded = _loaded("seg", models)
    scene = _crop(RGBN, tmp_path / "two.tif", 100, 64)  # tiles at columns 0 and 36, overlap 28
    bands = []  # the probability sink's calls: (top, rows)
    got = predict_scene_segmentation(loaded, check_input(scene, None, IMAGENET_RAW, 3), 5, tile=64, overlap=28,
                                     probabilities=lambda top, rows: bands.append((top, rows)))
    assert [top for top, _ in bands] == [0] and bands[0][1].shape == (5, 64, 100)
    probabilities = bands[0][1]
    x = _normalised(scene)
    with torch.no_grad():
        tiles = loaded.model.logits(torch.cat([x[..., :64], x[..., 36:]]))
        tiles = torch.nn.functional.interpolate(tiles, size=(64, 64), mode="bilinear", align_corners=False)
    assert np.array_equal(got.mask[:, :36], tiles[0].argmax(0)[:, :36].numpy())
    assert np.array_equal(got.mask[:, 64:], tiles[1].argmax(0)[:, 28:].numpy())
    shared = (tiles[0][:, :, 36:] + tiles[1][:, :, :28]) / 2
    assert np.array_equal(got.mask[:, 36:64], shared.argmax(0).numpy())
    # Held as the file holds them: x 255, rounded (within one step where float rounding of the
    # average puts a value on a rounding boundary).
    want = np.rint(torch.softmax(shared, 0).numpy() * 255)
    assert probabilities.dtype == np.uint8
    assert np.abs(probabilities[:, :, 36:64].astype(np.int64) - want).max() <= 1


@pytest.mark.parametrize("size,tile,overlap", [((150, 130), 64, 16), ((40, 50), 64, 0)])
def test_seg_tiles_equal_the_evaluations_sliding_window(models, tmp_path, size, tile, overlap):
    # Several rows of tiles (the band-by-band averaging) and a scene smaller than a tile (padding).
    loaded = _loaded("seg", models)
    scene = _crop(RGBN, tmp_path / "s.tif", *size)
    bands = []
    got = predict_scene_segmentation(loaded, check_input(scene, None, IMAGENET_RAW, 3), 5, tile=tile,
                                     overlap=overlap, batch_size=3,
                                     probabilities=lambda top, rows: bands.append((top, rows)))
    with torch.no_grad():
        want = sliding_window_inference(loaded.model.logits, _normalised(scene), 5, crop=tile, stride=tile - overlap)
    assert np.array_equal(got.mask, want.argmax(1)[0].numpy())
    # The probabilities arrive band by band, top to bottom, each row once, as the whole-image
    # softmax x 255 (within one rounding step).
    tops = [top for top, _ in bands]
    assert tops[0] == 0 and tops == sorted(set(tops))
    assert [top + rows.shape[1] for top, rows in bands[:-1]] == tops[1:]
    assert len(bands) == 1 if size[1] <= tile else len(bands) >= 2  # size: (width, height)
    streamed = np.concatenate([rows for _, rows in bands], axis=1)
    assert streamed.shape == (5,) + size[::-1] and streamed.dtype == np.uint8
    assert np.abs(streamed.astype(np.int64) - np.rint(torch.softmax(want[0], 0).numpy() * 255)).max() <= 1


def test_png_input_gives_a_png_mask_and_pixel_geojson(models, tmp_path):
    import cv2

    rgb = read_raster(RGBN, bands=[1, 2, 3])[:, :70, :90]
    png = tmp_path / "plain.png"
    cv2.imwrite(str(png), np.ascontiguousarray(rgb.transpose(1, 2, 0)[..., ::-1]))
    assert main(["predict", "seg", "--weights", str(models["seg"]), "--config", str(SEG_CONFIG),
                 "--inputs", str(png), "--out", str(tmp_path / "seg"), "--no-overlay", *SEG_OVERRIDES, *CPU]) == 0
    mask = cv2.imread(str(tmp_path / "seg" / "plain.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (70, 90) and not (tmp_path / "seg" / "plain.tif").exists()
    assert main(["predict", "det", "--weights", str(models["det"]), "--config", str(DET_CONFIG),
                 "--inputs", str(png), "--out", str(tmp_path / "det"), "--score-thr", "0", "--no-overlay",
                 *DET_OVERRIDES, *CPU]) == 0
    txt = np.loadtxt(tmp_path / "det" / "plain.txt", usecols=range(8), ndmin=2)
    geo = json.loads((tmp_path / "det" / "plain.geojson").read_text())
    assert len(txt) > 0 and geo["coordinates"] == "pixel" and "crs" not in geo
    for row, feature in zip(txt, geo["features"]):
        assert feature["properties"]["coordinates"] == "pixel"
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert sorted(map(tuple, ring[:4].round(2))) == sorted(map(tuple, row.reshape(4, 2)))


# ------------------------------------------------------------------------------ detection


def test_det_scene_smaller_than_a_tile_equals_a_plain_forward(models, tmp_path):
    loaded = _loaded("det", models)
    loaded.model.roi_head.cfg.score_thr = 0.0  # an untrained detector: keep every candidate
    scene = _crop(RGBN, tmp_path / "small.tif", 100, 90)
    got = predict_scene_detections(loaded, check_input(scene, None, IMAGENET_RAW, 3), tile=128, overlap=0)
    x = torch.nn.functional.pad(_normalised(scene), (0, 28, 0, 38))
    with torch.no_grad():
        (want,) = loaded.model({"images": x, "image_sizes": [(90, 100)]})
    assert len(got.scores) == len(want.scores) > 0
    order = np.lexsort((got.labels, -got.scores))
    np.testing.assert_allclose(got.boxes[order], want.boxes.numpy(), atol=1e-5)
    assert np.array_equal(got.labels[order], want.labels.numpy())


def test_det_cli_writes_geojson_in_the_scene_crs(models, tmp_path, capsys):
    scene = _crop(RGBN, tmp_path / "geo.tif", 200, 120)
    code = main(["predict", "det", "--weights", str(models["det"]), "--config", str(DET_CONFIG), "--inputs",
                 str(scene), "--out", str(tmp_path / "out"), "--score-thr", "0", "--batch-size", "2",
                 *DET_OVERRIDES, *CPU])
    assert code == 0, capsys.readouterr().err
    lines = (tmp_path / "out" / "geo.txt").read_text().splitlines()
    geo = json.loads((tmp_path / "out" / "geo.geojson").read_text())
    assert len(lines) == len(geo["features"]) > 0
    assert geo["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32618" and geo["coordinates"] == "map"
    with rasterio.open(scene) as src:
        transform = src.transform
    for line, feature in zip(lines, geo["features"]):
        fields = line.split()
        corners = [transform * (float(fields[i]), float(fields[i + 1])) for i in range(0, 8, 2)]
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[4] and feature["properties"]["class"] == fields[8]
        assert math.isclose(feature["properties"]["score"], float(fields[9]), abs_tol=1e-4)
        # The ring is the corners (the txt rounds them to 0.01 px, i.e. 0.05 m at 5 m pixels),
        # counter-clockwise in map coordinates.
        got = np.asarray(ring[:4])
        match = [np.abs(got - np.roll(np.asarray(corners), k, axis=0)).max() for k in range(4)]
        match += [np.abs(got - np.roll(np.asarray(corners)[::-1], k, axis=0)).max() for k in range(4)]
        assert min(match) < 0.06
        assert Polygon(ring).exterior.is_ccw
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    # columns 0 and 200 - 128 = 72 (stride 128 - 25), one row: 2 tiles
    assert summary["inputs"][0]["tiles"] == 2 and summary["overlap"] == 25


# ------------------------------------------------------------------------------ errors and re-runs


PNG_BYTES = (ROOT / "tests" / "data" / "dota" / "images" / "P1888.png").read_bytes()


def _one_line_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_inputs_exit_2_with_one_line(models, tmp_path, capsys):
    base = ["--weights", str(models["seg"]), "--config", str(SEG_CONFIG), "--out", str(tmp_path / "o"),
            *SEG_OVERRIDES, *CPU]
    code, err = _one_line_error(["predict", "seg", "--inputs", str(tmp_path / "missing.tif"), *base], capsys)
    assert code == 2 and "\n" not in err and "missing.tif: no such file" in err
    code, err = _one_line_error(["predict", "seg", "--inputs", str(RGBN), *base], capsys)
    assert code == 2 and "\n" not in err and "4 bands but the model takes 3" in err
    code, err = _one_line_error(["predict", "det", "--inputs", str(RGBN), "--bands", "1,2,3", *base], capsys)
    assert code == 2 and "\n" not in err and "a seg run config" in err
    # a.png's overlay and the mask of a_overlay.png would be one file: refused before any work.
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "a_overlay.png"):
        (inputs / name).write_bytes(PNG_BYTES)
    code, err = _one_line_error(["predict", "seg", "--inputs", str(inputs), *base], capsys)
    assert code == 2 and "\n" not in err and "a_overlay.png is also an output of" in err
    assert not (tmp_path / "o").exists()


def test_existing_outputs_are_kept_unless_overwrite(models, tmp_path, capsys):
    argv = ["predict", "seg", "--weights", str(models["seg"]), "--config", str(SEG_CONFIG), "--inputs", str(RGBN),
            "--bands", "1,2,3", "--out", str(tmp_path / "o"), "--no-overlay", *SEG_OVERRIDES, *CPU]
    assert main(argv) == 0
    mask = tmp_path / "o" / "rgbn_crop.tif"
    mask.write_bytes(b"kept")
    assert main(argv) == 0
    assert "skipped" in capsys.readouterr().out and mask.read_bytes() == b"kept"
    assert main(argv + ["--overwrite"]) == 0
    with rasterio.open(mask) as out:
        assert (out.width, out.height) == (256, 256)
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_missing_outputs_are_written_and_overrides_may_follow_inputs(models, tmp_path, capsys):
    scene = _crop(RGBN, tmp_path / "p.tif", 70, 64)
    # The overrides come after --inputs here: they are told apart from paths.
    argv = ["predict", "seg", "--weights", str(models["seg"]), "--config", str(SEG_CONFIG), "--out",
            str(tmp_path / "o"), "--probabilities", "--no-overlay", *CPU, "--inputs", str(scene), *SEG_OVERRIDES]
    assert main(argv) == 0
    out = tmp_path / "o"
    with rasterio.open(out / "p_probs.tif") as probs, rasterio.open(out / "p.tif") as mask:
        p, m = probs.read().astype(np.float64) / 255, mask.read(1)
        names = get_task("seg").build(load_task_config("seg", SEG_CONFIG, SEG_OVERRIDES)).class_names()
        assert probs.descriptions == tuple(names)
    # Probabilities rounded to 1/255 each: they sum to 1 within 5 roundings, and the mask is their
    # argmax wherever the best two differ by more than the rounding.
    assert p.shape == (5, 64, 70) and np.abs(p.sum(0) - 1).max() <= 5 * 0.5 / 255 + 1e-9
    top2 = np.sort(p, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1.5 / 255
    assert clear.mean() > 0.5 and np.array_equal(p.argmax(0)[clear], m[clear])
    (out / "p_probs.tif").unlink()
    before = (out / "p.tif").stat().st_mtime_ns
    assert main(argv) == 0
    record = json.loads((out / "predictions.json").read_text())["inputs"][0]
    assert record["written"] == ["p_probs.tif"] and (out / "p.tif").stat().st_mtime_ns == before


# ------------------------------------------------------------------------------ several ranks


def test_scenes_are_shared_largest_first_to_the_least_loaded_rank():
    from rsfm_ds.engine.predict_ranks import share_by_size

    # By hand: 9 -> rank 0 (both empty: the lower); 7 -> 1; 5 -> 1 (7 < 9); 3 -> 0 (9 < 12);
    # 2 -> 0 (12 = 12: the lower); the skipped scene (0) -> 0.
    assert share_by_size([5, 9, 2, 7, 0, 3], 2) == [1, 0, 0, 1, 0, 0]
    assert share_by_size([4, 4], 3) == [0, 1] and share_by_size([], 4) == []
    rng = np.random.default_rng(0)
    for _ in range(50):
        sizes = rng.integers(1, 10_000, rng.integers(1, 40)).tolist()
        ranks = int(rng.integers(1, 9))
        owner = share_by_size(sizes, ranks)
        loads = np.bincount(owner, weights=sizes, minlength=ranks)
        assert loads.sum() == sum(sizes)
        assert loads.max() <= sum(sizes) / ranks + max(sizes)  # greedy list scheduling's bound


def _scenes_of_four_sizes(folder: Path) -> Path:
    """Crops a-d of different sizes in ``folder`` (so the ranks' shares differ)."""
    folder.mkdir()
    for name, (w, h) in {"a": (140, 100), "b": (64, 64), "c": (100, 120), "d": (70, 64)}.items():
        _crop(RGBN, folder / f"{name}.tif", w, h)
    return folder


@pytest.mark.distributed
def test_two_ranks_share_the_scenes_and_write_what_one_process_writes(models, tmp_path):
    scenes = _scenes_of_four_sizes(tmp_path / "scenes")

    def args(out):
        return ["predict", "seg", "--weights", str(models["seg"]), "--config", str(SEG_CONFIG), "--probabilities",
                "--no-overlay", "--no-progress", "--out", str(tmp_path / out), "--inputs", str(scenes),
                *SEG_OVERRIDES]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float sums in both runs
    one = subprocess.run([sys.executable, "-m", "rsfm_ds.cli", *args("one")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "rsfm_ds.cli",
              *args("two")]
    two = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    # Rank 0 alone reports (the launcher prefixes nothing; one line per input plus the total).
    assert two.stdout.count("wrote ") == 1
    for name in "abcd":
        for suffix in (".tif", "_probs.tif"):
            with rasterio.open(tmp_path / "one" / f"{name}{suffix}") as a, \
                    rasterio.open(tmp_path / "two" / f"{name}{suffix}") as b:
                assert np.array_equal(a.read(), b.read()) and a.transform == b.transform
    summary_one = json.loads((tmp_path / "one" / "predictions.json").read_text())
    summary = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert summary["ranks"] == 2 and summary_one["ranks"] == 1
    assert [r["input"] for r in summary["inputs"]] == [r["input"] for r in summary_one["inputs"]]
    assert [r["counts"] for r in summary["inputs"]] == [r["counts"] for r in summary_one["inputs"]]
    assert {r["rank"] for r in summary["inputs"]} == {0, 1}  # both ranks predicted
    # Run again: rank 0 finds every output there before any rank writes; nothing is predicted.
    launch[launch.index("--master_port") + 1] = str(free_port())
    again = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert all(r.get("skipped") for r in summary["inputs"]) and len(summary["inputs"]) == 4


@pytest.mark.distributed
def test_a_rank_failing_on_a_damaged_scene_ends_the_job_and_a_rerun_resumes(models, tmp_path):
    scenes = _scenes_of_four_sizes(tmp_path / "scenes")
    # Compressed, so that damaged bytes are a read error (in an uncompressed file they are pixels).
    info = raster_info(scenes / "a.tif")
    write_geotiff(scenes / "a.tif", read_raster(scenes / "a.tif"), info.georef)
    intact = (scenes / "a.tif").read_bytes()
    with rasterio.open(scenes / "a.tif") as src:  # a damaged first block: the header reads fine
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    with open(scenes / "a.tif", "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)
    mark = uuid.uuid4().hex
    out = tmp_path / "out"

    def run():
        cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "rsfm_ds.cli",
               "predict", "seg", "--weights", str(models["seg"]), "--config", str(SEG_CONFIG), "--no-overlay",
               "--no-progress", "--out", str(out), "--inputs", str(scenes), *SEG_OVERRIDES]
        env = {**os.environ, "OMP_NUM_THREADS": "1", MARK: mark}
        try:
            return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        finally:
            for pid in job_processes(mark):  # whatever is left, even when the test fails
                os.kill(pid, signal.SIGKILL)

    failed = run()
    assert failed.returncode != 0
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if "could not read the pixels" in line]
    assert errors and all(line.startswith("rsfm predict seg: error: ") and "a.tif" in line for line in errors), errors
    assert "Traceback" not in failed.stdout + failed.stderr
    assert wait_for(lambda: not job_processes(mark), 30), job_processes(mark)
    assert not (out / "a.tif").exists() and not (out / "predictions.json").exists()
    # The scene mended, the same command resumes: what the failed run completed is kept.
    (scenes / "a.tif").write_bytes(intact)
    done_before = {p.name for p in out.glob("[bcd].tif")}
    resumed = run()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "predictions.json").read_text())
    skipped = {Path(r["input"]).name for r in summary["inputs"] if r.get("skipped")}
    assert skipped == done_before and len(summary["inputs"]) == 4
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif", "c.tif", "d.tif", "predictions.json"]
