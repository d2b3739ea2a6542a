"""Synthetic MillionAID, the tree scan, the shard writer (content, skips, resume) and verification."""
import json
import re
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from rsfm_ds.cli import main
from rsfm_ds.config import ConfigError
from rsfm_ds.data.jpeg import decode_jpeg, jpeg_size, reduction_for
from rsfm_ds.data.pretrain.manifest import (FORMAT_VERSION, ManifestError, load_manifest, verify_manifest)
from rsfm_ds.data.pretrain.millionaid import scan_millionaid
from rsfm_ds.data.pretrain.shards import JOURNAL_NAME, parse_sample_key, sample_key, write_millionaid_shards
from rsfm_ds.data.synth.millionaid import leaf_paths, synth_millionaid


def read_shard(path: Path):
    """{key: {ext: bytes}} of one tar shard, read with plain tarfile (independent of the loader)."""
    samples = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_synthetic_tree_has_the_millionaid_layout_and_class_tree(millionaid_tree):
    scan = scan_millionaid(millionaid_tree)
    assert scan.level_counts() == (8, 28, 51)
    assert {len(c.path) for c in scan.classes} == {2, 3}  # some leaves sit two levels deep
    assert len(scan.images) == 120 and not scan.skipped
    for image in scan.images:
        assert re.fullmatch(r"train/\w+/\w+/(\w+/)?\w+_\d{7}\.jpg", image.relpath)
        path = scan.classes[image.class_index].path
        assert image.relpath.split("/")[1:-1] == list(path)
    sizes = [jpeg_size((millionaid_tree / im.relpath).read_bytes()) for im in scan.images[:30]]
    assert all(64 <= w <= 320 and 64 <= h <= 320 for w, h in sizes)
    assert any(w != h for w, h in sizes)
    assert [im.relpath for im in scan.images] == sorted(im.relpath for im in scan.images)


def test_synthetic_generator_is_deterministic_with_default_sizes(tmp_path):
    a = synth_millionaid(tmp_path / "a", images=4, seed=3)
    synth_millionaid(tmp_path / "b", images=4, seed=3)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*.jpg"))
    assert len(files) == 4
    for rel in files:
        data = (a.root / rel).read_bytes()
        assert data == (tmp_path / "b" / rel).read_bytes()
        w, h = jpeg_size(data)
        assert 256 <= min(w, h) and max(w, h) <= 1024
        assert decode_jpeg(data).shape == (h, w, 3)
    assert len(leaf_paths()) == 51
    with pytest.raises(ConfigError, match="min_size"):
        synth_millionaid(tmp_path / "c", images=1, min_size=300, max_size=200)


def test_reduced_decoding_helpers():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, :150] = (255, 0, 0)  # RGB red on the left
    data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert jpeg_size(data) == (300, 100)
    half = decode_jpeg(data, 2)
    assert half.shape == (50, 150, 3) and half[25, 10, 0] > 200 and half[25, 10, 2] < 50
    assert decode_jpeg(b"\xff\xd8garbage") is None
    with pytest.raises(ValueError):
        jpeg_size(b"not a jpeg")
    assert reduction_for(1000, 1000, 224) == 4 and reduction_for(447, 2000, 224) == 1
    assert reduction_for(4000, 4000, 224) == 8


def test_shards_hold_the_source_bytes_labels_and_records(millionaid_tree, millionaid_shards):
    manifest = load_manifest(millionaid_shards)
    scan = scan_millionaid(millionaid_tree)
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.num_samples == 120 and len(manifest.shards) == 8
    assert [c.path for c in manifest.classes] == [c.path for c in scan.classes]
    seen = {}
    for i, record in enumerate(manifest.shards):
        assert record.name == f"millionaid-train-{i:06d}.tar"
        path = millionaid_shards.parent / record.name
        assert path.stat().st_size == record.bytes
        samples = read_shard(path)
        assert len(samples) == record.samples
        for key, members in samples.items():
            assert parse_sample_key(key)[0] == i and set(members) == {"jpg", "cls", "json"}
            meta = json.loads(members["json"])
            assert members["jpg"] == (millionaid_tree / meta["path"]).read_bytes()
            cls = manifest.classes[int(members["cls"])]
            assert meta["class_index"] == cls.index and tuple(meta["classes"]) == cls.path
            assert meta["path"].split("/")[1:-1] == list(cls.path)
            assert (meta["width"], meta["height"]) == jpeg_size(members["jpg"])
            seen[meta["path"]] = key
    assert sorted(seen) == [im.relpath for im in scan.images]  # every image exactly once
    # Shuffled at write time: the first shard is not just the first classes of the scan.
    first_shard = read_shard(millionaid_shards.parent / manifest.shards[0].name)
    first = {json.loads(m["json"])["class_index"] for m in first_shard.values()}
    assert len(first) > 8
    assert verify_manifest(millionaid_shards) == []
    assert not (millionaid_shards.parent / JOURNAL_NAME).exists()


def test_writer_skips_bad_files_with_reasons(tmp_path, millionaid_tree):
    root = tmp_path / "root"
    for image in scan_millionaid(millionaid_tree).images[:10]:
        dst = root / image.relpath
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(millionaid_tree / image.relpath, dst)
    leaf = next((root / "train").rglob("*.jpg")).parent
    (leaf / "broken.jpg").write_bytes((leaf / next(leaf.iterdir()).name).read_bytes()[:2000])
    (leaf / "notes.txt").write_text("not an image")
    (root / "train" / "stray.jpg").write_bytes(b"\xff\xd8")
    report = write_millionaid_shards(root, tmp_path / "out", maxcount=4)
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in report.manifest.skipped}
    assert set(reasons) == {"broken.jpg", "notes.txt", "stray.jpg"}
    assert reasons["broken.jpg"].startswith("corrupt JPEG")
    assert reasons["notes.txt"].startswith("not a .jpg")
    assert reasons["stray.jpg"].startswith("outside the class tree")
    assert report.manifest.num_samples == 10
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["num_skipped"] == 3 and on_disk["num_samples"] == 10


def test_rerun_keeps_verified_shards_and_rewrites_damaged_ones(tmp_path, millionaid_tree):
    out = tmp_path / "out"
    first = write_millionaid_shards(millionaid_tree, out, maxcount=40, workers=2)
    assert len(first.written) == 3 and not first.kept
    names = [s.name for s in first.manifest.shards]
    stamps = {n: (out / n).stat().st_mtime_ns for n in names}
    damaged = bytearray((out / names[1]).read_bytes())
    damaged[5000] ^= 0xFF  # same size, wrong checksum
    (out / names[1]).write_bytes(bytes(damaged))
    (out / names[2]).write_bytes((out / names[2]).read_bytes()[:1000])  # truncated by a "crash"
    (out / f".{names[0]}.tmp999").write_bytes(b"half a shard")  # temp file of a killed writer
    (out / "manifest.json").unlink()  # the crash came before the manifest; the journal remains
    (out / JOURNAL_NAME).write_text("\n".join(
        json.dumps({"shard": s.__dict__, "skipped": []}) for s in first.manifest.shards) + "\n{trunc")
    second = write_millionaid_shards(millionaid_tree, out, maxcount=40, workers=2)
    assert second.kept == [names[0]] and sorted(second.written) == names[1:]
    assert (out / names[0]).stat().st_mtime_ns == stamps[names[0]]
    assert second.manifest.shards == first.manifest.shards  # byte-identical rewrites
    assert not list(out.glob(".*.tmp*")) and verify_manifest(out / "manifest.json") == []
    third = write_millionaid_shards(millionaid_tree, out, maxcount=20)  # another plan: all rewritten
    assert len(third.written) == 6 and not third.kept


def test_verify_detects_a_wrong_checksum_and_a_truncated_shard(tmp_path, millionaid_shards):
    out = tmp_path / "copy"
    shutil.copytree(millionaid_shards.parent, out)
    tree = json.loads((out / "manifest.json").read_text())
    tree["shards"][2]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(tree))
    problems = verify_manifest(out / "manifest.json")
    assert [(p.name, p.reason) for p in problems] == [
        ("millionaid-train-000002.tar", "sha256 differs from the manifest")]
    assert verify_manifest(out / "manifest.json", level="size") == []  # sizes still agree
    shard = out / "millionaid-train-000005.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    assert [p.name for p in verify_manifest(out / "manifest.json", level="size")] == [shard.name]
    tree["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(tree))
    with pytest.raises(ManifestError, match="format_version"):
        load_manifest(out / "manifest.json")


def test_max_side_reencodes_large_images(tmp_path, millionaid_tree):
    report = write_millionaid_shards(millionaid_tree, tmp_path / "out", maxcount=200, max_side=128)
    samples = read_shard(tmp_path / "out" / report.manifest.shards[0].name)
    resized = 0
    for members in samples.values():
        meta = json.loads(members["json"])
        assert max(meta["width"], meta["height"]) <= 128
        assert (meta["width"], meta["height"]) == jpeg_size(members["jpg"])
        if "source_width" in meta:
            resized += 1
            assert max(meta["source_width"], meta["source_height"]) > 128
        else:
            assert members["jpg"] == (millionaid_tree / meta["path"]).read_bytes()
    assert resized > 50


def test_cli_synth_shards_and_verify(tmp_path, capsys):
    assert main(["synth", "millionaid", "--out", str(tmp_path / "tree"), "--images", "6",
                 "--min-size", "64", "--max-size", "96"]) == 0
    assert main(["shards", "millionaid", "--root", str(tmp_path / "tree"), "--out", str(tmp_path / "sh"),
                 "--maxcount", "4", "--workers", "2"]) == 0
    assert main(["shards", "verify", str(tmp_path / "sh" / "manifest.json")]) == 0
    out = capsys.readouterr().out
    assert "6 samples in 2 shards" in out and out.rstrip().endswith("OK")
    assert main(["shards", "millionaid", "--root", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "x")]) == 2
    assert main(["shards", "millionaid", "--root", str(tmp_path / "tree"), "--out", str(tmp_path / "x"),
                 "--maxcount", "0"]) == 2
    assert "maxcount" in capsys.readouterr().err
    (tmp_path / "sh" / "millionaid-train-000001.tar").write_bytes(b"")
    assert main(["shards", "verify", "--quick", str(tmp_path / "sh" / "manifest.json")]) == 1


def test_sample_keys_round_trip():
    assert parse_sample_key(sample_key(12, 345)) == (12, 345)
    with pytest.raises(ValueError):
        parse_sample_key("train/x.jpg")
