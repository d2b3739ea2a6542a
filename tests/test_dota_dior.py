"""DOTA and DIOR-R readers on the real sample files (tests/data, see its README), the Task1 result
format, malformed input, and the synthetic generators writing the real formats."""
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from rsfm_ds.data.det.dior import (CORNER_TAGS, DIOR_CLASSES, annotation_dir, image_path, load_dior_annotations,
                                   normalize_dior_name, parse_dior_xml, read_image_set)
from rsfm_ds.data.det.dota import (DOTA_V1_CLASSES, DOTA_V2_CLASSES, AnnotationError, Detections,
                                   DotaAnnotation, dota_classes, format_dota_label, load_dota_labels,
                                   parse_dota_label, parse_dota_lines, read_task1_dir, read_task1_file,
                                   write_task1_dir)
from rsfm_ds.data.synth.detection import DIOR_NAMES, KINDS, synth_dior, synth_dota
from rsfm_ds.errors import DataError

DATA = Path(__file__).parent / "data"
DOTA_LABELS = DATA / "dota" / "labelTxt"
DIOR_ROOT = DATA / "dior"

# Objects, difficult objects, imagesource, gsd of the seven real label files.
REAL_DOTA = {
    "P0706": (536, 6, "GoogleEarth", 0.255589285596),
    "P0770": (22, 0, "GoogleEarth", 0.266578848023),
    "P1088": (34, 0, "GoogleEarth", 0.1377814038),
    "P1234": (144, 44, "GF", 1.0),
    "P1888": (64, 0, "GoogleEarth", 0.266170468393),
    "P2598": (26, 0, "GoogleEarth", 0.113068841441),
    "P2709": (158, 17, "GoogleEarth", 0.283767057345),
}


def test_dota_class_lists_follow_the_releases():
    assert dota_classes("dota2") == DOTA_V2_CLASSES
    assert len(dota_classes("dota1")) == 15 and len(dota_classes("dota1.5")) == 16 and len(DOTA_V2_CLASSES) == 18
    assert DOTA_V2_CLASSES == (
        "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
        "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
        "swimming-pool", "helicopter", "container-crane", "airport", "helipad")
    with pytest.raises(ValueError, match="dataset: unknown DOTA version 'dota3'"):
        dota_classes("dota3")


def test_real_dota_labels_counts_headers_and_difficult_flags():
    labels = load_dota_labels(DOTA_LABELS)
    assert list(labels) == sorted(REAL_DOTA)
    for image_id, (n, n_difficult, source, gsd) in REAL_DOTA.items():
        ann = labels[image_id]
        assert len(ann) == n and int(ann.is_difficult.sum()) == n_difficult, image_id
        assert ann.source == source and ann.gsd == pytest.approx(gsd, abs=0), image_id
        assert ann.polygons.shape == (n, 8) and ann.polygons.dtype == np.float32
        assert ann.skipped == 0
    p0706 = labels["P0706"]
    assert Counter(p0706.names) == {"ship": 531, "harbor": 5}
    # First line of P0706.txt (CRLF): "1054 1028 1063 1011 1111 1040 1112 1062 ship 1".
    np.testing.assert_array_equal(p0706.polygons[0], [1054, 1028, 1063, 1011, 1111, 1040, 1112, 1062])
    assert p0706.names[0] == "ship" and p0706.difficult[0] == 1
    assert Counter(labels["P1888"].names) == {"large-vehicle": 50, "small-vehicle": 14}


def test_real_dota_labels_are_dota_v1_classes():
    labels = load_dota_labels(DOTA_LABELS, DOTA_V1_CLASSES)
    assert sum(len(a) for a in labels.values()) == sum(v[0] for v in REAL_DOTA.values())


def test_missing_difficult_flag_and_headers_default():
    ann = parse_dota_lines(["1 2 3 4 5 6 7 8 plane", "", "1 2 3 4 5 6 7 8 ship 2"], "x.txt")
    np.testing.assert_array_equal(ann.difficult, [0, 2])
    assert ann.source is None and ann.gsd is None
    assert ann.is_difficult.tolist() == [False, True]
    ann = parse_dota_lines(["imagesource:GF", "gsd:null", "1.5 2 3 4 5 6 7 8 plane 0"], "x.txt")
    assert ann.gsd is None and ann.source == "GF" and ann.polygons[0, 0] == 1.5


@pytest.mark.parametrize("line, message", [
    ("1 2 3 4 5 6 7 plane", r"bad\.txt:3: expected 9 or 10 fields .* got 8"),
    ("1 2 3 4 5 6 7 8 plane 0 extra", r"bad\.txt:3: expected 9 or 10 fields .* got 11"),
    ("1 2 3 x 5 6 7 8 plane 0", r"bad\.txt:3: y2: not a finite number: 'x'"),
    ("1 2 3 4 5 nan 7 8 plane 0", r"bad\.txt:3: y3: not a finite number: 'nan'"),
    ("1 2 3 4 5 6 7 8 plane hard", r"bad\.txt:3: difficult: expected a non-negative integer, got 'hard'"),
    ("1 2 3 4 5 6 7 8 plane -1", r"bad\.txt:3: difficult: expected a non-negative integer"),
    ("gsd:0.3", r"bad\.txt:3: gsd: header line after the first object"),
])
def test_malformed_dota_line_names_file_line_and_field(line, message):
    lines = ["imagesource:GoogleEarth", "1 2 3 4 5 6 7 8 plane 0", line]
    with pytest.raises(AnnotationError, match=message):
        parse_dota_lines(lines, "bad.txt")
    lenient = parse_dota_lines(lines, "bad.txt", lenient=True)
    assert len(lenient) == 1 and lenient.skipped == 1


def test_bad_headers_and_unknown_class_are_errors_even_when_lenient(tmp_path):
    with pytest.raises(AnnotationError, match=r"h\.txt:1: gsd: not a number: 'abc'"):
        parse_dota_lines(["gsd:abc"], "h.txt")
    with pytest.raises(AnnotationError, match=r"h\.txt:2: imagesource: header line repeated"):
        parse_dota_lines(["imagesource:a", "imagesource:b"], "h.txt")
    path = tmp_path / "P9.txt"
    path.write_text("imagesource:GF\ngsd:1\n1 2 3 4 5 6 7 8 plane 0\n1 2 3 4 5 6 7 8 airplane 0\n")
    with pytest.raises(AnnotationError, match=rf"{path}:4: class: unknown class 'airplane'"):
        parse_dota_label(path, lenient=True)
    with pytest.raises(AnnotationError, match=r"class: unknown class 'helipad'"):
        parse_dota_lines(["1 2 3 4 5 6 7 8 helipad 0"], "v1.txt", DOTA_V1_CLASSES)
    path.write_bytes(b"1 2 3 4 5 6 7 8 plane \xff\n")
    with pytest.raises(AnnotationError, match=rf"{path}: not UTF-8 text"):
        parse_dota_label(path)
    with pytest.raises(DataError, match="expected DOTA labelTxt files"):
        load_dota_labels(tmp_path / "nope")


def test_dota_label_write_parse_round_trip(tmp_path):
    ann = parse_dota_label(DOTA_LABELS / "P1234.txt")
    again = parse_dota_lines(format_dota_label(ann).splitlines(), "round-trip")
    np.testing.assert_array_equal(again.polygons, ann.polygons)
    np.testing.assert_array_equal(again.labels, ann.labels)
    np.testing.assert_array_equal(again.difficult, ann.difficult)
    assert (again.source, again.gsd) == (ann.source, ann.gsd)
    frac = DotaAnnotation(polygons=[[0.25, 1, 2, 3, 4, 5, 6, 7.125]], labels=[0], difficult=[0])
    assert format_dota_label(frac) == "0.25 1 2 3 4 5 6 7.125 plane 0\n"


def test_task1_files_round_trip_and_errors(tmp_path):
    dets = Detections(["P1", "P2", "P1"], [0.9, 0.123456789012345, 1e-7],
                      [[0, 0, 10, 0, 10, 10, 0, 10], [1.5, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9, 9, 9, 9, 9]])
    write_task1_dir(tmp_path, {"plane": dets}, classes=["plane", "ship"])
    assert (tmp_path / "Task1_ship.txt").read_text() == ""
    back = read_task1_dir(tmp_path, DOTA_V2_CLASSES)
    assert len(back["plane"]) == 3 and len(back["ship"]) == 0 and len(back["helipad"]) == 0
    np.testing.assert_array_equal(back["plane"].scores, dets.scores)  # full precision
    np.testing.assert_array_equal(back["plane"].polygons, dets.polygons)
    assert back["plane"].image_ids.tolist() == ["P1", "P2", "P1"]

    (tmp_path / "Task1_ship.txt").write_text("P1 0.5 0 0 1 0 1 1 0 1\n\nP2 0.5 0 0 1 0 1 1 0\n")
    with pytest.raises(AnnotationError, match=r"Task1_ship\.txt:3: expected 10 fields .* got 9"):
        read_task1_file(tmp_path / "Task1_ship.txt")
    (tmp_path / "Task1_ship.txt").write_text("P1 high 0 0 1 0 1 1 0 1\n")
    with pytest.raises(AnnotationError, match=r"Task1_ship\.txt:1: score: not a finite number: 'high'"):
        read_task1_file(tmp_path / "Task1_ship.txt")
    (tmp_path / "Task1_ship.txt").write_text("")
    (tmp_path / "Task1_boat.txt").write_text("")
    with pytest.raises(AnnotationError, match=r"Task1_boat\.txt: class: unknown class 'boat'"):
        read_task1_dir(tmp_path, DOTA_V2_CLASSES)


def test_real_dior_xml():
    ann = parse_dior_xml(DIOR_ROOT / "Annotations" / "Oriented Bounding Boxes" / "00001.xml")
    assert len(ann) == 1 and ann.names == ["golffield"]
    np.testing.assert_array_equal(ann.polygons, [[133, 237, 684, 237, 684, 672, 133, 672]])
    assert ann.difficult.tolist() == [0] and ann.angles.tolist() == [0.0]
    assert (ann.width, ann.height, ann.filename) == (800, 800, "00001.jpg")
    assert read_image_set(DIOR_ROOT, "trainval") == ["00001"]
    image = cv2.imread(str(image_path(DIOR_ROOT, "00001", "trainval")))
    assert image.shape == (800, 800, 3)
    for path in (DIOR_ROOT, DIOR_ROOT / "Annotations", DIOR_ROOT / "Annotations" / "Oriented Bounding Boxes"):
        assert list(load_dior_annotations(path)) == ["00001"]
    assert list(load_dior_annotations(DIOR_ROOT, read_image_set(DIOR_ROOT, "trainval"))) == ["00001"]


@pytest.mark.parametrize("name, canonical", [
    ("Expressway-Service-area", "expressway-service-area"), ("expresswayservicearea", "expressway-service-area"),
    ("Expressway-toll-station", "expressway-toll-station"), ("GroundTrackField", "groundtrackfield"),
    ("ground-track-field", "groundtrackfield"), ("storage_tank", "storagetank"), ("airplane", "airplane"),
    ("Train Station", "trainstation"), ("plane", None), ("", None),
])
def test_dior_names_are_normalised(name, canonical):
    assert normalize_dior_name(name) == canonical
    assert canonical is None or canonical in DIOR_CLASSES


_BOX = "<robndbox>" + "".join(f"<{t}>1</{t}>" for t in CORNER_TAGS) + "</robndbox>"


def _dior_xml(obj: str) -> str:
    return f"""<?xml version="1.0"?>
<annotation>
  <size><width>800</width><height>800</height></size>
  <object>
    <name>ship</name><difficult>1</difficult>
    <robndbox><x_left_top>1</x_left_top><y_left_top>2</y_left_top><x_right_top>3</x_right_top>
    <y_right_top>4</y_right_top><x_right_bottom>5</x_right_bottom><y_right_bottom>6</y_right_bottom>
    <x_left_bottom>7</x_left_bottom><y_left_bottom>8</y_left_bottom></robndbox>
  </object>
{obj}
</annotation>
"""


@pytest.mark.parametrize("obj, message", [
    ("<object><name>Boat</name></object>", r":10: object 2: name: unknown class 'Boat'"),
    ("<object><difficult>0</difficult></object>", r":10: object 2: name: missing"),
    ("<object><name>vehicle</name></object>", r":10: object 2: robndbox: missing"),
    ("<object>\n<name>vehicle</name>\n<robndbox><x_left_top>1</x_left_top></robndbox></object>",
     r":12: object 2: robndbox/y_left_top: missing"),
    ("<object><name>vehicle</name><robndbox>\n<x_left_top>1</x_left_top><y_left_top>a</y_left_top>"
     "</robndbox></object>", r":11: object 2: robndbox/y_left_top: not a finite number: 'a'"),
    ("<object><name>vehicle</name><difficult>yes</difficult></object>".replace("</name>", "</name>" + _BOX),
     r":10: object 2: difficult: expected a non-negative integer, got 'yes'"),
    ("<object><name>ship</name>", r":11: not well-formed XML \(mismatched tag\)"),
])
def test_malformed_dior_xml_names_file_line_object_and_tag(tmp_path, obj, message):
    path = tmp_path / "00002.xml"
    path.write_text(_dior_xml(obj))
    with pytest.raises(AnnotationError, match=str(path).replace(".", r"\.") + message):
        parse_dior_xml(path)


def test_dior_xml_without_optional_tags(tmp_path):
    path = tmp_path / "00003.xml"
    path.write_text(_dior_xml("").replace("<difficult>1</difficult>", "").replace(
        "<size><width>800</width><height>800</height></size>", ""))
    ann = parse_dior_xml(path)
    assert ann.difficult.tolist() == [0] and np.isnan(ann.angles[0]) and ann.width is None
    (tmp_path / "00004.xml").write_text("<dataset/>")
    with pytest.raises(AnnotationError, match=r"00004\.xml:1: root element is <dataset>"):
        parse_dior_xml(tmp_path / "00004.xml")


def test_dior_image_sets(tmp_path):
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("00001\n00003\n")
    (main / "val.txt").write_text("00002\n\n")
    assert read_image_set(tmp_path, "trainval") == ["00001", "00003", "00002"]
    assert image_path(tmp_path, "11726", "test") == tmp_path / "JPEGImages-test" / "11726.jpg"
    with pytest.raises(DataError, match="test.txt: no such image-set file"):
        read_image_set(tmp_path, "test")
    with pytest.raises(ValueError, match="split: expected one of"):
        read_image_set(tmp_path, "training")


def test_synth_dota_writes_the_real_format(tmp_path):
    report = synth_dota(tmp_path, images=3, seed=5, size=512, first_id=7)
    labels = load_dota_labels(tmp_path / "labelTxt")
    assert list(labels) == ["P0007", "P0008", "P0009"] and report.images == 3
    objects = sum(len(a) for a in labels.values())
    assert objects == report.objects > 10
    for image_id, ann in labels.items():
        image = cv2.imread(str(tmp_path / "images" / f"{image_id}.png"))
        assert image.shape == (512, 512, 3)
        assert ann.source == "rsfm-synth" and ann.gsd == 0.3
        assert set(ann.names) <= set(KINDS)
        assert ann.polygons.min() >= 0 and ann.polygons.max() <= 512
        sides = np.linalg.norm(np.diff(ann.polygons.reshape(-1, 4, 2)[:, :3], axis=1), axis=-1)
        assert sides.min() >= 16  # detectable: short side >= 16 px
    again = tmp_path / "again"
    synth_dota(again, images=1, seed=5, size=512, first_id=8)
    assert (again / "labelTxt" / "P0008.txt").read_text() == (tmp_path / "labelTxt" / "P0008.txt").read_text()


def test_synth_dior_writes_the_real_format(tmp_path):
    report = synth_dior(tmp_path, images=5, seed=1, size=320)
    sets = {s: read_image_set(tmp_path, s) for s in ("train", "val", "test")}
    # round(0.2 * 5) = 1 test image (the last id, as the release numbers test last) and 1 val image.
    assert sets["test"] == ["00005"] and len(sets["val"]) == 1 and len(sets["train"]) == 3
    assert sorted(sets["train"] + sets["val"]) == ["00001", "00002", "00003", "00004"]
    anns = load_dior_annotations(tmp_path)
    assert sum(len(a) for a in anns.values()) == report.objects
    assert {n for a in anns.values() for n in a.names} <= set(DIOR_NAMES.values())
    assert sum(int(a.difficult.sum()) for a in anns.values()) == report.difficult
    for split, ids in sets.items():
        for image_id in ids:
            image = cv2.imread(str(image_path(tmp_path, image_id, split)))
            assert image.shape == (320, 320, 3)
    assert annotation_dir(tmp_path) == tmp_path / "Annotations" / "Oriented Bounding Boxes"
