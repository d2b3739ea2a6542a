"""Own classes and multi-band inputs in fine-tuning: DOTA-format folders with the user's class list,
image/mask folders of any raster format, per-band normalisation, and the one-line errors.

The two short real runs (a detector on [boat, tank], a 4-band segmenter from a real RGB+NIR crop
with a 3-band pretrained backbone adapted to it) check that the names reach the metrics, the
evaluation JSON, the Task1 files and the rendered report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import torch
from launching import ROOT, free_port
from safetensors.torch import save_file

from rsfm_ds.config import load_config
from rsfm_ds.data.det.dataset import DetectionDataset, dota_records
from rsfm_ds.data.images import IMAGENET_MEAN, IMAGENET_STD
from rsfm_ds.data.raster import raster_info, write_geotiff
from rsfm_ds.data.seg.folders import colour_to_index, folder_pairs, read_mask
from rsfm_ds.engine.detection import DetectionTask, DetFinetuneConfig
from rsfm_ds.engine.segmentation import SegFinetuneConfig, SegmentationTask
from rsfm_ds.errors import ConfigError, DataError, UserError
from rsfm_ds.models.presets import create_vit
from rsfm_ds.report import write_report

SCENES = ROOT / "tests" / "data" / "scenes"
RGBN = SCENES / "rgbn_crop.tif"
NDVI_CLASSES = ["low-ndvi", "mid-ndvi", "high-ndvi"]


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


# --- data: own-class DOTA folders ------------------------------------------------------------------

def rename_classes(folder: Path, names: dict) -> None:
    """Rewrite a synthetic DOTA folder's class names (``names``: old -> new; others kept)."""
    for label in (folder / "labelTxt").glob("*.txt"):
        lines = []
        for line in label.read_text().splitlines():
            parts = line.split()
            if len(parts) == 10:
                parts[8] = names.get(parts[8], parts[8])
            lines.append(" ".join(parts))
        label.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def own_dota(tmp_path_factory) -> Path:
    from rsfm_ds.data.synth.detection import synth_dota

    root = tmp_path_factory.mktemp("own_dota")
    synth_dota(root / "train", images=4, seed=0, size=256)
    synth_dota(root / "val", images=2, seed=1, size=256, first_id=100)
    for split in ("train", "val"):
        rename_classes(root / split, {"ship": "boat", "storage-tank": "tank"})
    return root


def det_config(root: Path, *extra: str) -> DetFinetuneConfig:
    return load_config(DetFinetuneConfig, ROOT / "configs/det/own_dota_debug.yaml",
                       [f"data.train_dirs=[{root}/train]", f"data.val_dir={root}/val", *extra])


def test_unknown_class_is_an_error_naming_file_and_line_or_skipped(own_dota):
    cfg = det_config(own_dota)
    with pytest.raises(UserError) as err:
        DetectionTask(cfg).train_dataset()
    # The first object line of a name outside [boat, tank] in the first label file.
    first = sorted((own_dota / "train" / "labelTxt").glob("*.txt"))[0]
    lineno = next(i for i, line in enumerate(first.read_text().splitlines(), 1)
                  if len(line.split()) == 10 and line.split()[8] not in ("boat", "tank"))
    assert f"{first}:{lineno}: class: unknown class" in one_line(err.value)

    skipped = DetectionTask(det_config(own_dota, "data.unknown_classes=skip"))
    records = dota_records(own_dota / "train", ("boat", "tank"), skip_unknown=True)
    truth = [sum(line.split()[8] == name for f in sorted((own_dota / "train" / "labelTxt").glob("*.txt"))
                 for line in f.read_text().splitlines() if len(line.split()) == 10) for name in ("boat", "tank")]
    assert [int(sum((r.labels == k).sum() for r in records)) for k in (0, 1)] == truth
    assert skipped.class_names() == ("boat", "tank") and len(skipped.train_dataset()) > 0


def test_own_class_configs_are_checked():
    with pytest.raises(ConfigError, match="data.classes: required for dataset dota"):
        load_config(DetFinetuneConfig, ROOT / "configs/det/own_dota_debug.yaml", ["data.classes=null"])
    with pytest.raises(ConfigError, match="one word"):
        load_config(DetFinetuneConfig, ROOT / "configs/det/own_dota_debug.yaml", ["data.classes=[a/b, c]"])
    with pytest.raises(ConfigError, match="data.unknown_classes: skip applies to dataset dota"):
        load_config(DetFinetuneConfig, ROOT / "configs/det/dota2_debug.yaml", ["data.unknown_classes=skip"])
    with pytest.raises(ConfigError, match="data.class_names: required for dataset folders"):
        load_config(SegFinetuneConfig, ROOT / "configs/seg/own_folders_debug.yaml", ["data.class_names=null"])
    with pytest.raises(ConfigError, match="data.palette: needs one colour per class"):
        load_config(SegFinetuneConfig, ROOT / "configs/seg/own_folders_debug.yaml", ["data.palette=[[0, 0, 0]]"])


def test_rgb_benchmark_path_keeps_its_exact_numbers(own_dota):
    """The 8-bit RGB default is ImageNet's statistics as float32 x 255, as before, to the last bit."""
    record = dota_records(own_dota / "val", ("boat", "tank"), skip_unknown=True)[0]
    sample = DetectionDataset([record], img_size=256, train=False)[0]
    rgb = cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB).astype(np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32) * 255
    std = np.asarray(IMAGENET_STD, np.float32) * 255
    assert torch.equal(sample["image"], torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1).copy()))


def test_detection_reads_multiband_geotiff_and_one_band_selection(tmp_path):
    from rsfm_ds.data.bands import InputBands
    from rsfm_ds.data.det.augment import RandomRotate
    from rsfm_ds.data.raster import BandNormalization

    folder = tmp_path / "rgbn_dota"
    (folder / "images").mkdir(parents=True)
    (folder / "labelTxt").mkdir()
    with rasterio.open(RGBN) as src:
        raw = src.read()
    write_geotiff(folder / "images" / "scene.tif", raw, raster_info(RGBN).georef)
    (folder / "labelTxt" / "scene.txt").write_text("100 100 160 100 160 140 100 140 boat 0\n")
    records = dota_records(folder, ("boat", "tank"))
    norm = BandNormalization((10.0, 20.0, 30.0, 40.0), (2.0, 4.0, 5.0, 8.0))
    sample = DetectionDataset(records, 256, train=False, inputs=InputBands(norm, in_chans=4))[0]
    mean, std = np.float32([10, 20, 30, 40])[:, None, None], np.float32([2, 4, 5, 8])[:, None, None]
    want = (raw.astype(np.float32) - mean) / std
    assert torch.allclose(sample["image"], torch.from_numpy(want), atol=1e-6)
    # One band (NIR) through every training augmentation: OpenCV returns [H, W] for one channel.
    np.random.seed(0)
    nir = InputBands(BandNormalization((40.0,), (8.0,)), bands=(4,), in_chans=1)
    train = DetectionDataset(records, 192, train=True, rot90_prob=1.0, inputs=nir,
                             rotate=RandomRotate(prob=1.0, mode="value", angles=(30.0,), allow_negative=True))
    item = train[0]
    assert item["image"].shape == (1, 192, 192) and item["image"].dtype == torch.float32
    with pytest.raises(DataError) as err:
        DetectionDataset(records, 256, train=False, inputs=InputBands())
    assert "scene.tif: 4 bands (all bands) but backbone.in_chans is 3" in one_line(err.value)


def test_normalisation_precedence(tmp_path, monkeypatch):
    from rsfm_ds.data.raster import IMAGENET_RAW, BandNormalization
    from rsfm_ds.engine import inputs
    from rsfm_ds.engine.inputs import BandsConfig, resolve_inputs

    backbone = tmp_path / "b.safetensors"
    save_file({"x": torch.zeros(1)}, backbone, metadata={"band_mean": "[1, 2, 3, 4]", "band_std": "[5, 6, 7, 8]"})
    stats = BandNormalization((9.0, 9.0, 9.0, 9.0), (3.0, 3.0, 3.0, 3.0))
    monkeypatch.setattr(inputs, "load_band_stats", lambda path: stats)
    explicit = BandsConfig(band_mean=(0.0, 0.0, 0.0, 0.0), band_std=(1.0, 1.0, 1.0, 1.0))
    assert resolve_inputs(explicit, 4, str(backbone))[0].normalization.mean == (0.0, 0.0, 0.0, 0.0)
    assert resolve_inputs(BandsConfig(band_stats="m.json"), 4, str(backbone))[0].normalization == stats
    from_backbone, source = resolve_inputs(BandsConfig(), 4, str(backbone))
    assert from_backbone.normalization == BandNormalization((1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0))
    assert "backbone.pretrained" in source
    default = resolve_inputs(BandsConfig(), 3, None)[0]
    assert default.normalization == IMAGENET_RAW and default.require_8bit
    with pytest.raises(ConfigError, match="data.band_mean: the metadata of backbone.pretrained .* gives 4 bands"):
        resolve_inputs(BandsConfig(), 3, str(backbone))
    with pytest.raises(ConfigError, match=r"data.bands: 2 bands \[1, 2\] but backbone.in_chans is 4"):
        resolve_inputs(BandsConfig(bands=(1, 2)), 4, None)



def test_band_stats_from_a_pretraining_manifest(tmp_path):
    from rsfm_ds.data.pretrain.manifest import FORMAT, FORMAT_VERSION, Manifest, save_manifest
    from rsfm_ds.data.raster import BandNormalization
    from rsfm_ds.engine.inputs import load_band_stats

    tree = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": "images", "split": "train",
            "shards": [], "classes": [],
            "samples": {"member": "npy", "bands": 2, "band_names": ["red", "nir"], "dtype": "uint16"},
            "normalization": {"mean": [1.5, 2.5], "std": [3.0, 4.0], "source": "measured"}}
    save_manifest(Manifest.from_json(tree), tmp_path / "manifest.json")
    assert load_band_stats(str(tmp_path / "manifest.json")) == BandNormalization((1.5, 2.5), (3.0, 4.0))
    rgb = dict(tree, samples=None, normalization=None)
    save_manifest(Manifest.from_json(rgb), tmp_path / "rgb.json")
    with pytest.raises(ConfigError, match="data.band_stats: .*rgb.json holds no band statistics"):
        load_band_stats(str(tmp_path / "rgb.json"))
    with pytest.raises(ConfigError, match="data.band_stats: "):
        load_band_stats(str(tmp_path / "missing.json"))


# --- data: folders segmentation, bands, normalisation ---------------------------------------------

def ndvi_classes(raster: np.ndarray) -> np.ndarray:
    """``uint8 [H, W]``: NDVI terciles of an RGBN raster ``[4, H, W]`` (something learnable)."""
    red, nir = raster[0].astype(np.float64), raster[3].astype(np.float64)
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    low, high = np.quantile(ndvi, [1 / 3, 2 / 3])
    return ((ndvi > low).astype(np.uint8) + (ndvi > high)).astype(np.uint8)


@pytest.fixture(scope="module")
def rgbn_folders(tmp_path_factory) -> Path:
    """The real 4-band crop cut into 128 px GeoTIFF tiles; train masks as TIFF, val masks as PNG."""
    root = tmp_path_factory.mktemp("rgbn")
    with rasterio.open(RGBN) as src:
        raster = src.read()
    mask = ndvi_classes(raster)
    georef = raster_info(RGBN).georef
    tiles = [(r, c) for r in (0, 128) for c in (0, 128)]
    for split, chosen in (("train", tiles), ("val", tiles[:2])):
        (root / "img_dir" / split).mkdir(parents=True)
        (root / "ann_dir" / split).mkdir(parents=True)
        for r, c in chosen:
            stem = f"tile_{r}_{c}"
            write_geotiff(root / "img_dir" / split / f"{stem}.tif", raster[:, r:r + 128, c:c + 128],
                          georef.shifted(c, r))
            if split == "train":
                write_geotiff(root / "ann_dir" / split / f"{stem}.tif", mask[r:r + 128, c:c + 128],
                              georef.shifted(c, r))
            else:
                cv2.imwrite(str(root / "ann_dir" / split / f"{stem}.png"), mask[r:r + 128, c:c + 128])
    return root


def band_stats() -> tuple:
    with rasterio.open(RGBN) as src:
        raster = src.read().astype(np.float64)
    return raster.mean(axis=(1, 2)), raster.std(axis=(1, 2))


def seg_overrides(root: Path, *extra: str) -> list:
    mean, std = band_stats()
    return [f"data.root={root}", "backbone.in_chans=4", "backbone.img_size=128", "data.crop_size=128",
            "data.eval_stride=128", f"data.class_names=[{', '.join(NDVI_CLASSES)}]",
            f"data.band_mean=[{', '.join(f'{v:.6f}' for v in mean)}]",
            f"data.band_std=[{', '.join(f'{v:.6f}' for v in std)}]", *extra]


def seg_config(root: Path, *extra: str) -> SegFinetuneConfig:
    return load_config(SegFinetuneConfig, ROOT / "configs/seg/own_folders_debug.yaml", seg_overrides(root, *extra))


def test_folders_read_tiff_and_png_masks_and_normalise_per_band(rgbn_folders):
    pairs = folder_pairs(rgbn_folders, "train")
    assert [p.name for p, _ in pairs] == ["tile_0_0.tif", "tile_0_128.tif", "tile_128_0.tif", "tile_128_128.tif"]
    task = SegmentationTask(seg_config(rgbn_folders))
    item = task.eval_dataset()[0]
    with rasterio.open(RGBN) as src:
        raw = src.read(window=((0, 128), (0, 128))).astype(np.float32)
    mean, std = band_stats()
    expected = (raw - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None]
    assert item["image"].shape == (4, 128, 128)
    assert torch.allclose(item["image"], torch.from_numpy(expected), atol=1e-5)
    with rasterio.open(RGBN) as src:
        assert torch.equal(item["label"], torch.from_numpy(ndvi_classes(src.read())[:128, :128].astype(np.int64)))
    assert np.allclose(task.input_normalization().mean, mean) and task.input_bands() is None
    assert task.class_names() == tuple(NDVI_CLASSES)
    # A band selection: bands 4, 1, 2 of a 3-channel backbone.
    picked = SegmentationTask(seg_config(rgbn_folders, "backbone.in_chans=3", "data.bands=[4, 1, 2]",
                                         "data.band_mean=[100, 50, 60]", "data.band_std=[10, 20, 30]"))
    got = picked.eval_dataset()[0]["image"]
    want = (raw[[3, 0, 1]] - np.float32([100, 50, 60])[:, None, None]) / np.float32([10, 20, 30])[:, None, None]
    assert torch.allclose(got, torch.from_numpy(want), atol=1e-5) and picked.input_bands() == (4, 1, 2)
    # Photometric distortion is RGB-only: 4-band training crops are the same with it on or off.
    on = SegmentationTask(seg_config(rgbn_folders, "data.photometric=true")).train_dataset()[1]
    off = SegmentationTask(seg_config(rgbn_folders, "data.photometric=false")).train_dataset()[1]
    assert torch.equal(on["image"], off["image"]) and torch.equal(on["label"], off["label"])


def test_band_count_and_missing_statistics_errors(rgbn_folders, tmp_path):
    # A 4-band file under a 3-channel backbone with 3 statistics: named file, data.bands, in_chans.
    task = SegmentationTask(seg_config(rgbn_folders, "backbone.in_chans=3", "data.band_mean=[1, 2, 3]",
                                       "data.band_std=[1, 1, 1]"))
    with pytest.raises(DataError) as err:
        task.train_dataset()
    assert "tile_0_0.tif: 4 bands (all bands) but backbone.in_chans is 3" in one_line(err.value)
    # 4 bands with no statistics anywhere: named data.band_mean.
    bare = load_config(SegFinetuneConfig, ROOT / "configs/seg/own_folders_debug.yaml",
                       [f"data.root={rgbn_folders}", "backbone.in_chans=4", "backbone.img_size=128",
                        "data.crop_size=128", "data.eval_stride=128"])
    with pytest.raises(ConfigError) as err:
        SegmentationTask(bare).train_dataset()
    assert one_line(err.value).startswith("data.band_mean: 4-band input needs its per-band statistics")
    # 3-band uint16 imagery (Landsat) with no statistics: the 8-bit default refuses it.
    land = tmp_path / "land"
    for sub in ("img_dir/train", "ann_dir/train"):
        (land / sub).mkdir(parents=True)
    with rasterio.open(SCENES / "landsat8_224078_rgb_crop.tif") as src:
        write_geotiff(land / "img_dir/train/a.tif", src.read()[:, :128, :128], raster_info(src.name).georef)
    cv2.imwrite(str(land / "ann_dir/train/a.png"), np.zeros((128, 128), np.uint8))
    rgb16 = load_config(SegFinetuneConfig, ROOT / "configs/seg/own_folders_debug.yaml",
                        [f"data.root={land}", "backbone.img_size=128", "data.crop_size=128", "data.eval_stride=128",
                         "data.val_split=train"])
    with pytest.raises(DataError) as err:
        SegmentationTask(rgb16).eval_dataset()[0]
    assert "a.tif: uint16 pixels but no normalisation is configured" in one_line(err.value)
    assert "data.band_mean" in str(err.value)


def test_palette_masks_round_trip_and_unknown_colour(tmp_path):
    palette = [(0, 0, 255), (128, 128, 128), (0, 255, 0)]
    index = np.random.default_rng(0).integers(0, 3, (20, 30)).astype(np.uint8)
    colour = np.asarray(palette, np.uint8)[index]  # the independent forward mapping
    assert np.array_equal(colour_to_index(colour, palette, "m.png"), index)
    cv2.imwrite(str(tmp_path / "m.png"), cv2.cvtColor(colour, cv2.COLOR_RGB2BGR))
    assert np.array_equal(read_mask(tmp_path / "m.png", palette), index)
    colour[7, 11] = (1, 2, 3)
    with pytest.raises(DataError) as err:
        colour_to_index(colour, palette, "m.png")
    assert one_line(err.value) == "m.png: colour [1, 2, 3] at pixel (x=11, y=7) is not in data.palette (1 pixels)"
    # A 16-bit value must not alias an 8-bit colour: (0, 0, 256 + 255) would code as (0, 1, 255).
    wide = np.asarray(palette, np.uint16)[index]
    wide[0, 0] = (0, 0, 511)
    with pytest.raises(DataError, match=r"m.tif: a colour mask holds 8-bit colours, got values 0..511"):
        colour_to_index(wide, palette, "m.tif")


# --- short real runs: train -> eval -> report --------------------------------------------------------

def run_finetune(kind: str, config: str, log: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "rsfm_ds.cli", "finetune", kind, "--config", config, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, log.read_text()[-4000:]


@pytest.mark.slow
def test_detection_on_own_classes_train_eval_report(own_dota, tmp_path):
    run_dir = tmp_path / "det"
    run_finetune("det", "configs/det/own_dota_debug.yaml", tmp_path / "det.log", f"run_dir={run_dir}",
                 f"data.train_dirs=[{own_dota}/train]", f"data.val_dir={own_dota}/val",
                 "data.unknown_classes=skip", "schedule.length=1", "schedule.milestones=[1]", "schedule.warmup=1",
                 "eval.every=1", "log.every_steps=1")
    evals = sorted((run_dir / "eval").glob("step_*.json"))
    result = json.loads(evals[-1].read_text())
    assert {"mAP", "AP/boat", "AP/tank"} <= set(result) and not any(k.startswith("AP/ship") for k in result)
    assert "2 classes (boat, tank)" in result["protocol"]
    task1 = run_dir / "eval" / evals[-1].stem / "task1"
    assert sorted(p.name for p in task1.iterdir()) == ["Task1_boat.txt", "Task1_tank.txt"]
    report = write_report(tmp_path / "report" / "report.md", None, {"own-det": run_dir}).read_text()
    assert "| boat |" in report and "| tank |" in report and "boat, tank" in report
    assert "skipped" in (tmp_path / "det.log").read_text()  # objects of other names, counted


@pytest.mark.slow
def test_four_band_segmentation_from_rgbn_crop_with_adapted_rgb_backbone(rgbn_folders, tmp_path):
    backbone = tmp_path / "rgb_backbone.safetensors"
    state = {k: v.contiguous() for k, v in create_vit("debug", img_size=96).state_dict().items()}
    save_file(state, backbone, metadata={"preset": "debug"})
    run_dir = tmp_path / "seg"
    run_finetune("seg", "configs/seg/own_folders_debug.yaml", tmp_path / "seg.log", f"run_dir={run_dir}",
                 *seg_overrides(rgbn_folders), f"backbone.pretrained={backbone}", "schedule.length=6",
                 "schedule.warmup=1", "eval.every=6", "checkpoint.every_steps=6", "train.global_batch_size=2",
                 "train.micro_batch_size=2", "train.num_workers=0", "log.every_steps=1", "eval.batch_size=1")
    log = (run_dir / "train.log").read_text()
    assert "patch embedding adapted from 3 to 4 bands (timm adapt_input_conv rule" in log
    mean, _ = band_stats()
    assert "input: 4 channels (all bands); mean/std " in log and "from data.band_mean/band_std" in log
    assert f"{mean[3]:.4g}/" in log  # the configured NIR mean
    result = json.loads((run_dir / "eval" / "step_00000006.json").read_text())
    assert {f"IoU/{c}" for c in NDVI_CLASSES} <= set(result) and result["mIoU"] is not None
    assert "3 classes (low-ndvi, mid-ndvi, high-ndvi)" in result["protocol"]
    report = write_report(tmp_path / "report" / "report.md", None, {"rgbn-seg": run_dir}).read_text()
    assert all(f"| {c} |" in report for c in NDVI_CLASSES)
