"""`rsfm dota split` / `rsfm dota merge`: windows, patch names, IoF, patch pixels and labels, and the
round trip (ground truth -> patches -> patch "detections" -> merged image detections == ground truth)
on the real P0706 / P1888 and on a synthetic image."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from rsfm_ds.cli import main
from rsfm_ds.data.det.dota import (DOTA_V2_CLASSES, AnnotationError, Detections, load_dota_labels,
                                   parse_dota_label, read_task1_dir, write_task1_dir)
from rsfm_ds.data.det.merge import merge_detections, merge_dota, nms_per_image, patch_to_image
from rsfm_ds.data.det.split import (SplitConfig, format_patch_name, parse_patch_name, sliding_windows,
                                    split_annotation, split_dota)
from rsfm_ds.data.det.split_pixels import crop_window, resize_by_rate
from rsfm_ds.data.synth.detection import synth_dota
from rsfm_ds.errors import DataError

DATA = Path(__file__).parent / "data" / "dota"
SIZES = {"P0706": (1111, 1182), "P1888": (712, 557)}


def devkit_windows(width, height, size, gap):
    """The DOTA devkit's SplitSingle loop, transcribed."""
    out, left, slide = [], 0, size - gap
    while left < width:
        if left + size >= width:
            left = max(width - size, 0)
        up = 0
        while up < height:
            if up + size >= height:
                up = max(height - size, 0)
            out.append((left, up))
            if up + size >= height:
                break
            up += slide
        if left + size >= width:
            break
        left += slide
    return out


@pytest.mark.parametrize("width, height, size, gap", [
    (1111, 1182, 1024, 200), (712, 557, 1024, 200), (1024, 1024, 1024, 200), (1848, 1025, 1024, 200),
    (4000, 3000, 1024, 500), (777, 2049, 512, 128), (1, 1, 1024, 200), (1025, 1024, 1024, 0)])
def test_windows_follow_the_devkit(width, height, size, gap):
    windows = sliding_windows(width, height, size, gap)
    assert [tuple(w[:2]) for w in windows.tolist()] == devkit_windows(width, height, size, gap)
    assert (windows[:, 2:] - windows[:, :2] == size).all()


@pytest.mark.parametrize("image_id, rate, x, y, name", [
    ("P0001", 1.0, 0, 824, "P0001__1__0___824"), ("P0001", 0.5, 412, 0, "P0001__0.5__412___0"),
    ("P2805", 1.5, 1648, 2472, "P2805__1.5__1648___2472"), ("a__b", 0.25, 3, 4, "a__b__0.25__3___4"),
    ("00001", 2, 10, 20, "00001__2__10___20")])
def test_patch_names_round_trip(image_id, rate, x, y, name):
    assert format_patch_name(image_id, rate, x, y) == name
    parsed = parse_patch_name(name)
    assert (parsed.image_id, parsed.rate, parsed.x, parsed.y) == (image_id, float(rate), x, y)


@pytest.mark.parametrize("name", ["P0001", "P0001__1__0__824", "P0001__1__-3___4", "P0001__x__0___0",
                                  "__1__0___0", "P0001__0__0___0"])
def test_bad_patch_names_are_refused(name):
    with pytest.raises(ValueError, match="is not a patch name <image id>__<rate or window side>__<x>___<y>"):
        parse_patch_name(name)


def test_split_config_is_validated():
    for kwargs, field in [({"gap": 1024}, "gap"), ({"size": 0}, "size"), ({"rates": ()}, "rates"),
                          ({"rates": (1.0, 1)}, "rates"), ({"rates": (-1.0,)}, "rates"), ({"iof_thr": 0.0}, "iof_thr"),
                          ({"pad_value": (1, 2)}, "pad_value"), ({"pad_value": (0, 0, 256)}, "pad_value"),
                          ({"ext": ".gif"}, "ext")]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            SplitConfig(**kwargs)


def _as_detections(patches):
    """Patch labels -> {class: Detections} named by patch, every score 1 (file order breaks ties)."""
    rows = {}
    for patch in patches:
        for poly, name in zip(patch.annotation.polygons, patch.annotation.names):
            rows.setdefault(name, []).append((patch.name, 1.0, poly))
    return {c: Detections([r[0] for r in v], [r[1] for r in v], [r[2] for r in v]) for c, v in rows.items()}


def _assert_same_objects(merged, ann, image_id, keep=None, atol=1e-3):
    """Merged detections of ``image_id`` == the objects of ``ann`` (optionally those in ``keep``)."""
    keep = np.ones(len(ann), bool) if keep is None else keep
    names = np.array(ann.names)
    for c in set(ann.names) | set(merged):
        want = ann.polygons[(names == c) & keep].astype(np.float64)
        dets = merged.get(c, Detections())
        got = dets.polygons[dets.image_ids == image_id]
        assert len(got) == len(want), c
        if len(want):  # every object found once, at its coordinates
            dist = np.abs(got[:, None, :] - want[None, :, :]).max(-1)
            assert (dist.min(0) <= atol).all() and (dist.min(1) <= atol).all(), c


@pytest.mark.parametrize("image_id, config", [
    ("P0706", SplitConfig(rule="mmrotate", size=800, gap=200)),
    ("P1888", SplitConfig(rule="mmrotate", size=512, gap=128, rates=(0.5, 1.0, 1.5))),
])
def test_split_then_merge_gives_back_the_real_ground_truth(image_id, config):
    """mmrotate rule: objects are written whole, so every copy maps back onto its object."""
    ann = parse_dota_label(DATA / "labelTxt" / f"{image_id}.txt")
    width, height = SIZES[image_id]
    patches = split_annotation(ann, image_id, width, height, config)
    placed = np.zeros(len(ann), bool)
    for p in patches:
        placed[p.objects] = True
        parsed = parse_patch_name(p.name)
        # Patch coordinates are the image's shifted by the window corner (mmrotate does not resize).
        assert parsed.rate == 1.0 and parsed.size == p.window[2] - p.window[0]
        np.testing.assert_allclose(p.annotation.polygons, ann.polygons[p.objects] - np.array([parsed.x, parsed.y] * 4),
                                   atol=1e-3)
        flags = p.annotation.difficult
        assert ((flags == ann.difficult[p.objects]) | (flags == 2)).all()
    assert placed.all()
    copies = sum(len(p.objects) for p in patches)
    assert copies > 1.5 * len(ann)  # overlapping windows and scales see objects several times
    merged = merge_detections(_as_detections(patches))
    _assert_same_objects(merged, ann, image_id)


def test_objects_larger_than_the_overlap_can_be_in_no_patch():
    ann = parse_dota_label(DATA / "labelTxt" / "P0706.txt")
    placed = {}
    for rule in ("mmrotate", "devkit"):
        placed[rule] = np.zeros(len(ann), bool)
        for p in split_annotation(ann, "P0706", 1111, 1182, SplitConfig(rule=rule, size=512, gap=128)):
            placed[rule][p.objects] = True
    # One harbour, ~590 px long on the diagonal, is never 70% inside a 512 px window: mmrotate drops
    # it; the devkit writes its clipped parts (with difficulty 2).
    assert np.flatnonzero(~placed["mmrotate"]).tolist() == [173] and ann.names[173] == "harbor"
    assert placed["devkit"].all()


def test_split_and_merge_files_end_to_end(tmp_path):
    src = tmp_path / "src"
    synth_dota(src, images=1, seed=3, size=1024)
    shutil.copy(DATA / "images" / "P1888.png", src / "images")
    shutil.copy(DATA / "labelTxt" / "P1888.txt", src / "labelTxt")
    config = SplitConfig(rule="mmrotate", size=512, gap=128, rates=(1.0, 0.5))
    report = split_dota(src, tmp_path / "split", config)
    truth = load_dota_labels(src / "labelTxt")
    assert report.images == 2 and report.objects == sum(len(a) for a in truth.values()) and report.dropped == 0
    names = sorted(p.stem for p in (tmp_path / "split" / "images").glob("*.png"))
    assert names == sorted(p.stem for p in (tmp_path / "split" / "labelTxt").glob("*.txt"))
    # P0000 (1024 px): 3x3 windows of 512 and one of 1024; P1888 (712 x 557): 2x2 of 512, and its
    # 1024 px window (38% image) is dropped by mmrotate's img_rate_thr.
    assert len(names) == report.patches == (9 + 1) + 4
    patch = load_dota_labels(tmp_path / "split" / "labelTxt")
    assert report.patch_objects == sum(len(a) for a in patch.values())
    assert patch["P1888__512__0___0"].gsd == pytest.approx(truth["P1888"].gsd)  # not resized
    assert patch["P1888__512__0___0"].source == "GoogleEarth"

    rows = {}
    for name, ann in patch.items():
        for poly, cls in zip(ann.polygons, ann.names):
            rows.setdefault(cls, []).append((name, 1.0, poly))
    write_task1_dir(tmp_path / "patch_dets", {c: Detections([r[0] for r in v], [r[1] for r in v], [r[2] for r in v])
                                              for c, v in rows.items()})
    merge = merge_dota(tmp_path / "patch_dets", tmp_path / "merged", classes=DOTA_V2_CLASSES)
    assert merge.patch_detections == report.patch_objects and merge.image_detections == report.objects
    merged = read_task1_dir(tmp_path / "merged", DOTA_V2_CLASSES)
    assert len(list((tmp_path / "merged").glob("Task1_*.txt"))) == 18
    for image_id, ann in truth.items():
        _assert_same_objects(merged, ann, image_id)


def test_patch_pixels_and_padding(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    shutil.copy(DATA / "images" / "P1888.png", src / "images")  # no labelTxt/: unlabelled split
    config = SplitConfig(size=512, gap=100, rates=(1.5,), pad_value=(1, 2, 3))
    report = split_dota(src, tmp_path / "out", config)
    assert not (tmp_path / "out" / "labelTxt").exists() and report.objects == 0
    image = cv2.imread(str(DATA / "images" / "P1888.png"))
    resized = resize_by_rate(image, 1.5)
    assert resized.shape[:2] == (836, 1068)  # round(557 * 1.5), round(712 * 1.5)
    for (x0, y0, x1, y1) in sliding_windows(1068, 836, 512, 100).tolist():
        patch = cv2.imread(str(tmp_path / "out" / "images" / f"P1888__1.5__{x0}___{y0}.png"))
        assert patch.shape == (512, 512, 3)
        np.testing.assert_array_equal(patch, crop_window(resized, (x0, y0, x1, y1), (1, 2, 3)))
    padded = crop_window(np.zeros((3, 4, 3), np.uint8), (2, 1, 6, 5), (104, 116, 124))
    assert padded.shape == (4, 4, 3) and (padded[:2, :2] == 0).all()
    assert (padded[2:] == [104, 116, 124]).all() and (padded[:, 2:] == [104, 116, 124]).all()


def test_merge_maps_back_and_suppresses_copies_only():
    sq = lambda x0, y0, w, h: [x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]  # noqa: E731
    dets = Detections(
        ["I__1__0___0", "I__1__100___200", "I__0.5__0___0", "I__1__0___0", "I__1__0___0", "J__2__10___0"],
        [0.95, 0.9, 0.8, 0.7, 0.5, 0.6],
        [sq(100, 200, 10, 10), sq(0, 0, 10, 10), sq(50, 100, 5, 5), sq(100, 203, 10, 10),
         sq(109.5, 200, 10, 10), sq(10, 0, 20, 20)])
    image = patch_to_image(dets)
    assert image.image_ids.tolist() == ["I"] * 5 + ["J"]
    for k in range(3):  # the same object seen by two windows and at rate 0.5: (p + corner) / rate
        np.testing.assert_allclose(image.polygons[k], sq(100, 200, 10, 10))
    np.testing.assert_allclose(image.polygons[5], sq(10, 0, 10, 10))
    merged = nms_per_image(image)
    # 0.95 suppresses its copies (IoU 1) and the shifted box (IoU 70 / 130 > 0.1); the neighbour
    # sharing a 0.5 px strip (IoU 5 / 195 <= 0.1) and the other image's box survive.
    assert merged.image_ids.tolist() == ["I", "I", "J"] and merged.scores.tolist() == [0.95, 0.5, 0.6]
    with pytest.raises(ValueError, match=r"class 'ship': detection 2: image: 'P1' is not a patch name"):
        merge_detections({"ship": Detections(["P1__1__0___0", "P1"], [1, 1], np.zeros((2, 8)))})


def test_merge_dota_keeps_classes_without_detections(tmp_path):
    """A class the detector never predicted (an empty Task1 file) merges to an empty file."""
    (tmp_path / "Task1_plane.txt").write_text("P7__1__100___0 0.9 10 10 50 10 50 30 10 30\n")
    (tmp_path / "Task1_ship.txt").write_text("")
    merge_dota(tmp_path, tmp_path / "out", classes=DOTA_V2_CLASSES)
    merged = read_task1_dir(tmp_path / "out", DOTA_V2_CLASSES)
    assert len(merged["ship"]) == 0 and merged["plane"].image_ids.tolist() == ["P7"]
    np.testing.assert_allclose(merged["plane"].polygons[0], [110, 10, 150, 10, 150, 30, 110, 30])


def test_merge_dota_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no Task1_<class>.txt files"):
        merge_dota(tmp_path, tmp_path / "out")
    (tmp_path / "Task1_ship.txt").write_text("P1 0.5 0 0 1 0 1 1 0 1\n")
    with pytest.raises(AnnotationError, match=r"Task1_ship\.txt: detection 1: image: 'P1' is not a patch name"):
        merge_dota(tmp_path, tmp_path / "out")
    (tmp_path / "Task1_ship.txt").write_text("P1__1__0___0 0.5 0 0 1 0 1 1 0 1\n")
    (tmp_path / "Task1_boat.txt").write_text("")
    with pytest.raises(AnnotationError, match=r"Task1_boat\.txt: class: unknown class 'boat'"):
        merge_dota(tmp_path, tmp_path / "out", classes=DOTA_V2_CLASSES)


def test_cli_dota_split_and_merge(tmp_path, capsys):
    src = tmp_path / "src"
    synth_dota(src, images=1, seed=0, size=600)
    assert main(["dota", "split", "--src", str(src), "--out", str(tmp_path / "split"), "--size", "512",
                 "--gap", "200", "--rates", "1.0", "0.5", "--iof-thr", "0.6", "--rule", "mmrotate"]) == 0
    # 2 x 2 windows of 512 px; the 1024 px window of rate 0.5 is 34% image: dropped (img_rate_thr)
    assert "1 images -> 4 patches" in capsys.readouterr().out
    patch = load_dota_labels(tmp_path / "split" / "labelTxt")
    rows = [(name, 1.0, poly) for name, ann in patch.items() for poly, c in zip(ann.polygons, ann.names)
            if c == "plane"]
    write_task1_dir(tmp_path / "dets", {"plane": Detections(*zip(*rows)) if rows else Detections()})
    assert main(["dota", "merge", "--dets", str(tmp_path / "dets"), "--out", str(tmp_path / "merged")]) == 0
    planes = sum(n == "plane" for n in parse_dota_label(src / "labelTxt" / "P0000.txt").names)
    assert f"-> {planes} image detections" in capsys.readouterr().out
    assert main(["dota", "split", "--src", str(src), "--out", str(tmp_path / "x"), "--rates", "0"]) == 2
    assert "rates: need one or more positive numbers" in capsys.readouterr().err
