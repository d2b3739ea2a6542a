"""Bad inputs and faults met by one process: each command is run as a user runs it and the test
asserts what the user sees: the exit status, the one error line naming the file or field, and what
is left on disk. (Faults of multi-rank jobs: test_faults_distributed.py.)"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from launching import process_state, wait_for
from safetensors.torch import save_file

from rsfm_ds.cli import main
from rsfm_ds.data.det.dota import (Detections, load_dota_labels, parse_dota_label, read_task1_file,
                                   write_task1_dir)
from rsfm_ds.data.det.dior import read_image_set
from rsfm_ds.data.pretrain.shards import write_millionaid_shards
from rsfm_ds.data.synth.detection import synth_dota
from rsfm_ds.data.synth.millionaid import synth_millionaid
from rsfm_ds.data.synth.segmentation import synth_loveda, synth_potsdam
from rsfm_ds.models.mae import create_mae

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
DEBUG_PRETRAIN = str(ROOT / "configs" / "pretrain" / "debug.yaml")


def rsfm(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m rsfm_ds.cli ARGS`` in the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "rsfm_ds.cli", *map(str, args)], cwd=ROOT, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)


def error_line(stderr: str, status: int, code: int = 2) -> str:
    """The one ``rsfm ...: error:`` line of a command that failed with ``code``; no traceback."""
    assert status == code, stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, stderr[-4000:]
    return lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path``: a disk that fills up. Needs root."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# --- 3. silent wrong results ----------------------------------------------------------------------

def test_eval_det_refuses_a_folder_with_nothing_to_evaluate(tmp_path, capsys):
    synth_dota(tmp_path / "dota", images=2, seed=0, size=256)
    labels = tmp_path / "dota" / "labelTxt"
    dets = tmp_path / "dets"
    dets.mkdir()
    assert main(["eval", "det", "--dets", str(dets), "--labels", str(labels)]) == 2
    assert f"{dets}: no Task1_<class>.txt files, nothing to evaluate" in capsys.readouterr().err

    # Ground truth written as detections: under Task2 names (horizontal boxes) it is refused ...
    by_class = {}
    for image_id, ann in load_dota_labels(labels).items():
        for polygon, label in zip(ann.polygons, ann.labels):
            by_class.setdefault(ann.classes[label], []).append((image_id, polygon))
    assert by_class
    detections = {c: Detections(np.array([i for i, _ in rows]), np.ones(len(rows)), np.stack([p for _, p in rows]))
                  for c, rows in by_class.items()}
    write_task1_dir(dets, detections)
    for f in dets.glob("Task1_*.txt"):
        f.rename(f.with_name(f.name.replace("Task1_", "Task2_")))
    assert main(["eval", "det", "--dets", str(dets), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert f"{dets}: no Task1_<class>.txt files" in err and "Task2_" in err
    # ... and as Task1 files it scores a perfect mAP (the refusal is not of a valid folder).
    for f in dets.glob("Task2_*.txt"):
        f.rename(f.with_name(f.name.replace("Task2_", "Task1_")))
    assert main(["eval", "det", "--dets", str(dets), "--labels", str(labels), "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["mAP"] == pytest.approx(1.0)


def test_eval_det_refuses_detections_that_name_no_labelled_image(tmp_path, capsys):
    synth_dota(tmp_path / "dota", images=1, seed=0, size=256)
    write_task1_dir(tmp_path / "dets", {"plane": Detections(np.array(["P9999"]), np.ones(1),
                                                             np.array([[0, 0, 9, 0, 9, 9, 0, 9]], np.float32))})
    empty = tmp_path / "labels"
    empty.mkdir()
    assert main(["eval", "det", "--dets", str(tmp_path / "dets"), "--labels", str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err


@pytest.fixture
def truncated_shards(millionaid_shards, tmp_path) -> Path:
    """A copy of the session's shards whose second shard lost its second half; returns the manifest."""
    out = tmp_path / "shards"
    shutil.copytree(millionaid_shards.parent, out)
    shard = sorted(out.glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return out / "manifest.json"


PRETRAIN = ["pretrain", "--config", "configs/pretrain/debug.yaml", "log.every_steps=1", "log.tensorboard=false",
            "data.num_workers=0"]


def test_skipped_samples_are_counted_in_the_log_and_metrics(truncated_shards, tmp_path):
    run_dir = tmp_path / "run"
    proc = rsfm(*PRETRAIN, f"run_dir={run_dir}", f"data.shards={truncated_shards}", "data.verify=none",
                "train.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    # Each step plans a global batch of 32: what was read plus what was skipped.
    seen = [0] + [r["train/samples_seen"] for r in records]
    for before, record in zip(seen, records):
        assert record["train/samples_seen"] - before + record["data/skipped"] == 32, record
    assert records[-1]["data/skipped_total"] == sum(r["data/skipped"] for r in records) > 0
    log = (run_dir / "train.log").read_text()
    assert f"skipped_total {records[-1]['data/skipped_total']}" in log
    # The checkpoint's sample count is of samples trained on (a resumed run's data position is not).
    inspected = rsfm("convert", "inspect", run_dir / "checkpoints", "--json")
    assert json.loads(inspected.stdout)["samples_seen"] == seen[-1]


def test_a_truncated_shard_under_the_default_size_check_is_one_line(truncated_shards, tmp_path):
    proc = rsfm(*PRETRAIN, f"run_dir={tmp_path / 'run'}", f"data.shards={truncated_shards}", "train.max_steps=1")
    line = error_line(proc.stderr, proc.returncode)
    assert "millionaid-train-000001.tar: size" in line and "manifest says" in line


def test_verify_millionaid_finds_a_truncated_jpeg(tmp_path, capsys):
    synth_millionaid(tmp_path, images=6, seed=0, min_size=64, max_size=96)
    jpeg = sorted(tmp_path.rglob("*.jpg"))[2]
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size * 2 // 3])  # decodable, grey at the bottom
    assert main(["datasets", "verify", "millionaid", "--root", str(tmp_path), "--expect-counts", "none"]) == 1
    out = capsys.readouterr().out
    assert f"{jpeg}: unreadable image: JPEG file cut short" in out and "FAILED, 1 error" in out


# --- 4. data lost by a command --------------------------------------------------------------------

def test_mae_to_backbone_refuses_to_write_over_its_input(tmp_path, capsys):
    source = tmp_path / "model.safetensors"
    mae = create_mae("debug", img_size=96)
    save_file({k: v.contiguous() for k, v in mae.state_dict().items()}, source, metadata={"preset": "debug"})
    before = sha256(source)
    assert main(["convert", "mae-to-backbone", str(source), str(source)]) == 2
    assert f"{source}" in capsys.readouterr().err
    assert sha256(source) == before
    # The same command with another output converts.
    assert main(["convert", "mae-to-backbone", str(source), str(tmp_path / "backbone.safetensors")]) == 0


# --- 5. a user's mistake: one line, exit 2 --------------------------------------------------------

def test_a_loveda_mask_value_outside_the_classes_ends_finetuning_naming_the_file(tmp_path):
    synth_loveda(tmp_path / "loveda", images=2, seed=0, size=256)
    mask_path = sorted((tmp_path / "loveda" / "Train").rglob("masks_png/*.png"))[0]
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    mask[5, 5] = 9  # LoveDA has 7 classes, 1..7 in the files (0 is no-data)
    cv2.imwrite(str(mask_path), mask)
    proc = rsfm("finetune", "seg", "--config", "configs/seg/potsdam_debug.yaml", f"run_dir={tmp_path / 'run'}",
                "data.dataset=loveda", f"data.root={tmp_path / 'loveda'}", "data.num_classes=7",
                "schedule.length=2", "eval.every=2", "log.tensorboard=false")
    line = error_line(proc.stderr, proc.returncode)
    assert f"{mask_path}: label value 9 (class 8 after reduce-zero-label)" in line


@pytest.mark.slow
def test_resuming_with_a_changed_model_names_the_fields_that_differ(tmp_path):
    """A checkpoint saved with one architecture and resumed under a config that builds another (a
    changed default, an edited override) ends in one line naming the differing fields; a change
    the model survives resumes, and the log names it."""
    synth_loveda(tmp_path / "loveda", images=2, seed=0, size=256)
    run = ["finetune", "seg", "--config", "configs/seg/potsdam_debug.yaml", f"run_dir={tmp_path / 'run'}",
           "data.dataset=loveda", f"data.root={tmp_path / 'loveda'}", "data.num_classes=7", "eval.every=100",
           "checkpoint.every_steps=1", "log.tensorboard=false", "train.global_batch_size=4"]
    first = rsfm(*run, "schedule.length=1")
    assert first.returncode == 0, first.stderr[-2000:]
    proc = rsfm(*run, "schedule.length=2", "--resume", "auto", "backbone.use_rel_pos=false")
    line = error_line(proc.stderr, proc.returncode)
    assert "step_00000001" in line and "backbone.use_rel_pos (saved True, now False)" in line
    proc = rsfm(*run, "schedule.length=2", "--resume", "auto", "data.photometric=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "config differs from the saved run's: data.photometric (saved False, now True)" in log


def test_zero_stage_outside_0_to_3_is_one_line(tmp_path, millionaid_shards):
    ds_config = json.loads((ROOT / "ds_configs" / "cpu_debug.json").read_text())
    ds_config["zero_optimization"]["stage"] = 7
    (tmp_path / "ds.json").write_text(json.dumps(ds_config))
    proc = rsfm(*PRETRAIN, f"run_dir={tmp_path / 'run'}", f"data.shards={millionaid_shards}",
                f"train.ds_config={tmp_path / 'ds.json'}")
    line = error_line(proc.stderr, proc.returncode)
    assert "ds.json" in line and "zero_optimization.stage" in line and "7" in line


def test_a_full_disk_while_writing_shards_names_the_shard(tmp_path):
    synth_millionaid(tmp_path / "tree", images=8, seed=0, min_size=256, max_size=320)
    with small_disk(tmp_path / "disk", "64k") as disk:
        proc = rsfm("shards", "millionaid", "--root", tmp_path / "tree", "--out", disk / "shards", "--maxcount", "2")
        line = error_line(proc.stderr, proc.returncode)
        assert f"{disk / 'shards'}/millionaid-train-" in line and "No space left on device" in line
        # No half-written shard is left under a shard's name.
        written = [json.loads(line) for line in (disk / "shards" / "manifest.partial.jsonl").read_text().splitlines()]
        assert sorted(p.name for p in (disk / "shards").glob("*.tar")) == sorted(r["shard"]["name"] for r in written)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_log(tmp_path, millionaid_shards):
    with small_disk(tmp_path / "disk", "4m") as disk:
        run_dir = disk / "run"
        proc = rsfm(*PRETRAIN, f"run_dir={run_dir}", f"data.shards={millionaid_shards}", "train.max_steps=2",
                    "checkpoint.every_steps=1")
        line = error_line(proc.stderr, proc.returncode)
        assert f"{run_dir / 'checkpoints' / 'step_00000001'}: no space left on the device" in line
        assert [json.loads(r)["step"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]
        assert not (run_dir / "checkpoints" / "step_00000001" / "COMPLETE").exists()


# --- 6. smaller ----------------------------------------------------------------------------------

def test_a_byte_order_mark_is_read_past(tmp_path):
    label = sorted((DATA / "dota" / "labelTxt").glob("*.txt"))[0]
    (tmp_path / label.name).write_bytes(b"\xef\xbb\xbf" + label.read_bytes())
    plain, marked = parse_dota_label(label), parse_dota_label(tmp_path / label.name)
    assert (marked.source, marked.gsd) == (plain.source, plain.gsd) and len(plain.polygons) > 0
    assert np.array_equal(marked.labels, plain.labels) and np.array_equal(marked.polygons, plain.polygons)

    task1 = tmp_path / "Task1_plane.txt"
    task1.write_bytes(b"\xef\xbb\xbfP0001 0.9 1 2 3 4 5 6 7 8\n")
    assert list(read_task1_file(task1).image_ids) == ["P0001"]

    sets = tmp_path / "dior" / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "test.txt").write_bytes(b"\xef\xbb\xbf00001\n00002\n")
    assert read_image_set(tmp_path / "dior", "test") == ["00001", "00002"]


def test_overrides_may_come_before_and_after_options(capsys):
    # Both overrides reach the config: the second one's bad value is what stops the command.
    assert main(["pretrain", "train.max_steps=3", "--config", DEBUG_PRETRAIN,
                 "train.micro_batch_size=x"]) == 2
    assert "override train.micro_batch_size: expected an integer, got 'x'" in capsys.readouterr().err
    assert main(["pretrain", "train.micro_batch_size=x", "--config", DEBUG_PRETRAIN,
                 "train.max_steps=3"]) == 2
    assert "override train.micro_batch_size: expected an integer, got 'x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", DEBUG_PRETRAIN, "train.max_steps=3", "--bogus"])


def test_a_failed_potsdam_prepare_leaves_nothing_behind(tmp_path, capsys):
    synth_potsdam(tmp_path / "potsdam", tiles=2, seed=0, size=512)
    label = sorted((tmp_path / "potsdam" / "5_Labels_all").glob("*.tif"))[-1]  # the last tile prepared
    image = cv2.imread(str(label))
    image[100, 100] = (1, 2, 3)  # not a Potsdam palette colour
    cv2.imwrite(str(label), image)
    out = tmp_path / "prepared"
    assert main(["potsdam", "prepare", "--root", str(tmp_path / "potsdam"), "--out", str(out), "--crop", "256",
                 "--stride", "256"]) == 2
    assert f"{label}: 1 pixels of 1 colours not in the Potsdam palette" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["potsdam"]  # no crops, no staging folder


def test_resharding_with_another_maxcount_leaves_only_the_manifests_shards(millionaid_tree, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    first = write_millionaid_shards(millionaid_tree, out, maxcount=16)
    second = write_millionaid_shards(millionaid_tree, out, maxcount=40)
    assert len(first.manifest.shards) == 8 and len(second.manifest.shards) == 3
    assert sorted(p.name for p in out.glob("*.tar")) == [s.name for s in second.manifest.shards]
    assert (out / "notes.txt").read_text() == "a user's file"
    assert main(["shards", "verify", str(second.manifest_path)]) == 0


# --- 2. runaways: a command that starts launchers takes them with it ------------------------------

def test_a_tied_child_ends_when_its_parent_is_killed(tmp_path):
    # `rsfm study` starts a `deepspeed` launcher per cell this way; a killed study must not leave a
    # cell training on (the launcher's SIGTERM then reaches every rank).
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess; from rsfm_ds.engine.launcher_guard import tied_child; "
        f"child = subprocess.Popen(['sleep', '600'], **tied_child()); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); child.wait()")], cwd=ROOT)
    child = None
    try:
        assert wait_for(lambda: pid_file.is_file() and pid_file.read_text() != "", 60)
        child = int(pid_file.read_text())
        assert process_state(child) not in (None, "Z")
        parent.kill()
        parent.wait()
        assert wait_for(lambda: process_state(child) in (None, "Z"), 10)
    finally:
        parent.kill()
        parent.wait()
        if child is not None and process_state(child) not in (None, "Z"):
            os.kill(child, 9)
