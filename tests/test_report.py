"""`rsfm report`: the run report reads the stages' files and shows what they hold."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from rsfm_ds.cli import main
from rsfm_ds.evaluation.overlays import class_palette
from rsfm_ds.report import write_report


def fake_run(run_dir: Path, losses, evaluation) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": v}) + "\n"
                                                   for s, v in losses))
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / f"step_{evaluation['step']:08d}.json").write_text(json.dumps(evaluation))
    return run_dir


def test_report_tables_plots_and_independent_evaluation(tmp_path):
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n"
                                               for s in (10, 20, 40)))
    det = fake_run(tmp_path / "det", [(5, 2.0), (10, 1.5)],
                   {"step": 10, "mAP": 0.40875, "num_detections": 184.0, "AP/plane": 0.25, "AP/ship": 0.5675})
    (tmp_path / "check.json").write_text(json.dumps({"mAP": 0.40875, "AP": {"plane": 0.25}}))
    out = write_report(tmp_path / "report" / "report.md", pre, {"detection": det},
                       {"detection": tmp_path / "check.json"})
    text = out.read_text()
    assert "| 10 | 0.1000 | 40 | 0.0250 |" in text
    assert "| metric (step 10) | value | `rsfm eval` on the saved predictions" in text
    assert "| mAP | 0.4088 | 0.4088 |" in text and "| num_detections | 184 | |" in text
    assert "| plane | 0.25 |" in text and "| ship | 0.5675 |" in text
    for png in ("pretrain_loss.png", "detection_loss.png", "detection_per_class.png"):
        assert (out.parent / png).read_bytes()[:4] == b"\x89PNG"


def test_report_cli_rejects_an_evaluation_without_its_run(tmp_path, capsys):
    det = fake_run(tmp_path / "det", [(1, 1.0)], {"step": 1, "mAP": 0.1})
    code = main(["report", "--out", str(tmp_path / "r.md"), "--finetune", f"detection={det}",
                 "--eval", f"segmentation={tmp_path / 'x.json'}"])
    assert code == 2 and "--eval segmentation=...: no --finetune of that name" in capsys.readouterr().err


def test_report_notes_an_undefined_metric_exactly_when_a_class_has_no_prediction(tmp_path):
    import torch

    from rsfm_ds.evaluation.seg_metrics import confusion_matrix, eval_record, metrics_from_confusion

    label = torch.tensor([0, 0, 1, 1, 2, 2])
    names = ["building", "tree", "car"]
    for case, pred in [("never", [0, 0, 1, 1, 1, 0]), ("predicted", [0, 0, 1, 1, 2, 0])]:
        record = eval_record(metrics_from_confusion(confusion_matrix(torch.tensor(pred), label, 3), names))
        run = fake_run(tmp_path / case, [(1, 1.0)], {"step": 1, "protocol": "potsdam val split; 3 classes", **record})
        text = write_report(tmp_path / f"{case}.md", None, {"segmentation": run}).read_text()
        assert "Evaluated on: potsdam val split; 3 classes" in text
        assert "| class | IoU | Acc | F1 |" in text
        if case == "never":
            # IoU 0 enters mIoU; F1 is 0/0 (precision undefined) and mF1 averages the other two.
            assert "| car | 0 | 0 | n/a |" in text
            assert "n/a: F1 n/a for car (never predicted): mF1 is the mean of the other 2 classes" in text
        else:
            assert "n/a" not in text


# Held-out overlays and loss components, from a run directory laid out as the engine writes it.

TITLE = 22  # px of the title strip above each side_by_side panel
GAP = 4  # px between panels


def _write_config(run_dir: Path, task: str, config: str, overrides) -> None:
    from rsfm_ds.config import dump_yaml
    from rsfm_ds.engine.tasks import TASKS

    (run_dir / "config.yaml").write_text(dump_yaml(TASKS[task].load_config(config, overrides)))


def _detection_run(tmp_path: Path) -> Path:
    val = tmp_path / "val"
    (val / "images").mkdir(parents=True)
    (val / "labelTxt").mkdir()
    cv2.imwrite(str(val / "images" / "a.png"), np.full((64, 64, 3), 100, np.uint8))
    (val / "labelTxt" / "a.txt").write_text("10 10 40 10 40 40 10 40 boat 0\n")
    run = tmp_path / "det"
    losses = [(10, {"loss": 2.0, "loss_rpn_cls": 0.7, "loss_rpn_bbox": 0.2, "loss_cls": 1.0, "loss_bbox": 0.1}),
              (20, {"loss": 1.0, "loss_rpn_cls": 0.3, "loss_rpn_bbox": 0.1, "loss_cls": 0.5, "loss_bbox": 0.1})]
    run.mkdir()
    # The engine logs the last step twice: training losses, then the evaluation.
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, **{f"train/{k}": v for k, v in values.items()}, "train/lr": 0.01,
                    "train/loss_scale": 65536.0}) + "\n"
        for s, values in losses) + json.dumps({"step": 20, "eval/mAP": 0.5}) + "\n")
    _write_config(run, "det", "configs/det/dota2_debug.yaml",
                  ["data.dataset=dota", "data.classes=[hut,boat]", f"data.val_dir={val}",
                   f"data.train_dirs=[{val}]"])
    step = run / "eval" / "step_00000020"
    (step / "task1").mkdir(parents=True)
    # One confident boat where the ground truth is, one confident hut elsewhere, one weak hut
    # (below the 0.3 drawing threshold).
    (step / "task1" / "Task1_boat.txt").write_text("a 0.9 12 12 38 12 38 38 12 38\n")
    (step / "task1" / "Task1_hut.txt").write_text("a 0.8 50 50 60 50 60 60 50 60\na 0.1 2 50 8 50 8 60 2 60\n")
    (run / "eval" / "step_00000020.json").write_text(json.dumps({"step": 20, "mAP": 0.5, "AP/hut": 0.0,
                                                                 "AP/boat": 1.0}))
    return run


def test_report_shows_detector_loss_components_and_held_out_boxes(tmp_path):
    run = _detection_run(tmp_path)
    text = write_report(tmp_path / "report" / "report.md", None, {"det": run}).read_text()
    # First and last value of every component, exactly as logged.
    assert "| loss | first step | first value | last step | last value |" in text
    for row in ("| loss | 10 | 2.0000 | 20 | 1.0000 |", "| loss_rpn_cls | 10 | 0.7000 | 20 | 0.3000 |",
                "| loss_rpn_bbox | 10 | 0.2000 | 20 | 0.1000 |", "| loss_cls | 10 | 1.0000 | 20 | 0.5000 |",
                "| loss_bbox | 10 | 0.1000 | 20 | 0.1000 |"):
        assert row in text
    assert "train/lr" not in text and "| lr |" not in text and "loss_scale" not in text  # not losses
    assert "![det a](det_overlay_0.png)" in text
    picture = cv2.imread(str(tmp_path / "report" / "det_overlay_0.png"))[..., ::-1]
    assert picture.shape == (TITLE + 64, 64 + GAP + 64, 3)
    hut, boat = class_palette(2)
    truth, pred = picture[TITLE:, :64], picture[TITLE:, 64 + GAP:]
    # Class colours come from the run's own class list: boat is class 1 of [hut, boat].
    assert (truth[25, 40] == boat).all() and (truth[40, 25] == boat).all()  # ground-truth edges
    assert (pred[25, 38] == boat).all() and (pred[55, 60] == hut).all()  # the two confident boxes
    assert (pred[55, 2] == 100).all() and (pred[55, 8] == 100).all()  # the weak one is not drawn
    assert (truth[55, 60] == 100).all()  # no prediction leaks into the ground-truth panel


def test_report_shows_segmentation_ground_truth_and_saved_prediction(tmp_path):
    root = tmp_path / "potsdam"
    for folder in ("img_dir/val", "ann_dir/val"):
        (root / folder).mkdir(parents=True)
    cv2.imwrite(str(root / "img_dir" / "val" / "t.png"), np.full((32, 32, 3), 100, np.uint8))
    label = np.zeros((32, 32), np.uint8)
    label[:, 16:] = 1
    label[0, 0] = 255
    cv2.imwrite(str(root / "ann_dir" / "val" / "t.png"), label)
    run = tmp_path / "seg"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "train/loss": 1.0}) + "\n")
    _write_config(run, "seg", "configs/seg/potsdam_debug.yaml",
                  [f"data.root={root}", "data.class_names=[road,roof,grass,tree,car]"])
    pred = np.full((32, 32), 4, np.uint8)
    (run / "eval" / "step_00000005" / "pred").mkdir(parents=True)
    cv2.imwrite(str(run / "eval" / "step_00000005" / "pred" / "t.png"), pred)
    (run / "eval" / "step_00000005.json").write_text(json.dumps({"step": 5, "mIoU": 10.0}))
    text = write_report(tmp_path / "r" / "report.md", None, {"seg": run}).read_text()
    assert "t.png: image | ground truth | prediction" in text and "![seg t](seg_overlay_0.png)" in text
    picture = cv2.imread(str(tmp_path / "r" / "seg_overlay_0.png"))[..., ::-1].astype(int)
    image, truth, prediction = (picture[TITLE:, k * (32 + GAP):k * (32 + GAP) + 32] for k in range(3))
    palette = class_palette(5).astype(int)
    blend = lambda c: np.round(0.5 * 100 + 0.5 * palette[c])  # noqa: E731 - the blend formula, by hand
    assert (image == 100).all()
    assert (truth[5, 5] == blend(0)).all() and (truth[5, 20] == blend(1)).all()
    assert (truth[0, 0] == 100).all()  # ignore index: the image as it is
    assert (prediction[10, 10] == blend(4)).all()
    assert (tmp_path / "r" / "seg_legend.png").is_file()


def test_report_without_the_run_data_says_why_and_still_writes(tmp_path, capsys):
    run = _detection_run(tmp_path)
    shutil.rmtree(tmp_path / "val" / "images")
    code = main(["report", "--out", str(tmp_path / "r.md"), "--finetune", f"det={run}"])
    assert code == 0
    text = (tmp_path / "r.md").read_text()
    assert f"No held-out overlays: {tmp_path / 'val' / 'images'}: no such folder" in text
    assert main(["report", "--out", str(tmp_path / "r.md"), "--finetune", f"det={run}",
                 "--overlay-score-thr", "1.5"]) == 2
    assert "--overlay-score-thr: must lie in 0..1, got 1.5" in capsys.readouterr().err


def test_report_shows_own_multiband_scenes_in_their_described_red_green_blue(tmp_path):
    from rsfm_ds.data.raster import read_raster

    root = tmp_path / "own"
    for folder in ("img_dir/val", "ann_dir/val"):
        (root / folder).mkdir(parents=True)
    scene = root / "img_dir" / "val" / "s2.tif"
    shutil.copy(Path(__file__).parent / "data" / "scenes" / "sentinel2_b02_b03_b04_b08_crop.tif", scene)
    cv2.imwrite(str(root / "ann_dir" / "val" / "s2.png"), np.zeros((256, 256), np.uint8))
    run = tmp_path / "seg"
    run.mkdir()
    _write_config(run, "seg", "configs/seg/own_folders_debug.yaml",
                  [f"data.root={root}", "backbone.in_chans=4", "data.band_mean=[500,600,700,2000]",
                   "data.band_std=[100,100,100,300]"])
    (run / "eval" / "step_00000001" / "pred").mkdir(parents=True)
    cv2.imwrite(str(run / "eval" / "step_00000001" / "pred" / "s2.png"), np.ones((256, 256), np.uint8))
    (run / "eval" / "step_00000001.json").write_text(json.dumps({"step": 1, "mIoU": 1.0}))
    text = write_report(tmp_path / "r" / "report.md", None, {"seg": run}).read_text()
    assert "No held-out overlays" not in text
    picture = cv2.imread(str(tmp_path / "r" / "seg_overlay_0.png"))[..., ::-1]
    # The file's bands are blue, green, red, nir (its band descriptions): red shows band 3, blue band 1,
    # each stretched between its own 2nd and 98th percentile.
    raw = read_raster(scene).astype(np.float64)
    for channel, band in ((0, 2), (1, 1), (2, 0)):
        lo, hi = np.percentile(raw[band], [2, 98])
        expected = np.round(np.clip((raw[band] - lo) / (hi - lo) * 255, 0, 255))
        assert np.abs(picture[TITLE:, :256, channel] - expected).max() <= 1
