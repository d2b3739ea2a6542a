"""Segmentation metrics (mmseg IoUMetric semantics) and sliding-window inference."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rsfm_ds.data.seg.labels import apply_reduce_zero_label
from rsfm_ds.data.tiling import window_starts
from rsfm_ds.errors import DataError
from rsfm_ds.evaluation.seg_metrics import (SegMetric, confusion_matrix, eval_record, evaluate_dirs, format_result,
                                            metrics_from_confusion, undefined_notes)
from rsfm_ds.evaluation.sliding_window import sliding_window_inference


pytestmark = pytest.mark.usefixtures("one_thread")


# rows = label, columns = prediction
CONF = np.array([[3, 1, 0],
                 [1, 2, 0],
                 [0, 1, 2]])


def pixels_from_confusion(conf: np.ndarray, rng: np.random.Generator):
    label = np.concatenate([np.full(conf[i].sum(), i) for i in range(len(conf))])
    pred = np.concatenate([np.repeat(np.arange(len(conf)), conf[i]) for i in range(len(conf))])
    order = rng.permutation(len(label))
    return torch.from_numpy(pred[order]), torch.from_numpy(label[order])


def test_metrics_match_hand_computation():
    pred, label = pixels_from_confusion(CONF, np.random.default_rng(0))
    # Ignored pixels with arbitrary (even out-of-range) predictions must not count.
    pred = torch.cat([pred, torch.tensor([0, 2, 200])])
    label = torch.cat([label, torch.tensor([255, 255, 255])])
    conf = confusion_matrix(pred, label, 3)
    assert conf.tolist() == CONF.tolist()
    r = metrics_from_confusion(conf, ["a", "b", "c"])
    # I = [3, 2, 2], P = [4, 4, 2], L = [4, 3, 3]
    assert r.iou == pytest.approx([3 / 5, 2 / 5, 2 / 3])
    assert r.acc == pytest.approx([3 / 4, 2 / 3, 2 / 3])
    assert r.precision == pytest.approx([3 / 4, 2 / 4, 1.0])
    assert r.f1 == pytest.approx([3 / 4, 4 / 7, 4 / 5])
    assert r.aAcc == pytest.approx(7 / 10)
    assert r.mIoU == pytest.approx((3 / 5 + 2 / 5 + 2 / 3) / 3)
    assert r.mF1 == pytest.approx((3 / 4 + 4 / 7 + 4 / 5) / 3)
    assert r.pixels == 10
    js = r.to_json()
    assert js["IoU"]["a"] == pytest.approx(60.0) and js["aAcc"] == pytest.approx(70.0)
    assert "mIoU" in format_result(r) and "b" in format_result(r)


def test_areas_are_summed_over_the_dataset_not_averaged_per_image():
    metric = SegMetric(2)
    metric.update(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]))  # per image: IoU0 = 3/4
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 0]))              # per image: IoU0 = 0
    r = metric.compute()
    assert metric.conf.tolist() == [[3, 2], [0, 1]]
    assert r.iou[0] == pytest.approx(3 / 5)  # not (3/4 + 0) / 2
    assert r.iou[1] == pytest.approx(1 / 3)


def test_nanmean_skips_absent_classes_with_mmseg_edge_cases():
    # Class 2 is absent from labels and predictions: every metric NaN, left out of every mean.
    # Class 3 is predicted but absent from the labels: IoU 0 (counted), Acc and F1 NaN (not counted).
    pred = torch.tensor([0, 0, 1, 1, 3])
    label = torch.tensor([0, 0, 1, 0, 1])
    r = metrics_from_confusion(confusion_matrix(pred, label, 4))
    assert math.isnan(r.iou[2]) and math.isnan(r.f1[2]) and math.isnan(r.acc[2])
    assert r.iou[3] == 0.0 and math.isnan(r.f1[3]) and math.isnan(r.acc[3])
    # conf = [[2, 1, 0, 0], [0, 1, 0, 1], 0, 0]: IoU0 = 2/3, IoU1 = 1/(2+2-1) = 1/3
    assert r.mIoU == pytest.approx((2 / 3 + 1 / 3 + 0.0) / 3)
    f1_0, f1_1 = 2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 * 0.5 / 1.0
    assert r.mF1 == pytest.approx((f1_0 + f1_1) / 2)
    js = r.to_json()
    assert js["IoU"]["2"] is None
    json.dumps(js, allow_nan=False)
    # Each undefined value is marked and explained, with what its mean leaves out.
    assert js["notes"] == undefined_notes(r) == [
        "IoU n/a for 2 (neither in the labels nor predicted): mIoU is the mean of the other 3 classes",
        "Acc n/a for 2 (neither in the labels nor predicted), 3 (not in the labels): mAcc is the mean of the "
        "other 2 classes",
        "F1 n/a for 2 (neither in the labels nor predicted), 3 (not in the labels): mF1 is the mean of the "
        "other 2 classes"]
    table = format_result(r)
    assert table.splitlines()[3].split() == ["2", "n/a", "n/a", "n/a"] and table.splitlines()[-3:] == js["notes"]


def test_a_class_never_predicted_is_noted_only_when_it_is():
    # The quickstart's case: "car" in the labels, never predicted: IoU 0 (in mIoU), F1 n/a (not in mF1).
    label = torch.tensor([0, 0, 1, 1, 2])
    never = metrics_from_confusion(confusion_matrix(torch.tensor([0, 0, 1, 1, 1]), label, 3), ["a", "b", "car"])
    assert never.iou[2] == 0.0 and math.isnan(never.f1[2])
    assert undefined_notes(never) == ["F1 n/a for car (never predicted): mF1 is the mean of the other 2 classes"]
    record = eval_record(never)
    assert record["F1/car"] is None and record["IoU/car"] == 0.0 and record["notes"] == undefined_notes(never)
    predicted = metrics_from_confusion(confusion_matrix(torch.tensor([0, 1, 1, 1, 2]), label, 3), ["a", "b", "car"])
    assert undefined_notes(predicted) == [] and "n/a" not in format_result(predicted)


def test_reduce_zero_label_numpy_and_torch_and_in_metric():
    raw = np.array([0, 1, 2, 7, 255], dtype=np.uint8)
    assert apply_reduce_zero_label(raw).tolist() == [255, 0, 1, 6, 255]
    assert apply_reduce_zero_label(torch.from_numpy(raw).long()).tolist() == [255, 0, 1, 6, 255]
    conf = confusion_matrix(torch.tensor([5, 0, 1, 6]), torch.tensor([0, 1, 2, 7]), 7, reduce_zero_label=True)
    assert int(conf.sum()) == 3 and int(conf.trace()) == 3  # the no-data pixel is dropped


def test_bad_values_name_the_source():
    with pytest.raises(ValueError, match="label value 3 .* in img7"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3, source="img7")
    with pytest.raises(ValueError, match="prediction value 9"):
        confusion_matrix(torch.tensor([0, 9]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 3)


def write_png(path, array):
    import mmcv

    assert mmcv.imwrite(np.asarray(array, dtype=np.uint8), str(path))


def test_evaluate_dirs_and_cli(tmp_path, capsys):
    from rsfm_ds import cli

    rng = np.random.default_rng(1)
    pred, label = pixels_from_confusion(CONF, rng)
    write_png(tmp_path / "pred" / "a.png", pred.numpy().reshape(2, 5))
    write_png(tmp_path / "label" / "a.png", label.numpy().reshape(2, 5))
    write_png(tmp_path / "pred" / "b.png", np.zeros((3, 3)))
    write_png(tmp_path / "label" / "b.png", np.full((3, 3), 255))
    r = evaluate_dirs(tmp_path / "pred", tmp_path / "label", 3)
    assert r.iou == pytest.approx([3 / 5, 2 / 5, 2 / 3])
    out = tmp_path / "r.json"
    assert cli.main(["eval", "seg", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"),
                     "--num-classes", "3", "--ignore-index", "255", "--json", str(out)]) == 0
    js = json.loads(out.read_text())
    assert set(js) >= {"aAcc", "mIoU", "mF1", "IoU", "F1"}
    assert js["mIoU"] == pytest.approx(100 * (3 / 5 + 2 / 5 + 2 / 3) / 3, abs=1e-3)
    assert "mIoU" in capsys.readouterr().out
    (tmp_path / "pred" / "b.png").unlink()
    assert cli.main(["eval", "seg", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"),
                     "--num-classes", "3", "--ignore-index", "255"]) == 2
    assert "b.png" in capsys.readouterr().err


def test_evaluate_dirs_missing_predictions_are_named(tmp_path):
    write_png(tmp_path / "label" / "x1.png", np.zeros((2, 2)))
    write_png(tmp_path / "label" / "x2.png", np.zeros((2, 2)))
    write_png(tmp_path / "pred" / "x1.png", np.zeros((2, 2)))
    with pytest.raises(DataError, match="1 of 2 predictions missing.*x2.png"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "label", 2)


# ----------------------------------------------------------------------------- sliding window

def test_window_starts_grid():
    # Every 256 px while a whole window fits, then one window clamped to end at the border.
    assert window_starts(6000, 512, 256) == list(range(0, 6000 - 512, 256)) + [6000 - 512]
    assert window_starts(512, 512, 256) == [0] and window_starts(300, 512, 256) == [0]
    assert window_starts(1024, 512, 384) == [0, 384, 512]
    with pytest.raises(ValueError, match="uncovered"):
        window_starts(1000, 256, 300)


class CoordinateModel(torch.nn.Module):
    """Logits = window-local (x, y) coordinates, plus the input's first channel: a known function."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        n, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        return torch.stack([xs.expand(n, h, w), ys.expand(n, h, w), x[:, 0]], dim=1)


def test_overlapping_windows_average_logits():
    images = torch.randn(2, 3, 40, 50)
    model = CoordinateModel()
    out = sliding_window_inference(model, images, 3, crop=(16, 24), stride=(10, 12), batch_size=5)
    ys, xs = window_starts(40, 16, 10), window_starts(50, 24, 12)
    total = np.zeros((2, 40, 50))
    count = np.zeros((40, 50))
    for y in ys:
        for x in xs:
            total[0, y:y + 16, x:x + 24] += np.arange(24)[None, :]
            total[1, y:y + 16, x:x + 24] += np.arange(16)[:, None]
            count[y:y + 16, x:x + 24] += 1
    expected = torch.from_numpy(total / count).float()
    assert torch.allclose(out[:, 0], expected[0].expand(2, 40, 50), atol=1e-5)
    assert torch.allclose(out[:, 1], expected[1].expand(2, 40, 50), atol=1e-5)
    assert torch.allclose(out[:, 2], images[:, 0], atol=1e-6)  # position-independent logits pass through
    assert all(shape[0] <= 5 for shape in model.calls)
    assert sum(shape[0] for shape in model.calls) == 2 * len(ys) * len(xs)


def test_window_equal_to_image_is_whole_image_inference_and_batching_is_invisible():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1))
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        whole = net(images)
        slid = sliding_window_inference(net, images, 4, crop=(32, 48), stride=16)
        assert torch.allclose(slid, whole, atol=1e-6)
        a = sliding_window_inference(net, images, 4, crop=16, stride=8, batch_size=1)
        b = sliding_window_inference(net, images, 4, crop=16, stride=8, batch_size=64)
    assert torch.allclose(a, b, atol=1e-6)


def test_strided_head_small_image_padding_and_flip_tta():
    pointwise = torch.nn.Conv2d(3, 5, 1)
    images = torch.randn(1, 3, 20, 30)
    with torch.no_grad():
        whole = pointwise(images)
        out = sliding_window_inference(pointwise, images, 5, crop=32, stride=16, flips=("horizontal", "vertical"))
    assert out.shape == (1, 5, 20, 30)
    assert torch.allclose(out, whole, atol=1e-5)  # pointwise model: padding and flips change nothing

    def strided(x):  # a stride-4 head: logits at 1/4 resolution, resized back by the slider
        return torch.nn.functional.avg_pool2d(pointwise(x), 4)

    with torch.no_grad():
        out = sliding_window_inference(strided, torch.randn(1, 3, 64, 64), 5, crop=32, stride=32)
    assert out.shape == (1, 5, 64, 64)

    model = CoordinateModel()
    out = sliding_window_inference(model, torch.randn(1, 3, 16, 16), 3, crop=16, stride=16, flips=("horizontal",))
    assert torch.allclose(out[:, 0], torch.full((1, 16, 16), 7.5))  # x and its mirror average to the centre
    with pytest.raises(ValueError, match="flips"):
        sliding_window_inference(model, torch.randn(1, 3, 16, 16), 3, crop=16, stride=16, flips=("diagonal",))
    with pytest.raises(ValueError, match="expected"):
        sliding_window_inference(model, torch.randn(1, 3, 16, 16), 4, crop=16, stride=16)
