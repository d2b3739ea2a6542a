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
