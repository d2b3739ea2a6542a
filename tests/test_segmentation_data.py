"""Potsdam colour labels, protocols and crops; LoveDA reader; the segmentation Dataset; synthetic data."""
from __future__ import annotations

import json
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch

from rsfm_ds import cli
from rsfm_ds.data.seg.dataset import SegDataset, mmseg_pairs, select_fraction
from rsfm_ds.data.seg.loveda import LOVEDA_CLASSES, list_loveda, loveda_pairs, read_loveda_mask
from rsfm_ds.data.seg.potsdam import (POTSDAM_PALETTE, TEST_TILES, TRAIN_TILES, class_names, colour_to_index,
                                      crop_boxes, find_tiles, index_to_colour, prepare_potsdam, split_of, tile_path)
from rsfm_ds.data.synth.segmentation import (erode_boundaries, potsdam_synth_tiles, render_potsdam_tile, synth_loveda,
                                             synth_potsdam)
from rsfm_ds.data.tiling import window_starts
from rsfm_ds.errors import DataError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """Two 1024 px synthetic Potsdam tiles: 2_10 (train) and 2_13 (test)."""
    root = tmp_path_factory.mktemp("potsdam")
    report = synth_potsdam(root, tiles=2, seed=3, size=1024)
    assert report.items == ["2_10", "2_13"]
    return root


def palette_image(rng, shape=(16, 20), colours=POTSDAM_PALETTE):
    table = np.asarray(colours, np.uint8)
    return table[rng.integers(0, len(table), shape)]


# ----------------------------------------------------------------------------- Potsdam labels

def test_tile_lists_and_names():
    assert len(TRAIN_TILES) == 24 and len(TEST_TILES) == 14 and not set(TRAIN_TILES) & set(TEST_TILES)
    assert split_of("6_7") == "train" and split_of("7_13") == "val"
    with pytest.raises(ValueError, match="1_1"):
        split_of("1_1")
    assert tile_path("R", "2_10", "rgb").as_posix() == "R/2_Ortho_RGB/top_potsdam_2_10_RGB.tif"
    assert tile_path("R", "2_10", "label_noBoundary").as_posix() == \
        "R/5_Labels_all_noBoundary/top_potsdam_2_10_label_noBoundary.tif"
    assert class_names(5)[-1] == "car" and class_names(6)[-1] == "clutter"


def test_colour_map_round_trip_and_protocols():
    rgb = palette_image(np.random.default_rng(0))
    six, unknown = colour_to_index(rgb, protocol=6)
    assert unknown == 0 and six.dtype == np.uint8 and set(np.unique(six)) <= set(range(6))
    assert np.array_equal(index_to_colour(six), rgb)  # 6 classes: exact round trip
    for i, colour in enumerate(POTSDAM_PALETTE):
        assert np.array_equal(six == i, np.all(rgb == colour, axis=-1))
    five, _ = colour_to_index(rgb, protocol=5)
    clutter = np.all(rgb == (255, 0, 0), axis=-1)
    assert np.all(five[clutter] == 255) and np.array_equal(five[~clutter], six[~clutter])
    assert np.array_equal(index_to_colour(five, ignore_colour=(255, 0, 0)), rgb)


def test_eroded_black_is_ignored_and_unknown_colours_are_named():
    rgb = palette_image(np.random.default_rng(1))
    rgb[0, :5] = 0
    index, _ = colour_to_index(rgb, protocol=6, eroded=True)
    assert np.all(index[0, :5] == 255)
    with pytest.raises(ValueError, match=r"lab\.tif: 5 pixels .*eroded.*\(0, 0, 0\) x5"):
        colour_to_index(rgb, protocol=6, eroded=False, source="lab.tif")
    rgb[1, :3] = (12, 34, 56)
    with pytest.raises(ValueError, match=r"\(12, 34, 56\) x3"):
        colour_to_index(rgb, eroded=True, source="lab.tif")
    index, unknown = colour_to_index(rgb, eroded=True, unknown_to_ignore=True)
    assert unknown == 3 and np.all(index[1, :3] == 255)
    with pytest.raises(ValueError, match="protocol"):
        colour_to_index(rgb, protocol=7)


def test_crop_grid_of_a_6000_px_tile():
    boxes = crop_boxes(6000, 6000, 512, 256)
    # Row by row over the tiling rule every cropper shares (window_starts has its own test).
    starts = window_starts(6000, 512, 256)
    assert boxes == [(x, y, x + 512, y + 512) for y in starts for x in starts]
    coverage = np.zeros(6000, np.int32)  # the grid is separable: check one axis
    for x0 in sorted({b[0] for b in boxes}):
        coverage[x0:x0 + 512] += 1
    assert coverage.min() >= 1 and max(b[2] for b in boxes) == 6000
    assert crop_boxes(1024, 1024, 512, 256) == [(x, y, x + 512, y + 512) for y in (0, 256, 512)
                                                for x in (0, 256, 512)]
    with pytest.raises(ValueError, match="smaller than the crop"):
        crop_boxes(300, 600, 512, 256)


# ----------------------------------------------------------------------------- synthetic Potsdam + prepare

def test_synth_potsdam_layout_and_labels(synth_root):
    assert find_tiles(synth_root) == ["2_10", "2_13"]
    for kind in ("rgb", "irrg", "label", "label_noBoundary"):
        assert tile_path(synth_root, "2_10", kind).is_file()
    full = mmcv.imread(str(tile_path(synth_root, "2_10", "label")), channel_order="rgb")
    eroded = mmcv.imread(str(tile_path(synth_root, "2_10", "label_noBoundary")), channel_order="rgb")
    index, _ = colour_to_index(full, protocol=6)
    assert len(np.unique(index)) == 6  # every class appears in a 1024 px tile
    black = np.all(eroded == 0, axis=-1)
    assert 0.01 < black.mean() < 0.3 and np.array_equal(eroded[~black], full[~black])
    assert potsdam_synth_tiles(38)[-1] == "7_13" and len(potsdam_synth_tiles(5)) == 5
    with pytest.raises(ValueError, match="tiles"):
        potsdam_synth_tiles(39)


def test_synth_is_deterministic():
    a = render_potsdam_tile(np.random.default_rng([5, 0]), 256)
    b = render_potsdam_tile(np.random.default_rng([5, 0]), 256)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    label = np.zeros((9, 9), np.uint8)
    label[:, 5:] = 1
    eroded = erode_boundaries(label, radius=1)
    assert np.all(eroded[:, 4:6] == 255) and np.all(eroded[:, :4] == 0) and np.all(eroded[:, 6:] == 1)


def test_prepare_end_to_end(synth_root, tmp_path):
    out = tmp_path / "crops"
    report = prepare_potsdam(synth_root, out, protocol=5, crop=512, stride=256, eroded=True)
    assert report.crops == {"train": 9, "val": 9}
    assert report.tiles == {"train": ["2_10"], "val": ["2_13"]}
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["classes"] == list(class_names(5)) and meta["ignore_index"] == 255 and meta["eroded"]
    pairs = mmseg_pairs(out, "train")
    assert len(pairs) == 9 and pairs[0][0].name == "2_10_0_0_512_512.png"
    assert {p.name for p, _ in pairs} >= {"2_10_512_512_1024_1024.png", "2_10_256_0_768_512.png"}
    # The crop is the tile's pixels; the label is the tile's colour label through the lookup.
    tile = mmcv.imread(str(tile_path(synth_root, "2_10", "rgb")), channel_order="rgb")
    colour = mmcv.imread(str(tile_path(synth_root, "2_10", "label_noBoundary")), channel_order="rgb")
    crop = mmcv.imread(str(out / "img_dir/train/2_10_256_512_768_1024.png"), channel_order="rgb")
    ann = mmcv.imread(str(out / "ann_dir/train/2_10_256_512_768_1024.png"), flag="unchanged")
    assert np.array_equal(crop, tile[512:1024, 256:768])
    assert ann.dtype == np.uint8 and ann.ndim == 2
    assert np.array_equal(ann, colour_to_index(colour, 5, eroded=True)[0][512:1024, 256:768])
    assert set(np.unique(ann)) <= {0, 1, 2, 3, 4, 255}

    six = prepare_potsdam(synth_root, tmp_path / "six", protocol=6, crop=512, stride=512, modality="irrg")
    assert six.crops == {"train": 4, "val": 4}
    labels = np.stack([mmcv.imread(str(p), flag="unchanged") for _, p in mmseg_pairs(tmp_path / "six", "val")])
    assert 5 in labels and 255 not in labels  # clutter kept, full labels have no boundary


def test_prepare_errors_name_the_file(synth_root, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(synth_root, root)
    tile_path(root, "2_13", "label").unlink()
    with pytest.raises(DataError, match="top_potsdam_2_13_label.tif"):
        prepare_potsdam(root, tmp_path / "o")
    shutil.copy(tile_path(root, "2_10", "rgb"), root / "2_Ortho_RGB" / "top_potsdam_1_1_RGB.tif")
    with pytest.raises(ValueError, match="1_1"):
        prepare_potsdam(root, tmp_path / "o", eroded=True)


def test_cli_synth_and_prepare(tmp_path, capsys):
    assert cli.main(["synth", "potsdam", "--out", str(tmp_path / "p"), "--tiles", "1", "--size", "600"]) == 0
    assert cli.main(["potsdam", "prepare", "--root", str(tmp_path / "p"), "--out", str(tmp_path / "c"),
                     "--protocol", "6", "--crop", "256", "--stride", "128"]) == 0
    assert "train: 1 tiles -> 16 crops" in capsys.readouterr().out  # ceil((600 - 256) / 128) + 1 = 4 per side
    assert cli.main(["potsdam", "prepare", "--root", str(tmp_path / "p"), "--out", str(tmp_path / "c"),
                     "--crop", "256", "--stride", "300"]) == 2
    assert "uncovered" in capsys.readouterr().err
    assert cli.main(["synth", "loveda", "--out", str(tmp_path / "l"), "--images", "1", "--size", "96"]) == 0
    assert (tmp_path / "l/Val/Urban/masks_png").is_dir()


# ----------------------------------------------------------------------------- LoveDA

def test_loveda_reader_on_a_synthetic_tree(tmp_path):
    synth_loveda(tmp_path, images=3, seed=0, size=128)
    train = list_loveda(tmp_path, "Train")
    assert [(s.domain, s.name) for s in train] == [("Urban", "0.png"), ("Urban", "2.png"), ("Rural", "1.png")]
    test = list_loveda(tmp_path, "Test")
    assert len(test) == 3 and all(s.mask is None for s in test)
    assert len(loveda_pairs(tmp_path, "Val", domains=("Rural",))) == 1
    raw = read_loveda_mask(train[0].mask, reduce_zero_label=False)
    reduced = read_loveda_mask(train[0].mask)
    assert raw.max() <= 7 and np.array_equal(reduced[raw == 0], np.full((raw == 0).sum(), 255, np.uint8))
    assert np.array_equal(reduced[raw > 0], raw[raw > 0] - 1) and reduced[raw > 0].max() < len(LOVEDA_CLASSES)

    bad = tmp_path / "Train/Urban/masks_png/0.png"
    mmcv.imwrite(np.full((8, 8), 9, np.uint8), str(bad))
    with pytest.raises(ValueError, match=r"0\.png: mask value 9"):
        read_loveda_mask(bad)
    bad.unlink()
    with pytest.raises(DataError, match="0.png"):
        list_loveda(tmp_path, "Train")
    with pytest.raises(ValueError, match="split"):
        list_loveda(tmp_path, "train")


# ----------------------------------------------------------------------------- Dataset and fractions

def test_fraction_subsets_are_deterministic_and_nested():
    names = [f"img_{i:04d}.png" for i in range(1000)]
    subsets = {f: select_fraction(names, f, seed=7) for f in (0.01, 0.05, 0.1, 1.0)}
    assert [len(subsets[f]) for f in (0.01, 0.05, 0.1, 1.0)] == [10, 50, 100, 1000]
    assert set(subsets[0.01]) < set(subsets[0.05]) < set(subsets[0.1]) < set(subsets[1.0])
    assert select_fraction(names, 0.05, seed=7) == subsets[0.05]
    shuffled = list(reversed(names))  # the subset depends on the names, not on the listing order
    assert {shuffled[i] for i in select_fraction(shuffled, 0.05, 7)} == {names[i] for i in subsets[0.05]}
    assert select_fraction(names, 0.05, seed=8) != subsets[0.05]
    assert len(select_fraction(names[:10], 0.01)) == 1
    with pytest.raises(ValueError, match="fraction"):
        select_fraction(names, 0.0)
    with pytest.raises(ValueError, match="unique"):
        select_fraction(["a.png", "a.png"], 0.5)


def write_pair(folder, name, image, label):
    mmcv.imwrite(image[..., ::-1].copy(), str(folder / "img" / name))
    mmcv.imwrite(label, str(folder / "ann" / name))
    return folder / "img" / name, folder / "ann" / name


def test_seg_dataset_train_and_eval_items(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    label = np.zeros((40, 60), np.uint8)
    label[:, 45:] = 1  # class 1 only in the right quarter
    pairs = [write_pair(tmp_path, f"{i}.png", image, label) for i in range(4)]

    ds = SegDataset(pairs, train=True, crop_size=16, cat_max_ratio=0.75, hflip_prob=0.5, vflip_prob=0.5,
                    photometric=True, seed=1)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].shape == (16, 16) and item["label"].dtype == torch.int64 and item["name"] == "0.png"
    assert torch.equal(ds[0]["image"], item["image"])  # a function of (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["image"], item["image"])

    def balanced_crops(dataset):  # crops where no class covers 75% or more, over 20 epochs
        count = 0
        for epoch in range(20):
            dataset.set_epoch(epoch)
            share = torch.bincount(dataset[0]["label"].flatten(), minlength=2).max() / 256
            count += int(share < 0.75)
        return count

    # Without cat_max_ratio about 1 crop in 5 is balanced; mmseg's 10 redraws make it ~9 in 10.
    assert balanced_crops(SegDataset(pairs, crop_size=16, cat_max_ratio=0.75, hflip_prob=0.0)) >= 14
    assert balanced_crops(SegDataset(pairs, crop_size=16, hflip_prob=0.0)) <= 10

    big = SegDataset(pairs, train=True, crop_size=64, hflip_prob=0.0)[0]  # larger than the image: padded
    assert big["image"].shape == (3, 64, 64)
    assert torch.all(big["label"][40:] == 255) and torch.all(big["label"][:, 60:] == 255)
    assert torch.all(big["image"][:, 40:] == 0)

    ev = SegDataset(pairs, train=False)[2]
    assert ev["image"].shape == (3, 40, 60) and torch.equal(ev["label"], torch.from_numpy(label).long())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    restored = (ev["image"] * std + mean).round().permute(1, 2, 0).numpy()
    assert np.array_equal(restored, image)
    assert len(SegDataset(pairs, fraction=0.5, fraction_seed=3)) == 2


def test_seg_dataset_reduce_zero_label_and_bad_labels(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    raw = np.arange(64, dtype=np.uint8).reshape(8, 8) % 8
    pair = write_pair(tmp_path, "a.png", image, raw)
    label = SegDataset([pair], train=False, reduce_zero_label=True)[0]["label"]
    assert torch.all(label[torch.from_numpy(raw == 0)] == 255)
    assert torch.equal(label[torch.from_numpy(raw > 0)], torch.from_numpy(raw[raw > 0].astype(np.int64) - 1))
    mmcv.imwrite(np.zeros((8, 9), np.uint8), str(tmp_path / "ann" / "b.png"))
    mmcv.imwrite(image, str(tmp_path / "img" / "b.png"))
    with pytest.raises(ValueError, match=r"b\.png is 9x8"):
        SegDataset([(tmp_path / "img" / "b.png", tmp_path / "ann" / "b.png")], train=False)[0]
    unlabeled = SegDataset([(pair[0], None)], train=True, crop_size=4)[0]
    assert "label" not in unlabeled and unlabeled["image"].shape == (3, 4, 4)


# ----------------------------------------------------------------------------- RandomResize


def test_rescale_size_is_mmcv_keep_ratio_rule():
    from rsfm_ds.data.seg.dataset import rescale_size

    # Hand-computed: factor = min(max(scale) / long side, min(scale) / short side), sides rounded half up.
    assert rescale_size(1024, 1024, (512, 512)) == (512, 512)  # factor 0.5
    assert rescale_size(600, 400, (512, 512)) == (512, 341)  # min(512/600, 512/400): 512.5 -> 512, 341.3
    assert rescale_size(300, 500, (2048, 512)) == (512, 853)  # min(2048/500, 512/300) = 1.7067: 853.3
    assert rescale_size(100, 40, (1000, 300)) == (750, 300)  # min(10, 7.5) = 7.5
    assert rescale_size(512, 512, (1536, 1536)) == (1536, 1536)  # upscaling by 3
    rng = np.random.default_rng(0)
    for w, h, sw, sh in rng.integers(1, 3000, (200, 4)):  # mmcv's own implementation as the oracle
        assert rescale_size(int(w), int(h), (int(sw), int(sh))) == mmcv.rescale_size((int(w), int(h)),
                                                                                   (int(sw), int(sh)))


def test_random_resize_size_draws_mmcv_ratio():
    from rsfm_ds.data.seg.dataset import random_resize_size

    for seed in range(20):
        ratio = np.random.default_rng(seed).random() * 1.5 + 0.5  # mmcv: random_sample() * (max - min) + min
        target = (int(512 * ratio), int(512 * ratio))
        got = random_resize_size(600, 400, (512, 512), (0.5, 2.0), np.random.default_rng(seed))
        assert got == mmcv.rescale_size((600, 400), target)
        assert 0.5 * 512 - 1 <= got[0] <= 2.0 * 512  # the long side spans scale * [0.5, 2]


def labelled_image(shape=(40, 60)):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    label = np.full(shape, 3, np.uint8)
    label[:, : shape[1] // 3] = 0
    label[shape[0] // 2:, shape[1] // 2:] = 7
    label[5:9, 40:47] = 255
    return image, label


def normalise(image):
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    return torch.from_numpy(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())


def test_seg_dataset_random_resize_bilinear_image_nearest_label(tmp_path):
    image, label = labelled_image()
    pairs = [write_pair(tmp_path, "a.png", image, label)]
    # Fixed ratio 1: 60x40 into (30, 30) is 30x20; the 64 px crop is larger, so the item shows all of it.
    item = SegDataset(pairs, crop_size=64, resize_scale=(30, 30), resize_ratio_range=(1.0, 1.0), hflip_prob=0.0)[0]
    expected_image = mmcv.imrescale(image, (30, 30), interpolation="bilinear")
    expected_label = mmcv.imrescale(label, (30, 30), interpolation="nearest")
    assert expected_label.shape == (20, 30)
    assert torch.equal(item["label"][:20, :30], torch.from_numpy(expected_label).long())
    assert torch.all(item["label"][20:] == 255) and torch.all(item["label"][:, 30:] == 255)
    torch.testing.assert_close(item["image"][:, :20, :30], normalise(expected_image))
    assert set(torch.unique(item["label"]).tolist()) <= {0, 3, 7, 255}  # nearest: no blended class values

    # Random ratios: every item's label keeps the class set; sizes vary with the epoch.
    ds = SegDataset(pairs, crop_size=256, resize_scale=(60, 60), resize_ratio_range=(0.5, 2.0), hflip_prob=0.0)
    extents = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        lab = ds[0]["label"]
        assert set(torch.unique(lab).tolist()) <= {0, 3, 7, 255}
        rows = int((lab != 255).any(dim=1).sum())
        extents.add(rows)
        ratio = np.random.default_rng([0, epoch, 0]).random() * 1.5 + 0.5
        w, h = mmcv.rescale_size((60, 40), (int(60 * ratio), int(60 * ratio)))
        assert rows == h and int((lab != 255).any(dim=0).sum()) == w
    assert len(extents) > 3


def test_seg_dataset_resize_comes_before_crop_and_flip(tmp_path):
    """mmseg's order: RandomResize (first draw), RandomCrop from the resized image, then RandomFlip."""
    image, label = labelled_image()
    pairs = [write_pair(tmp_path, f"{i}.png", image, label) for i in range(3)]
    ds = SegDataset(pairs, crop_size=16, resize_scale=(60, 60), resize_ratio_range=(2.0, 2.0), hflip_prob=0.5,
                    seed=4)
    resized_image = mmcv.imrescale(image, (120, 120), interpolation="bilinear")  # 60x40 -> 120x80
    resized_label = mmcv.imrescale(label, (120, 120), interpolation="nearest")
    assert resized_image.shape[:2] == (80, 120)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for index in range(3):
            rng = np.random.default_rng([4, epoch, index])
            rng.random()  # the resize ratio (a fixed range here)
            y, x = int(rng.integers(0, 80 - 16 + 1)), int(rng.integers(0, 120 - 16 + 1))
            crop_image, crop_label = resized_image[y:y + 16, x:x + 16], resized_label[y:y + 16, x:x + 16]
            if rng.random() < 0.5:
                crop_image, crop_label = crop_image[:, ::-1], crop_label[:, ::-1]
            item = ds[index]
            assert torch.equal(item["label"], torch.from_numpy(crop_label.copy()).long())
            torch.testing.assert_close(item["image"], normalise(crop_image))


def test_seg_dataset_resize_options_are_checked(tmp_path):
    from rsfm_ds.errors import ConfigError

    with pytest.raises(ConfigError, match="resize_scale"):
        SegDataset([], resize_scale=(0, 512))
    with pytest.raises(ConfigError, match="resize_ratio_range"):
        SegDataset([], resize_scale=(512, 512), resize_ratio_range=(2.0, 0.5))


def test_loveda_trains_on_the_splits_the_config_names(tmp_path):
    """data.train_splits [train, val] (the test-server recipe) reads both release folders; the
    evaluation split stays one labelled split; a split the dataset lacks names the field."""
    from rsfm_ds.config import load_config
    from rsfm_ds.engine.segmentation import SegFinetuneConfig, SegmentationTask
    from rsfm_ds.errors import ConfigError

    config = Path(__file__).resolve().parents[1] / "configs/seg/potsdam_debug.yaml"
    synth_loveda(tmp_path, images=3, seed=0, size=128)
    overrides = [f"data.root={tmp_path}", "data.dataset=loveda", "data.num_classes=7"]
    images = {split: sorted(s.image.name for s in list_loveda(tmp_path, split)) for split in ("Train", "Val")}
    for splits, want in ((["train"], images["Train"]), (["train", "val"], images["Train"] + images["Val"])):
        cfg = load_config(SegFinetuneConfig, config,
                          overrides + [f"data.train_splits={splits}"])
        task = SegmentationTask(cfg)
        assert sorted(p[0].name for p in task.train_dataset().pairs) == sorted(want)
        assert sorted(p[0].name for p in task.eval_dataset().pairs) == images["Val"]
    with pytest.raises(ConfigError, match=r"data\.train_splits.*'test'"):
        load_config(SegFinetuneConfig, config, overrides + ["data.train_splits=[train, test]"])
