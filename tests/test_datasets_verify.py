"""`rsfm datasets verify` / `manifest` and datasets/*/prepare.sh on synthetic trees in the real
formats and on the real samples of tests/data; broken input must name the file (and the line)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rsfm_ds.data.synth.detection import synth_dior, synth_dota
from rsfm_ds.data.synth.millionaid import synth_millionaid
from rsfm_ds.data.synth.segmentation import synth_loveda, synth_potsdam
from rsfm_ds.data.verify import (OFFICIAL_COUNTS, VERIFIERS, check_manifest, verify_dataset, write_manifest)
from rsfm_ds.cli import main as datasets_main

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
NAMES = ("millionaid", "dota_v2", "dior_r", "potsdam", "loveda")


def make_millionaid(root: Path, flat_test: int = 0) -> Path:
    synth_millionaid(root, images=60, seed=0, min_size=64, max_size=96)
    if flat_test:  # the release's unlabelled test images, outside the class tree
        extra = root.parent / f"{root.name}_extra"
        synth_millionaid(extra, images=flat_test, seed=1, min_size=64, max_size=96, split="x")
        (root / "test").mkdir()
        for path in sorted(extra.rglob("*.jpg")):
            shutil.copy(path, root / "test" / path.name)
    return root


def make_dota(root: Path) -> Path:
    synth_dota(root / "train", images=3, seed=0, size=256)
    synth_dota(root / "val", images=2, seed=0, size=256, first_id=100)
    return root


MAKERS = {
    "millionaid": make_millionaid,
    "dota_v2": make_dota,
    "dior_r": lambda root: synth_dior(root, images=10, seed=0, size=256).root,
    "potsdam": lambda root: synth_potsdam(root, tiles=2, seed=0, size=256).root,
    "loveda": lambda root: synth_loveda(root, images=2, seed=0, size=128).root,
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """One synthetic copy of every dataset (read-only: tests that break files copy them first)."""
    base = tmp_path_factory.mktemp("synthetic")
    return {name: Path(make(base / name)) for name, make in MAKERS.items()}


def copy_of(synthetic, name, tmp_path) -> Path:
    return Path(shutil.copytree(synthetic[name], tmp_path / name, symlinks=True))


def messages(report):
    return [str(p) for p in report.problems]


@pytest.mark.parametrize("name", NAMES)
def test_synthetic_copies_verify_without_counts(synthetic, name):
    report = verify_dataset(name, synthetic[name], expect_counts="none")
    assert report.ok and not report.warnings, messages(report)
    assert report.counts and all(v > 0 for v in report.counts.values())


@pytest.mark.parametrize("name", NAMES)
def test_official_counts_flag_a_synthetic_copy(synthetic, name):
    report = verify_dataset(name, synthetic[name], expect_counts="official")
    counted = [p for p in report.problems if "the release has" in p.message]
    assert counted, messages(report)
    for problem in counted:  # confirmed counts are errors, the others warnings
        key = problem.message.split(":")[0]
        expected = next(c for c in OFFICIAL_COUNTS[name] if c.key == key)
        assert problem.level == ("error" if expected.confirmed else "warning")
        assert f"{expected.value:,}" in problem.message
    assert any("--expect-counts none" in note for note in report.notes)


def test_synthetic_counts_are_what_was_written(synthetic):
    assert verify_dataset("millionaid", synthetic["millionaid"], "none").counts == {
        "train/images": 60, "train/leaf_classes": 51, "train/second_level_classes": 28, "train/top_level_classes": 8}
    dota = verify_dataset("dota_v2", synthetic["dota_v2"], "none").counts
    assert (dota["train/images"], dota["train/labels"], dota["val/images"], dota["val/labels"]) == (3, 3, 2, 2)
    dior = verify_dataset("dior_r", synthetic["dior_r"], "none").counts
    assert dior["annotations"] == 10 and dior["train/ids"] + dior["val/ids"] + dior["test/ids"] == 10
    potsdam = verify_dataset("potsdam", synthetic["potsdam"], "none").counts
    assert potsdam["train/tiles"] == 1 and potsdam["test/tiles"] == 1 and potsdam["5_Labels_all/tiles"] == 2
    loveda = verify_dataset("loveda", synthetic["loveda"], "none").counts
    assert loveda["Train"] == loveda["Val"] == loveda["Test"] == 2 and loveda["images"] == 6


def test_real_dota_samples(tmp_path):
    # The two real images with their labels as train and val, and all seven real label files in
    # train: each parses with the DOTA v2.0 classes; labels without images are warnings.
    for split, image_id in (("train", "P0706"), ("val", "P1888")):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labelTxt").mkdir()
        shutil.copy(DATA / "dota" / "images" / f"{image_id}.png", tmp_path / split / "images")
        shutil.copy(DATA / "dota" / "labelTxt" / f"{image_id}.txt", tmp_path / split / "labelTxt")
    report = verify_dataset("dota_v2", tmp_path, "none")
    assert report.ok and not report.warnings, messages(report)
    assert report.counts["train/objects"] == 536 and report.counts["val/objects"] == 64
    for label in (DATA / "dota" / "labelTxt").glob("*.txt"):
        shutil.copy(label, tmp_path / "train" / "labelTxt")
    report = verify_dataset("dota_v2", tmp_path, "none")
    assert report.ok, messages(report)
    assert len(report.warnings) == 6 and all("without an image" in p.message for p in report.warnings)
    assert report.counts["train/labels"] == 7 and report.counts["train/objects"] == 536 + 22 + 34 + 144 + 64 + 26 + 158


def test_real_dior_sample():
    # The sample ships trainval.txt and no test split.
    report = verify_dataset("dior_r", DATA / "dior", "none", splits=["trainval"])
    assert report.ok and not report.warnings, messages(report)
    assert report.counts == {"annotations": 1, "JPEGImages-trainval": 1, "trainval/ids": 1}
    official = verify_dataset("dior_r", DATA / "dior", "official", splits=["trainval"])
    # The image is 800x800 as the release's; only the counts differ.
    assert [p.message.split(":")[0] for p in official.errors] == ["annotations"]
    default = verify_dataset("dior_r", DATA / "dior", "none")
    assert any("JPEGImages-test: missing folder" in m for m in messages(default))
    assert any("data.train_splits=[trainval]" in note for note in default.notes)


def test_missing_dataset_root_and_folders(synthetic, tmp_path):
    report = verify_dataset("loveda", tmp_path / "nowhere", "none")
    assert messages(report) == [f"{tmp_path / 'nowhere'}: missing folder (the dataset root)"]
    root = copy_of(synthetic, "dota_v2", tmp_path)
    shutil.rmtree(root / "val" / "labelTxt")
    report = verify_dataset("dota_v2", root, "none")
    assert f"{root / 'val' / 'labelTxt'}: missing folder (DOTA val labelTxt files)" in messages(report)
    root = copy_of(synthetic, "loveda", tmp_path)
    shutil.rmtree(root / "Val" / "Rural" / "masks_png")
    assert not verify_dataset("loveda", root, "none").ok
    with pytest.raises(ValueError, match="splits: dota_v2 has train, val, test; got trainval"):
        verify_dataset("dota_v2", synthetic["dota_v2"], "none", splits=["trainval"])


def test_bad_dota_label_line_names_file_line_and_field(synthetic, tmp_path):
    root = copy_of(synthetic, "dota_v2", tmp_path)
    label = root / "train" / "labelTxt" / "P0001.txt"
    lines = label.read_text().splitlines()
    lines[4] = lines[4].replace(lines[4].split()[5], "abc", 1)  # y3 of the third object
    label.write_text("\n".join(lines) + "\n")
    (root / "val" / "labelTxt" / "P0100.txt").unlink()
    report = verify_dataset("dota_v2", root, "none")
    bad = [p for p in report.errors if p.path == str(label)]
    assert len(bad) == 1 and bad[0].line == 5 and bad[0].message == "y3: not a finite number: 'abc'"
    assert str(bad[0]) == f"{label}:5: y3: not a finite number: 'abc'"
    assert f"{root / 'val' / 'labelTxt' / 'P0100.txt'}: missing: no label file for image P0100.png" in messages(report)


def test_bad_dior_xml_and_image_set_line(synthetic, tmp_path):
    root = copy_of(synthetic, "dior_r", tmp_path)
    xml = root / "Annotations" / "Oriented Bounding Boxes" / "00001.xml"
    text = xml.read_text()
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "<x_right_top>" in t)
    start = text.index("<x_right_top>") + len("<x_right_top>")
    xml.write_text(text[:start] + "oops" + text[text.index("</x_right_top>"):])
    test_set = root / "ImageSets" / "Main" / "test.txt"
    test_set.write_text(test_set.read_text() + "99999\n")
    report = verify_dataset("dior_r", root, "none")
    assert f"{xml}:{line}: object 1: robndbox/x_right_top: not a finite number: 'oops'" in messages(report)
    n = len(test_set.read_text().splitlines())
    assert any(m.startswith(f"{test_set}:{n}: id '99999': no annotation") for m in messages(report))
    assert any(m.startswith(f"{test_set}:{n}: id '99999': no image") for m in messages(report))


def test_bad_potsdam_label_colours_and_missing_label(synthetic, tmp_path):
    root = copy_of(synthetic, "potsdam", tmp_path)
    label = root / "5_Labels_all" / "top_potsdam_2_10_label.tif"
    bgr = cv2.imread(str(label))
    bgr[:3, :4] = (10, 20, 30)  # 12 pixels of a colour outside the palette (RGB 30, 20, 10)
    cv2.imwrite(str(label), bgr)
    (root / "5_Labels_all_noBoundary" / "top_potsdam_2_13_label_noBoundary.tif").unlink()
    (root / "2_Ortho_RGB" / "top_potsdam_9_9_RGB.tif").write_bytes(b"II*\x00")
    report = verify_dataset("potsdam", root, "none")
    bad = [p for p in report.errors if p.path == str(label)]
    assert len(bad) == 1 and "(30, 20, 10) x12" in bad[0].message and "not in the Potsdam palette" in bad[0].message
    assert any("top_potsdam_2_13_label_noBoundary.tif: missing" in m for m in messages(report))
    assert any("top_potsdam_9_9_RGB.tif: tile '9_9' is in neither" in m for m in messages(report))


def test_bad_loveda_mask_and_missing_mask(synthetic, tmp_path):
    root = copy_of(synthetic, "loveda", tmp_path)
    mask = root / "Train" / "Urban" / "masks_png" / "0.png"
    values = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    values[0, 0] = 9
    cv2.imwrite(str(mask), values)
    (root / "Val" / "Rural" / "masks_png" / "3.png").unlink()
    report = verify_dataset("loveda", root, "none")
    assert f"{mask}: mask value 9 outside 0..7" in messages(report)
    assert any(m.startswith(f"{root / 'Val' / 'Rural' / 'masks_png' / '3.png'}: missing: no mask") for m in messages(report))


def test_bad_millionaid_files(synthetic, tmp_path):
    root = copy_of(synthetic, "millionaid", tmp_path)
    fake = next(root.rglob("*.jpg"))
    fake.write_bytes(b"<html>not found</html>")
    (root / "train" / "stray.jpg").write_bytes(fake.read_bytes())
    report = verify_dataset("millionaid", root, "none")
    assert f"{fake}: unreadable image: not an image (no PNG, JPEG, TIFF or BMP signature)" in messages(report)
    assert any(p.level == "warning" and p.path == str(root / "train" / "stray.jpg") and "outside the class tree"
               in p.message for p in report.problems)


def test_millionaid_test_split_outside_the_class_tree(tmp_path):
    root = make_millionaid(tmp_path / "maid", flat_test=4)
    report = verify_dataset("millionaid", root, "none")
    assert report.ok, messages(report)
    assert report.counts["test/images"] == 4 and report.counts["images"] == 64
    assert any("4 unlabelled images, directly in test/" in note for note in report.notes)


def test_checksum_manifest_roundtrip_and_mismatches(synthetic, tmp_path):
    root = copy_of(synthetic, "dota_v2", tmp_path)
    manifest = tmp_path / "dota.sha256.json"
    written = write_manifest(root, manifest, dataset="dota_v2", workers=2)
    assert written["num_files"] == 10 and written["format_version"] == 1
    assert json.loads(manifest.read_text())["files"] == written["files"]
    assert check_manifest(root, manifest) == []
    label = root / "train" / "labelTxt" / "P0001.txt"
    data = bytearray(label.read_bytes())
    data[-2] = ord("7") if data[-2] != ord("7") else ord("8")  # same size, other bytes
    label.write_bytes(bytes(data))
    (root / "val" / "images" / "P0101.png").unlink()
    (root / "val" / "extra.txt").write_text("x")
    line = next(i for i, t in enumerate(manifest.read_text().splitlines(), 1) if '"train/labelTxt/P0001.txt"' in t)
    problems = [str(p) for p in check_manifest(root, manifest)]
    assert f"{label}: checksum mismatch: sha256 differs from the manifest's (listed at {manifest}:{line})" in problems
    assert any(p.startswith(f"{root / 'val' / 'images' / 'P0101.png'}: missing") for p in problems)
    assert f"warning: {root / 'val' / 'extra.txt'}: not in the manifest {manifest}" in problems
    assert not any("checksum mismatch" in p for p in map(str, check_manifest(root, manifest, quick=True)))
    manifest.write_text('{"format": "something else"}')
    assert "not an rsfm-ds/dataset-checksums manifest" in str(check_manifest(root, manifest)[0])


def test_cli_verify_and_manifest(synthetic, tmp_path, capsys):
    root = copy_of(synthetic, "dota_v2", tmp_path)
    manifest = tmp_path / "m.json"
    assert datasets_main(["datasets", "manifest", "--root", str(root), "--out", str(manifest)]) == 0
    out = tmp_path / "report.json"
    assert datasets_main(["datasets", "verify", "dota_v2", "--root", str(root), "--expect-counts", "none",
                          "--manifest", str(manifest), "--json", str(out)]) == 0
    assert "dota_v2 at" in capsys.readouterr().out and json.loads(out.read_text())["ok"] is True
    assert datasets_main(["datasets", "verify", "dota_v2", "--root", str(root)]) == 0  # warnings only
    capsys.readouterr()
    label = root / "val" / "labelTxt" / "P0100.txt"
    label.write_text(label.read_text() + "1 2 3\n")
    assert datasets_main(["datasets", "verify", "dota_v2", "--root", str(root), "--expect-counts", "none"]) == 1
    printed = capsys.readouterr().out
    assert f"{label}:" in printed and "expected 9 or 10 fields" in printed and "FAILED, 1 error\n" in printed


def test_rsfm_parser_has_the_datasets_verbs():
    from rsfm_ds.cli import build_parser

    args = build_parser().parse_args(["datasets", "verify", "potsdam", "--root", "R", "--expect-counts", "none"])
    assert (args.name, args.root, args.expect_counts) == ("potsdam", "R", "none")
    args = build_parser().parse_args(["datasets", "manifest", "--root", "R", "--out", "M"])
    assert (args.root, args.out) == ("R", "M")


# --- datasets/*/prepare.sh ------------------------------------------------------------------------

SCRIPTS = sorted(REPO.glob("datasets/*/prepare.sh"))


def test_every_dataset_has_a_readme_and_a_script():
    assert sorted(p.parent.name for p in SCRIPTS) == sorted(NAMES) == sorted(VERIFIERS)
    for script in SCRIPTS:
        assert (script.parent / "README.md").is_file()
        assert os.access(script, os.X_OK), script
        assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", [*SCRIPTS, REPO / "datasets" / "common.sh"], ids=lambda p: p.parent.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def prepare(name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", str(Path(sys.executable).parents[1])),
            "EXPECT_COUNTS": "none", "WORKERS": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(REPO / "datasets" / name / "prepare.sh")], env=full, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_prepare_millionaid_all_images(tmp_path):
    make_millionaid(tmp_path / "maid", flat_test=4)
    run = prepare("millionaid", tmp_path, ROOT="maid", OUT="out", MAXCOUNT="16")
    assert run.returncode == 0, run.stdout + run.stderr
    manifest = json.loads((tmp_path / "out" / "shards" / "manifest.json").read_text())
    assert sum(s["samples"] for s in manifest["shards"]) == 64 and not manifest["skipped"]
    assert ["unlabelled", "test"] in [c["path"] for c in manifest["classes"]]
    assert f"data.shards={tmp_path / 'out' / 'shards' / 'manifest.json'}" in run.stdout
    run = prepare("millionaid", tmp_path, ROOT="maid", OUT="out_train", IMAGES="train", MAXCOUNT="16")
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((tmp_path / "out_train" / "shards" / "manifest.json").read_text())["split"] == "train"


def test_prepare_dota_v2_patches(tmp_path):
    make_dota(tmp_path / "dota")
    run = prepare("dota_v2", tmp_path, ROOT="dota", OUT="split", SIZE="256", GAP="64")
    assert run.returncode == 0, run.stdout + run.stderr
    # The multi-scale recipe by default: mmrotate's rule names patches by window side, SIZE / rate
    # for rates 0.5, 1.0, 1.5 (int(256 / 1.5) = 170). The 512 px window of a 256 px image lies 25%
    # inside it, under mmrotate's img_rate_thr 0.6, so rate 0.5 gives no patch here.
    for split, n in (("train", 3), ("val", 2)):
        images = tmp_path / "split" / split / "images"
        for side, count in ((512, 0), (256, n), (170, n)):
            assert len(list(images.glob(f"*__{side}__0___0.png"))) == count, (split, side)
        assert len(list((tmp_path / "split" / split / "labelTxt").glob("*.txt"))) == len(list(images.glob("*.png")))
    assert f"data.val_full_labels={tmp_path / 'dota' / 'val' / 'labelTxt'}" in run.stdout


def test_prepare_stops_when_verification_fails(tmp_path):
    make_dota(tmp_path / "dota")
    label = tmp_path / "dota" / "train" / "labelTxt" / "P0000.txt"
    label.write_text(label.read_text() + "1 2 3 4 5 6 7 8 airship 0\n")
    run = prepare("dota_v2", tmp_path, ROOT="dota", OUT="split", SIZE="256", GAP="64")
    assert run.returncode == 1
    assert f"{label}:" in run.stdout and "unknown class 'airship'" in run.stdout
    assert not (tmp_path / "split").exists()


@pytest.mark.parametrize("name,default", [("dior_r", "data/dior"), ("loveda", "data/LoveDA")])
def test_prepare_links_release_trees(tmp_path, name, default):
    root = Path(MAKERS[name](tmp_path / "release"))
    run = prepare(name, tmp_path, ROOT="release", OUT="linked")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "linked").resolve() == root.resolve()
    assert f"data.root={tmp_path / 'linked'}" in run.stdout and default in run.stdout


def test_prepare_potsdam_crops(tmp_path):
    MAKERS["potsdam"](tmp_path / "potsdam")
    run = prepare("potsdam", tmp_path, ROOT="potsdam", OUT="crops", CROP="128", STRIDE="128")
    assert run.returncode == 0, run.stdout + run.stderr
    prepared = json.loads((tmp_path / "crops" / "prepare.json").read_text())
    assert prepared["eroded"] is True and prepared["protocol"] == 5 and prepared["crops"] == {"train": 4, "val": 4}
    labels = cv2.imread(str(next((tmp_path / "crops" / "ann_dir" / "train").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, 255}
    assert "data.crop_size=128 backbone.img_size=128" in run.stdout
