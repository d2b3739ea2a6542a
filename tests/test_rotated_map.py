"""Rotated mAP: hand-computed cases (ties, difficult objects, duplicates, empty classes, IoU exactly
at the threshold, the 11-point rule), an independent plain-Python devkit implementation with
shapely IoU on random data, Task1 files on the real DOTA/DIOR-R labels, and `rsfm eval det`."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from rsfm_ds.cli import main
from rsfm_ds.data.det.dior import DIOR_CLASSES
from rsfm_ds.data.det.dota import DOTA_V2_CLASSES, Detections, DotaAnnotation, load_dota_labels, write_task1_dir
from rsfm_ds.evaluation.rotated_map import (DEVKIT, MMROTATE, MapProtocol, average_precision, evaluate_class,
                                            evaluate_rotated_map, evaluate_task1, format_map_table, rank)
from rsfm_ds.ops.rotated import box_to_polygon

DATA = Path(__file__).parent / "data"
CLASSES = ("plane", "ship", "harbor")


def sq(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def gt_of(objects, classes=CLASSES):
    """``[(class, polygon, difficult)]`` -> DotaAnnotation."""
    return DotaAnnotation(polygons=np.array([o[1] for o in objects], dtype=np.float32).reshape(-1, 8),
                          labels=[classes.index(o[0]) for o in objects], difficult=[o[2] for o in objects],
                          classes=tuple(classes))


def dets_of(rows):
    """``[(image, score, polygon)]`` -> Detections."""
    return Detections([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows]).reshape(-1, 8))


A, B, C = sq(0, 0, 10, 10), sq(20, 0, 30, 10), sq(40, 0, 50, 10)
NOWHERE = sq(100, 100, 110, 110)


def one_class(gts, rows, protocol=DEVKIT):
    return evaluate_class(dets_of(rows), {img: (np.array(p, dtype=np.float64).reshape(-1, 8), np.array(d, bool))
                                          for img, (p, d) in gts.items()}, protocol)


def test_true_false_positives_and_duplicates_by_hand():
    gts = {"I": ([A, B, C], [0, 0, 0])}
    rows = [("I", 0.9, A), ("I", 0.8, NOWHERE), ("I", 0.7, B), ("I", 0.6, A)]  # the last duplicates A
    r = one_class(gts, rows)
    assert r.tp.tolist() == [1, 0, 1, 0] and r.fp.tolist() == [0, 1, 0, 1] and r.num_gts == 3
    np.testing.assert_allclose(r.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r.precision, [1, 1 / 2, 2 / 3, 1 / 2])
    # 11-point: t = 0 .. 0.3 reach recall 1/3 at precision 1; t = 0.4 .. 0.6 reach 2/3 at 2/3; t >= 0.7 none.
    assert r.ap == pytest.approx((4 * 1 + 3 * 2 / 3) / 11, abs=1e-12)
    area = one_class(gts, rows, MapProtocol(metric="area"))
    assert area.ap == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3, abs=1e-12)


def test_equal_scores_keep_input_order():
    gts = {"I": ([A, B], [0, 0])}
    # The FP comes first among the two detections scored 0.5: TP FP TP.
    r = one_class(gts, [("I", 0.9, A), ("I", 0.5, NOWHERE), ("I", 0.5, B)])
    assert r.tp.tolist() == [1, 0, 1]
    assert r.ap == pytest.approx((6 * 1 + 5 * 2 / 3) / 11, abs=1e-12)  # recall 0.5 at P 1, 1.0 at P 2/3
    # The TP first: TP TP FP; recall 1 at precision 1.
    r = one_class(gts, [("I", 0.9, A), ("I", 0.5, B), ("I", 0.5, NOWHERE)])
    assert r.tp.tolist() == [1, 1, 0] and r.ap == pytest.approx(1.0, abs=1e-12)
    assert rank(np.array([0.5, 0.9, 0.5, 0.9])).tolist() == [1, 3, 0, 2]
    # Two detections of the same object with equal scores: the first in the input is the TP.
    r = one_class(gts, [("I", 0.5, sq(0, 0, 10, 9)), ("I", 0.5, A)])
    assert r.tp.tolist() == [1, 0]


def test_difficult_objects_devkit_vs_mmrotate():
    gts = {"I": ([A, B], [0, 1])}  # B is difficult
    rows = [("I", 0.9, B), ("I", 0.8, NOWHERE), ("I", 0.7, A), ("I", 0.6, B)]
    devkit = one_class(gts, rows)
    # Detections of B are neither TP nor FP (both of them), npos = 1: ranks FP, TP at P 1/2.
    assert devkit.num_gts == 1 and devkit.tp.tolist() == [0, 0, 1, 0] and devkit.fp.tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(devkit.precision, [0, 0, 1 / 2, 1 / 2])
    assert devkit.ap == pytest.approx(0.5, abs=1e-12)
    mmr = one_class(gts, rows, MMROTATE)
    # B counts: npos = 2; TP FP TP FP -> recall 1/2 at P 1, recall 1 at P 2/3.
    assert mmr.num_gts == 2 and mmr.tp.tolist() == [1, 0, 1, 0]
    assert mmr.ap == pytest.approx((6 * 1 + 5 * 2 / 3) / 11, abs=1e-12)


def test_best_object_is_difficult_no_fallback():
    # The detection overlaps the difficult object more than the normal one: it is ignored, not
    # matched to the normal object (devkit: the argmax object decides).
    normal, difficult = sq(0, 0, 10, 10), sq(2, 0, 12, 10)
    r = one_class({"I": ([normal, difficult], [0, 1])}, [("I", 0.9, sq(2, 0, 12, 10))])
    assert r.tp.tolist() == [0] and r.fp.tolist() == [0] and r.ap == 0.0


def test_iou_exactly_at_threshold_devkit_vs_mmrotate():
    half = sq(0, 0, 10, 20)  # IoU with A is exactly 100 / 200 = 0.5
    gts = {"I": ([A], [0])}
    assert one_class(gts, [("I", 0.9, half)]).ap == 0.0  # devkit: IoU > 0.5
    assert one_class(gts, [("I", 0.9, half)], MMROTATE).ap == 1.0  # mmrotate: IoU >= 0.5
    assert one_class(gts, [("I", 0.9, half)], MapProtocol(inclusive=True)).ap == 1.0


def test_voc07_thresholds_are_the_devkits_floats():
    # Recall exactly 3/10 does not reach np.arange's "0.3" = 0.30000000000000004: 3 points, not 4.
    recall, precision = np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 1.0])
    assert average_precision(recall, precision, "voc07") == pytest.approx(3 / 11, abs=1e-12)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 0.5]), "voc07") == pytest.approx(
        (6 + 5 * 0.5) / 11, abs=1e-12)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 0.5]), "area") == pytest.approx(0.75)
    assert average_precision(np.array([]), np.array([]), "voc07") == 0.0
    with pytest.raises(ValueError, match="metric: expected one of voc07, area"):
        average_precision(recall, precision, "coco")
    with pytest.raises(ValueError, match="metric"):
        MapProtocol(metric="11point")
    with pytest.raises(ValueError, match="iou_thr"):
        MapProtocol(iou_thr=1.5)


def test_classes_without_objects_or_detections_and_the_mean():
    gt = {"I1": gt_of([("plane", A, 0), ("ship", B, 0)]), "I2": gt_of([("plane", C, 0), ("ship", A, 1)])}
    dets = {"plane": dets_of([("I1", 0.9, A), ("I2", 0.8, C)]),
            "harbor": dets_of([("I1", 0.5, A)])}  # harbor has no object anywhere
    result = evaluate_rotated_map(dets, gt, CLASSES)
    assert result.per_class["plane"].ap == 1.0
    assert result.per_class["ship"].ap == 0.0 and result.per_class["ship"].num_gts == 1  # no detections
    assert math.isnan(result.per_class["harbor"].ap) and result.per_class["harbor"].num_dets == 1
    assert result.mAP == 0.5  # harbor left out
    js = result.to_json()
    assert js["mAP"] == 0.5 and js["AP"] == {"plane": 1.0, "ship": 0.0, "harbor": None}
    json.dumps(js, allow_nan=False)
    table = format_map_table(result).splitlines()
    assert [line.split()[-1] for line in table if line.split()[0] in ("harbor", "mAP")] == ["n/a", "0.5000"]
    assert table[-1] == js["notes"][0] == ("AP n/a for harbor (no objects in the ground truth that count): "
                                           "mAP is the mean of the other 2 classes")
    both = evaluate_rotated_map({"plane": dets["plane"]}, gt, ("plane", "ship"))
    assert both.to_json()["notes"] == [] and "n/a" not in format_map_table(both)
    # A detection on an image with objects of other classes only is a false positive.
    fp = evaluate_rotated_map({"ship": dets_of([("I1", 0.9, C), ("I1", 0.8, B)])}, gt, CLASSES)
    assert fp.per_class["ship"].fp.tolist() == [1, 0]


def test_detections_on_unknown_images_or_classes_are_errors():
    gt = {"I1": gt_of([("plane", A, 0)])}
    with pytest.raises(ValueError, match=r"class 'plane': detections name 1 image\(s\) without ground truth, e.g. 'I9'"):
        evaluate_rotated_map({"plane": dets_of([("I9", 0.9, A)])}, gt, CLASSES)
    with pytest.raises(ValueError, match="unknown class"):
        evaluate_rotated_map({"boat": dets_of([])}, gt, CLASSES)


# ---------------------------------------------------------------- independent oracle (plain Python)

def _shapely_iou(p, q):
    a, b = Polygon(np.reshape(p, (4, 2))), Polygon(np.reshape(q, (4, 2)))
    inter = a.intersection(b).area
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def oracle_ap(rows, gts, thr, inclusive, ignore_difficult, metric):
    """The devkit's voc_eval, transcribed: a Python loop per detection, shapely IoU."""
    npos = sum(1 for objs in gts.values() for _, d in objs if not (ignore_difficult and d))
    used = {img: [False] * len(objs) for img, objs in gts.items()}
    order = sorted(range(len(rows)), key=lambda i: -rows[i][1])  # Python's sort is stable
    tp, fp = [], []
    for i in order:
        img, _, poly = rows[i]
        best, jbest = -math.inf, -1
        for j, (g, _) in enumerate(gts[img]):
            iou = _shapely_iou(poly, g)
            if iou > best:
                best, jbest = iou, j
        hit = best >= thr if inclusive else best > thr
        t = f = 0
        if not hit:
            f = 1
        elif ignore_difficult and gts[img][jbest][1]:
            pass
        elif not used[img][jbest]:
            used[img][jbest] = True
            t = 1
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    if npos == 0:
        return math.nan
    ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    rec = ctp / npos
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    if metric == "voc07":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ap += (np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _random_problem(seed):
    rng = np.random.default_rng(seed)
    gts, gt_rows = {}, {}
    det_rows = {c: [] for c in CLASSES}
    for k in range(6):
        img = f"I{k}"
        n = int(rng.integers(0, 9))
        boxes = np.stack([rng.uniform(20, 200, n), rng.uniform(20, 200, n), rng.uniform(8, 40, n),
                          rng.uniform(8, 40, n), rng.uniform(-np.pi, np.pi, n)], axis=1)
        polys = box_to_polygon(torch.from_numpy(boxes)).numpy()
        labels = rng.integers(0, len(CLASSES), n)
        difficult = rng.random(n) < 0.2
        gts[img] = DotaAnnotation(polys, labels, difficult.astype(int), classes=CLASSES)
        for box, label in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 (a duplicate) detections per object
                noisy = box + rng.normal(0, [2, 2, 3, 3, 0.15])
                noisy[2:4] = np.abs(noisy[2:4]) + 1
                poly = box_to_polygon(torch.from_numpy(noisy)).numpy()
                det_rows[CLASSES[label]].append((img, float(np.round(rng.random(), 1)), poly))
        for _ in range(int(rng.integers(0, 4))):  # false positives anywhere
            box = np.array([rng.uniform(20, 200), rng.uniform(20, 200), rng.uniform(8, 40), rng.uniform(8, 40),
                            rng.uniform(-np.pi, np.pi)])
            label = CLASSES[int(rng.integers(len(CLASSES)))]
            det_rows[label].append((img, float(np.round(rng.random(), 1)), box_to_polygon(torch.from_numpy(box)).numpy()))
    for c, name in enumerate(CLASSES):
        gt_rows[name] = {img: [(p, bool(d)) for p, l, d in zip(a.polygons.astype(np.float64), a.labels, a.difficult)
                               if l == c] for img, a in gts.items()}
    return gts, gt_rows, det_rows


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("protocol", [DEVKIT, MMROTATE, MapProtocol(metric="area"),
                                      MapProtocol(iou_thr=0.3), MapProtocol(iou_thr=0.7, inclusive=True)])
def test_matches_a_plain_python_devkit_with_shapely(seed, protocol):
    gts, gt_rows, det_rows = _random_problem(seed)
    result = evaluate_rotated_map({c: dets_of(r) for c, r in det_rows.items()}, gts, CLASSES, protocol)
    for name in CLASSES:
        expected = oracle_ap(det_rows[name], gt_rows[name], protocol.iou_thr, protocol.inclusive,
                             protocol.ignore_difficult, protocol.metric)
        got = result.per_class[name].ap
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12), name


# ---------------------------------------------------------------- files and the command line

def test_real_dota_ground_truth_as_detections_scores_one(tmp_path):
    labels = load_dota_labels(DATA / "dota" / "labelTxt")
    rows = {c: [] for c in DOTA_V2_CLASSES}
    for img, ann in labels.items():
        for poly, name in zip(ann.polygons, ann.names):
            rows[name].append((img, 1.0, poly))
    write_task1_dir(tmp_path / "dets", {c: dets_of(r) for c, r in rows.items()}, DOTA_V2_CLASSES)
    result = evaluate_task1(tmp_path / "dets", DATA / "dota", "dota2")
    with_objects = {c for a in labels.values() for c in a.names}
    assert {c for c, r in result.per_class.items() if not math.isnan(r.ap)} == with_objects
    assert all(result.per_class[c].ap == 1.0 for c in with_objects) and result.mAP == 1.0
    ships = [(n == "ship", d) for a in labels.values() for n, d in zip(a.names, a.is_difficult)]
    assert result.per_class["ship"].num_gts == sum(s and not d for s, d in ships) < sum(s for s, _ in ships)
    # Dropping one image from the detections lowers recall; restricting the evaluation to the
    # images that remain restores AP 1.
    only = {c: dets_of([r for r in rs if r[0] != "P1234"]) for c, rs in rows.items()}
    write_task1_dir(tmp_path / "dets", only, DOTA_V2_CLASSES)
    assert evaluate_task1(tmp_path / "dets", DATA / "dota" / "labelTxt").per_class["storage-tank"].ap < 1
    rest = [i for i in labels if i != "P1234"]
    assert evaluate_task1(tmp_path / "dets", DATA / "dota" / "labelTxt", image_ids=rest).mAP == 1.0


def test_cli_eval_det_dota_and_dior(tmp_path, capsys):
    dets = tmp_path / "dets"
    write_task1_dir(dets, {"ship": dets_of([("P1888", 0.9, sq(0, 0, 5, 5))]),
                           "large-vehicle": dets_of([("P1888", 0.8, [465, 371, 455, 372, 451, 324, 460, 323])])})
    out = tmp_path / "map.json"
    assert main(["eval", "det", "--dets", str(dets), "--labels", str(DATA / "dota" / "labelTxt"),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "large-vehicle" in printed and "mAP" in printed and "IoU > 0.5, difficult ignored, voc07 AP" in printed
    js = json.loads(out.read_text())
    assert set(js) >= {"mAP", "AP"} and js["AP"]["large-vehicle"] == pytest.approx(1 / 11)  # recall 1/63
    assert js["AP"]["helipad"] is None

    assert main(["eval", "det", "--dets", str(dets), "--labels", str(DATA / "dota"), "--mmrotate",
                 "--metric", "area"]) == 0
    assert "IoU >= 0.5, difficult counted, area AP" in capsys.readouterr().out

    dior = tmp_path / "dior_dets"
    write_task1_dir(dior, {"golffield": dets_of([("00001", 0.7, [133, 237, 684, 237, 684, 672, 133, 672])])},
                    DIOR_CLASSES)
    out = tmp_path / "dior.json"
    images = DATA / "dior" / "ImageSets" / "Main" / "trainval.txt"
    assert main(["eval", "det", "--dets", str(dior), "--labels", str(DATA / "dior"), "--dataset", "dior",
                 "--images", str(images), "--json", str(out)]) == 0
    js = json.loads(out.read_text())
    assert js["mAP"] == 1.0 and js["AP"]["golffield"] == 1.0 and len(js["AP"]) == 20

    assert main(["eval", "det", "--dets", str(dior), "--labels", str(DATA / "dota" / "labelTxt")]) == 2
    assert "Task1_airplane.txt: class: unknown class 'airplane'" in capsys.readouterr().err
