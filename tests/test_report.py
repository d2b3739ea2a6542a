"""`rsfm report`: the run report reads the stages' files and shows what they hold."""
import json
from pathlib import Path

from rsfm_ds.cli import main
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
