"""Rotated-box training augmentation (rsfm_ds/data/det/augment.py) and the detection defaults
that follow mmrotate: the random rotation against rasterised masks and against mmrotate's own
matrices, rect classes, the border filter on hand cases, flips against masks, per-sample
determinism and redraws, config validation, difficult objects kept, and NMS without a cap."""
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rsfm_ds.config import ConfigError, load_config
from rsfm_ds.data.det.augment import (RECT_ANGLES, RandomRotate, hflip_boxes, inside_border,
                                      label_indices, rot90_boxes, rotate_boxes, rotate_image,
                                      rotation, vflip_boxes)
from rsfm_ds.data.det.dataset import DetectionDataset, dota_records
from rsfm_ds.data.det.dota import DOTA_V2_CLASSES
from rsfm_ds.data.synth.detection import KINDS, synth_dota
from rsfm_ds.engine.detection import DetDataConfig, DetectionTask, DetFinetuneConfig
from rsfm_ds.engine.finetune_data import PerSampleSeed
from rsfm_ds.errors import DataError
from rsfm_ds.models.heads import RotatedRoIConfig, RotatedRoIHead
from rsfm_ds.ops.rotated import box_to_polygon, polygon_to_box, regularize_le90

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers

def raster(box, width, height):
    """``uint8 [height, width]`` mask of a box (continuous coordinates: pixel centres at
    ``index + 0.5``), filled by OpenCV at 1/16 pixel precision."""
    poly = box_to_polygon(torch.as_tensor(box, dtype=torch.float64)).numpy().reshape(4, 2)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round((poly - 0.5) * 16).astype(np.int32)], 255, shift=4)
    return mask


def mask_iou(a, b):
    a, b = a > 127, b > 127
    return (a & b).sum() / max((a | b).sum(), 1)


def random_boxes(n, width, height, seed, spread=40.0, sides=(16.0, 60.0)):
    """Boxes with sides in ``sides`` px near the image centre, any angle, le90."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    xy = centre + (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 2 * spread
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * (sides[1] - sides[0]) + sides[0]
    t = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    return regularize_le90(torch.cat([xy, wh, t], dim=1))


def same_rectangles(a, b, atol=1e-6):
    """Equal rectangles: same centres and sides, angles equal modulo pi."""
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=atol, rtol=0)
    d = torch.remainder(a[:, 4] - b[:, 4] + math.pi / 2, math.pi) - math.pi / 2
    assert d.abs().max() < 1e-6


# ----------------------------------------------------------------------------- rotation geometry

@pytest.mark.parametrize("auto_bound", [False, True])
def test_rotation_keeps_boxes_on_the_pixels_they_cover(auto_bound):
    # Sides of 30-80 px: each rasterisation moves the border by up to a pixel, so the
    # double-rasterised IoU of a box only a dozen pixels wide would be noise.
    width, height = 320, 256
    rng = np.random.default_rng(0)
    boxes = random_boxes(60, width, height, seed=1, sides=(30.0, 80.0))
    ious = []
    for i, box in enumerate(boxes):
        angle = float(rng.uniform(-180, 180)) if i % 6 else float(rng.choice(RECT_ANGLES))
        rot = rotation(width, height, angle, auto_bound)
        moved_pixels = rotate_image(raster(box, width, height), rot)
        moved_box = rotate_boxes(box[None], rot)[0]
        assert moved_pixels.shape == (rot.height, rot.width)
        expected = raster(moved_box, rot.width, rot.height)
        assert (expected > 127).sum() > 150  # the box is still (mostly) in the image
        ious.append(mask_iou(moved_pixels, expected))
    assert min(ious) >= 0.95, sorted(ious)[:5]


def test_rotation_matrices_are_mmrotates():
    """Without auto_bound: boxes rotate about (w/2, h/2) and the image about (w/2 - 0.5, h/2 - 0.5),
    the two cv2.getRotationMatrix2D calls of mmrotate's PolyRandomRotate; boxes equal mmrotate's
    corner transform + minimum-area rectangle."""
    width, height = 200, 120
    img = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxes = random_boxes(50, width, height, seed=2)
    for angle in (33.0, -120.5, 90.0, 180.0):
        rot = rotation(width, height, angle)
        assert (rot.width, rot.height) == (width, height)
        m_img = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, 1)
        np.testing.assert_array_equal(rotate_image(img, rot), cv2.warpAffine(img, m_img, (width, height)))
        m_box = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1)
        corners = box_to_polygon(boxes).numpy().reshape(-1, 1, 2)
        moved = cv2.transform(corners, m_box).reshape(-1, 8)
        same_rectangles(rotate_boxes(boxes, rot), polygon_to_box(torch.from_numpy(moved)))


def test_auto_bound_grows_the_image_to_its_rotated_bounds():
    rot = rotation(200, 100, 90.0, auto_bound=True)
    assert (rot.width, rot.height) == (100, 200)
    rot = rotation(200, 100, 45.0, auto_bound=True)
    side = round(300 / math.sqrt(2))  # (w + h) cos 45
    assert (rot.width, rot.height) == (side, side)
    # The image centre goes to the new centre.
    np.testing.assert_allclose(rot.matrix @ np.array([100.0, 50.0, 1.0]), [side / 2, side / 2])


# ----------------------------------------------------------------------------- border filter

def test_border_filter_hand_cases():
    """mmrotate's filter_border: the centre strictly inside, both sides above 5 px; corners may
    stick out."""
    boxes = torch.tensor([
        [0.0, 50.0, 20.0, 10.0, 0.0],     # centre on the left edge: dropped
        [0.5, 50.0, 20.0, 10.0, 0.3],     # centre just inside, most of the box outside: kept
        [100.0, 50.0, 20.0, 10.0, 0.0],   # centre on the right edge (width 100): dropped
        [50.0, 99.9, 20.0, 10.0, 0.0],    # kept
        [50.0, 50.0, 20.0, 5.0, 0.0],     # h = 5: dropped
        [50.0, 50.0, 5.01, 5.01, 0.0],    # kept
        [50.0, -1.0, 20.0, 10.0, 0.0],    # above the image: dropped
    ], dtype=torch.float64)
    assert inside_border(boxes, 100, 100).tolist() == [False, True, False, True, False, True, False]


def test_rotation_drops_boxes_whose_centre_leaves_the_image():
    """A 200 x 100 image turned 90 degrees about (100, 50) maps (x, y) -> (y + 50, 150 - x)
    (cv2's counter-clockwise sign), or (y, 200 - x) into a 100 x 200 output with auto_bound."""
    img = np.zeros((100, 200, 3), np.uint8)
    boxes = torch.tensor([[20.0, 50.0, 30.0, 10.0, 0.0], [100.0, 50.0, 30.0, 10.0, 0.0],
                          [60.0, 50.0, 30.0, 10.0, 0.2]], dtype=torch.float64)
    labels = np.array([0, 1, 2])
    op = RandomRotate(prob=1.0, mode="value", angles=(90.0,))
    out_img, out_boxes, out_labels = op(img, boxes, labels)
    assert out_img.shape == (100, 200, 3)
    assert out_labels.tolist() == [1, 2]  # (20, 50) -> (100, 130): below the image
    torch.testing.assert_close(out_boxes[:, :2], torch.tensor([[100.0, 50.0], [100.0, 90.0]], dtype=torch.float64))
    grown = RandomRotate(prob=1.0, mode="value", angles=(90.0,), auto_bound=True)
    out_img, out_boxes, out_labels = grown(img, boxes, labels)
    assert out_img.shape == (200, 100, 3) and out_labels.tolist() == [0, 1, 2]
    torch.testing.assert_close(out_boxes[:, :2], torch.tensor([[50.0, 180.0], [50.0, 100.0], [50.0, 140.0]],
                                                              dtype=torch.float64))


def test_filter_applies_unrotated_and_an_empty_sample_is_refused():
    img = np.zeros((64, 64, 3), np.uint8)
    boxes = torch.tensor([[30.0, 30.0, 4.0, 4.0, 0.0], [20.0, 20.0, 12.0, 8.0, 0.0]], dtype=torch.float64)
    never = RandomRotate(prob=0.0)
    out_img, out_boxes, out_labels = never(img, boxes, np.array([3, 4]))
    assert out_img is img and out_labels.tolist() == [4]
    assert never(img, boxes[:1], np.array([3])) is None
    kept = RandomRotate(prob=0.0, allow_negative=True)(img, boxes[:1], np.array([3]))
    assert kept is not None and kept[1].shape == (0, 5) and kept[2].shape == (0,)


# ----------------------------------------------------------------------------- rect classes

def test_rect_class_images_turn_by_quarter_turns_only():
    width, height = 128, 128
    img = np.zeros((height, width, 3), np.uint8)
    boxes = torch.tensor([[64.0, 64.0, 30.0, 12.0, 0.35], [50.0, 70.0, 20.0, 10.0, -1.0]], dtype=torch.float64)
    op = RandomRotate(prob=1.0, rect_labels=(1,))
    angles = []
    for seed in range(200):
        np.random.seed(seed)
        angle = op.draw_angle(np.array([0, 1]))
        angles.append(angle)
        np.random.seed(seed)
        _, out, _ = op(img, boxes, np.array([0, 1]))
        turn = torch.remainder(out[:, 4] - boxes[:, 4] + math.pi / 4, math.pi / 2) - math.pi / 4
        assert turn.abs().max() < 1e-9, (seed, angle)
    assert set(angles) == set(RECT_ANGLES)
    # mmrotate shuffles [90, 180, -90, -180] and takes the first: a half turn half of the time.
    assert 0.38 < np.mean([abs(a) == 180 for a in angles]) < 0.62
    free = []
    for seed in range(50):
        np.random.seed(seed)
        free.append(op.draw_angle(np.array([0, 2])))
    assert all(-180 < a < 180 for a in free) and len({round(a) % 90 for a in free}) > 10


def test_rect_classes_are_named_and_mapped_to_the_predicted_classes(tmp_path):
    synth_dota(tmp_path / "train", images=2, seed=0, size=256)
    cfg = load_config(DetFinetuneConfig, ROOT / "configs" / "det" / "dota2_debug.yaml", [
        f"run_dir={tmp_path / 'run'}", f"data.train_dirs=[{tmp_path / 'train'}]",
        f"data.val_dir={tmp_path / 'train'}", "data.rotate_prob=0.5",
        "data.rect_classes=[storage-tank, roundabout]"])
    rotate = DetectionTask(cfg).train_dataset().rotate
    assert rotate.prob == 0.5 and rotate.angle_range == 180 and not rotate.auto_bound
    assert rotate.rect_labels == (KINDS.index("storage-tank"),)  # roundabout is not predicted
    assert label_indices(["storage-tank", "roundabout"], DOTA_V2_CLASSES) == (9, 11)  # mmrotate's [9, 11]
    assert DetectionTask(load_config(DetFinetuneConfig, ROOT / "configs" / "det" / "dota2_debug.yaml", [
        f"data.train_dirs=[{tmp_path / 'train'}]", f"data.val_dir={tmp_path / 'train'}"])
    ).train_dataset().rotate is None


# ----------------------------------------------------------------------------- flips and turns

def test_flips_and_turns_agree_with_flipped_masks():
    width, height = 200, 136
    boxes = random_boxes(30, width, height, seed=3, spread=20.0, sides=(30.0, 60.0))
    for box in boxes:
        mask = raster(box, width, height)
        cases = [(mask[:, ::-1], hflip_boxes(box[None], width)[0], (width, height)),
                 (mask[::-1], vflip_boxes(box[None], height)[0], (width, height))]
        for k in (1, 2, 3):
            turned = np.rot90(mask, -k)
            cases.append((turned, rot90_boxes(box[None], width, height, k)[0], turned.shape[::-1]))
        for pixels, moved, (w, h) in cases:
            assert mask_iou(np.ascontiguousarray(pixels), raster(moved, w, h)) >= 0.95


# ----------------------------------------------------------------------------- the dataset

def write_folder(folder: Path, boxes, size=128):
    """A DOTA-format folder, one image per entry of ``boxes`` (a list of box lists), textured
    so that rotations change the pixels."""
    (folder / "images").mkdir(parents=True)
    (folder / "labelTxt").mkdir()
    rng = np.random.default_rng(0)
    for i, objects in enumerate(boxes):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / "images" / f"P{i:04d}.png"), img)
        lines = []
        for box in objects:
            poly = box_to_polygon(torch.tensor(box, dtype=torch.float64)).numpy()
            lines.append(" ".join(f"{v:.3f}" for v in poly) + " storage-tank 0")
        (folder / "labelTxt" / f"P{i:04d}.txt").write_text("\n".join(lines) + "\n")
    return dota_records(folder, DOTA_V2_CLASSES)


def test_augmentation_is_a_function_of_the_sample_seed(tmp_path):
    records = write_folder(tmp_path, [[(64.0, 64.0, 40.0, 20.0, 0.3), (30.0, 90.0, 24.0, 12.0, -0.7)]] * 3)
    data = PerSampleSeed(DetectionDataset(records, 128, train=True, rot90_prob=0.5,
                                          rotate=RandomRotate(prob=0.5)))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a, b = data[(1, 77)], data[(1, 77)]
    torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
    torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)
    assert a["labels"].tolist() == b["labels"].tolist()
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the caller's RNG is untouched
    samples = [data[(1, seed)] for seed in range(8)]
    assert len({tuple(s["boxes"].flatten().round(decimals=3).tolist()) for s in samples}) > 4


def test_a_refused_sample_is_replaced_by_a_random_image(tmp_path):
    tiny, good = [(64.0, 64.0, 4.0, 4.0, 0.0)], [(64.0, 64.0, 40.0, 20.0, 0.3)]
    records = write_folder(tmp_path / "a", [tiny, good, good])
    data = PerSampleSeed(DetectionDataset(records, 128, train=True, hflip_prob=0, vflip_prob=0,
                                          rotate=RandomRotate(prob=0.0)))
    first = data[(0, 5)]
    assert first["image_id"] in ("P0001", "P0002") and len(first["labels"]) == 1
    assert data[(0, 5)]["image_id"] == first["image_id"]
    only_tiny = write_folder(tmp_path / "b", [tiny])
    data = DetectionDataset(only_tiny, 128, train=True, rotate=RandomRotate(prob=0.0))
    data.MAX_REDRAWS = 5
    with pytest.raises(DataError, match="no object in 5 images"):
        data[0]


def test_training_keeps_difficult_objects_by_default(tmp_path):
    records = write_folder(tmp_path, [[(64.0, 64.0, 40.0, 20.0, 0.3), (30.0, 90.0, 24.0, 12.0, -0.7)]])
    records[0].difficult[:] = [1, 0]
    assert DetDataConfig(train_dirs=("x",), val_dir="x").keep_difficult
    assert len(DetectionDataset(records, 128, train=True)[0]["labels"]) == 2
    assert len(DetectionDataset(records, 128, train=True, keep_difficult=False)[0]["labels"]) == 1
    assert len(DetectionDataset(records, 128, train=False)[0]["labels"]) == 2


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("data, field", [
    ({"rotate_prob": 1.5}, "rotate_prob"),
    ({"rotate_range": 0}, "rotate_range"),
    ({"rotate_range": 270}, "rotate_range"),
    ({"rotate_mode": "value"}, "rotate_angles"),
    ({"rotate_mode": "any"}, "rotate_mode"),
    ({"rect_classes": ["storagetank"]}, "rect_classes"),  # DIOR-R's name, not DOTA's
])
def test_bad_rotation_fields_name_the_field(data, field):
    with pytest.raises(ConfigError, match=rf"\b{field}: "):
        load_config(DetFinetuneConfig, data={"data": dict({"train_dirs": ["x"], "val_dir": "x"}, **data)})


def test_rect_classes_take_the_dataset_names():
    cfg = load_config(DetFinetuneConfig, data={"data": {"dataset": "dior", "root": "x",
                                                        "rect_classes": ["storagetank"]}})
    assert cfg.data.rect_classes == ("storagetank",)


# ----------------------------------------------------------------------------- RoI inference

def test_roi_inference_has_no_candidate_cap_by_default():
    assert RotatedRoIConfig().nms_pre is None
    with pytest.raises(ConfigError, match="nms_pre"):
        RotatedRoIConfig(nms_pre=0)
    # 40 disjoint RoIs, 3 classes scoring 0.3 each: 120 candidates, none suppressing another.
    k, classes = 40, 3
    xs = torch.arange(k, dtype=torch.float32) * 30 + 15
    rois = torch.stack([torch.zeros(k), xs, torch.full((k,), 20.0), torch.full((k,), 20.0),
                        torch.full((k,), 10.0), torch.zeros(k)], dim=1)
    logits = torch.zeros(k, classes + 1)
    logits[:, :classes] = math.log(0.3 / 0.1)  # softmax: 0.3 per class, 0.1 background
    deltas = torch.zeros(k, 5)
    size = [(64, 30 * k + 30)]
    uncapped = RotatedRoIHead(classes, in_channels=4, cfg=RotatedRoIConfig(fc_dim=8)).predict(
        logits, deltas, rois, size)[0]
    assert len(uncapped[0]) == k * classes
    torch.testing.assert_close(uncapped[1], torch.full((k * classes,), 0.3))
    capped = RotatedRoIHead(classes, in_channels=4, cfg=RotatedRoIConfig(fc_dim=8, nms_pre=50)).predict(
        logits, deltas, rois, size)[0]
    assert len(capped[0]) == 50
