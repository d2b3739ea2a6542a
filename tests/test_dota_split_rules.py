"""The two DOTA split rules against their references, on the real DOTA label files.

The oracles below are the reference programs' label logic written out plainly, one object and one
window at a time with shapely, as the references do:
- ``devkit_oracle``: the DOTA devkit's ``ImgSplit_multi_process.py`` (``SplitSingle``,
  ``savepatches``, ``GetPoly4FromPoly5``, ``choose_best_pointorder_fit_another``,
  ``polyorig2sub``) with ``parse_dota_poly2``'s integer truncation;
- ``mmrotate_oracle``: mmrotate 0.x ``tools/data/dota/split/img_split.py``
  (``get_sliding_window``, ``bbox_overlaps_iof``, ``get_window_obj``, ``crop_and_save_img``).
Where a reference would stop with an error (a self-intersecting label, a cut that is not one
polygon) the oracle skips the object, as the implementation documents.
"""
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
import shapely.geometry as shgeo
from shapely.geometry.polygon import orient

from rsfm_ds.cli import main
from rsfm_ds.data.det.dota import (DOTA_V2_CLASSES, Detections, DotaAnnotation, load_dota_labels, parse_dota_label,
                                   read_task1_dir, write_task1_dir)
from rsfm_ds.data.det.merge import merge_detections
from rsfm_ds.data.det.split import SplitConfig, parse_patch_name, plan_windows, split_annotation, split_dota
from rsfm_ds.data.det.split_rules import devkit_window_objects, mmrotate_window_objects

DATA = Path(__file__).parent / "data" / "dota"
LABELS = sorted(p.stem for p in (DATA / "labelTxt").glob("*.txt"))
IMAGE_SIZES = {"P0706": (1111, 1182), "P1888": (712, 557)}


def image_size(image_id):
    """The real size for the two images we have; else the objects' extent, so that objects touch
    and cross the image border."""
    if image_id in IMAGE_SIZES:
        return IMAGE_SIZES[image_id]
    polys = parse_dota_label(DATA / "labelTxt" / f"{image_id}.txt").polygons
    return int(polys[:, 0::2].max()) - 10, int(polys[:, 1::2].max()) - 10


def cv2_size(width, height, rate):
    """What cv2.resize(fx=fy=rate) makes of a width x height image (computed by OpenCV)."""
    if rate == 1:
        return width, height
    out = cv2.resize(np.zeros((height, width), np.uint8), None, fx=rate, fy=rate, interpolation=cv2.INTER_CUBIC)
    return out.shape[1], out.shape[0]


def file_objects(image_id):
    """``(poly [8 floats], class, difficult string)`` per object, as the file has them."""
    ann = parse_dota_label(DATA / "labelTxt" / f"{image_id}.txt")
    return [(list(map(float, p)), n, str(d)) for p, n, d in zip(ann.polygons, ann.names, ann.difficult)]


# ---- the DOTA devkit, transcribed ------------------------------------------------------------

def _line_length(p1, p2):
    return math.sqrt(math.pow(p1[0] - p2[0], 2) + math.pow(p1[1] - p2[1], 2))


def _poly5_to_poly4(poly):
    distances = [_line_length((poly[i * 2], poly[i * 2 + 1]), (poly[(i + 1) * 2], poly[(i + 1) * 2 + 1]))
                 for i in range(int(len(poly) / 2 - 1))]
    distances.append(_line_length((poly[0], poly[1]), (poly[8], poly[9])))
    pos = np.array(distances).argsort()[0]
    count, outpoly = 0, []
    while count < 5:
        if count == pos:
            outpoly.append((poly[count * 2] + poly[(count * 2 + 2) % 10]) / 2)
            outpoly.append((poly[(count * 2 + 1) % 10] + poly[(count * 2 + 3) % 10]) / 2)
            count += 1
        elif count == (pos + 1) % 5:
            count += 1
        else:
            outpoly.append(poly[count * 2])
            outpoly.append(poly[count * 2 + 1])
            count += 1
    return outpoly


def _best_point_order(poly1, poly2):
    x1, y1, x2, y2, x3, y3, x4, y4 = poly1
    combinate = [np.array([x1, y1, x2, y2, x3, y3, x4, y4]), np.array([x2, y2, x3, y3, x4, y4, x1, y1]),
                 np.array([x3, y3, x4, y4, x1, y1, x2, y2]), np.array([x4, y4, x1, y1, x2, y2, x3, y3])]
    distances = np.array([np.sum((coord - np.array(poly2)) ** 2) for coord in combinate])
    return combinate[distances.argsort()[0]]


def _orig2sub(left, up, poly):
    out = np.zeros(len(poly))
    for i in range(len(poly) // 2):
        out[i * 2] = int(poly[i * 2] - left)
        out[i * 2 + 1] = int(poly[i * 2 + 1] - up)
    return out


def devkit_savepatches(objects, left, up, right, down, subsize, thresh):
    imgpoly = shgeo.Polygon([(left, up), (right, up), (right, down), (left, down)])
    lines = []
    for obj in objects:
        p = obj["poly"]
        gtpoly = shgeo.Polygon([(p[0], p[1]), (p[2], p[3]), (p[4], p[5]), (p[6], p[7])])
        if gtpoly.area <= 0 or not gtpoly.is_valid:  # the devkit would stop on an invalid polygon
            continue
        inter_poly = gtpoly.intersection(imgpoly)
        half_iou = inter_poly.area / gtpoly.area
        if half_iou == 1:
            lines.append((list(_orig2sub(left, up, p)), obj["name"], obj["difficult"]))
        elif half_iou > 0:
            if inter_poly.geom_type != "Polygon":  # the devkit would stop (no .exterior)
                continue
            inter_poly = orient(inter_poly, sign=1)
            out_poly = list(inter_poly.exterior.coords)[0:-1]
            if len(out_poly) < 4:
                continue
            out_poly2 = [c for xy in out_poly for c in xy]
            if len(out_poly) == 5:
                out_poly2 = _poly5_to_poly4(out_poly2)
            elif len(out_poly) > 5:
                continue
            out_poly2 = _best_point_order(out_poly2, p)
            sub = _orig2sub(left, up, out_poly2)
            for index, item in enumerate(sub):
                if item <= 1:
                    sub[index] = 1
                elif item >= subsize:
                    sub[index] = subsize
            lines.append((list(sub), obj["name"], obj["difficult"] if half_iou > thresh else "2"))
    return lines


def devkit_oracle(name, objects, width, height, rate, subsize, gap, thresh=0.7):
    """``{patch name: [(poly, class, difficult)]}`` for one rate; width/height of the resized image."""
    objects = [dict(poly=[rate * v for v in map(int, p)], name=n, difficult=d) for p, n, d in objects]
    slide, out, left = subsize - gap, {}, 0
    base = f"{name}__{np.format_float_positional(rate, trim='-')}__"
    while left < width:
        if left + subsize >= width:
            left = max(width - subsize, 0)
        up = 0
        while up < height:
            if up + subsize >= height:
                up = max(height - subsize, 0)
            right, down = min(left + subsize, width - 1), min(up + subsize, height - 1)
            out[base + str(left) + "___" + str(up)] = devkit_savepatches(objects, left, up, right, down,
                                                                          subsize, thresh)
            if up + subsize >= height:
                break
            up += slide
        if left + subsize >= width:
            break
        left += slide
    return out


# ---- mmrotate, transcribed ------------------------------------------------------------------

def mmrotate_windows(width, height, sizes, gaps, img_rate_thr):
    windows = []
    for size, gap in zip(sizes, gaps):
        step = size - gap
        x_num = 1 if width <= size else math.ceil((width - size) / step + 1)
        x_start = [step * i for i in range(x_num)]
        if len(x_start) > 1 and x_start[-1] + size > width:
            x_start[-1] = width - size
        y_num = 1 if height <= size else math.ceil((height - size) / step + 1)
        y_start = [step * i for i in range(y_num)]
        if len(y_start) > 1 and y_start[-1] + size > height:
            y_start[-1] = height - size
        start = np.array([(x, y) for x in x_start for y in y_start], dtype=np.int64)
        windows.append(np.concatenate([start, start + size], axis=1))
    windows = np.concatenate(windows, axis=0)
    img_in_wins = windows.copy()
    img_in_wins[:, 0::2] = np.clip(img_in_wins[:, 0::2], 0, width)
    img_in_wins[:, 1::2] = np.clip(img_in_wins[:, 1::2], 0, height)
    img_areas = (img_in_wins[:, 2] - img_in_wins[:, 0]) * (img_in_wins[:, 3] - img_in_wins[:, 1])
    win_areas = (windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1])
    img_rates = img_areas / win_areas
    if not (img_rates > img_rate_thr).any():
        img_rates[abs(img_rates - img_rates.max()) < 0.01] = 1
    return windows[img_rates > img_rate_thr]


def mmrotate_oracle(name, objects, width, height, rates, size, gap, iof_thr=0.7, img_rate_thr=0.6):
    sizes = [int(size / r) for r in rates]
    gaps = [int(gap / r) for r in rates]
    windows = mmrotate_windows(width, height, sizes, gaps, img_rate_thr)
    bboxes = np.array([p for p, _, _ in objects], dtype=np.float32).reshape(-1, 8)
    polys = [shgeo.Polygon(p) for p in bboxes.reshape(-1, 4, 2)]
    unions = np.clip(np.array([p.area for p in polys], dtype=np.float32), 1e-6, np.inf)
    out = {}
    for x0, y0, x1, y1 in windows.tolist():
        win = shgeo.Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        lines = []
        for j, poly in enumerate(polys):
            xs, ys = bboxes[j, 0::2], bboxes[j, 1::2]
            if not (min(x1, xs.max()) > max(x0, xs.min()) and min(y1, ys.max()) > max(y0, ys.min())):
                continue  # no positive horizontal-box overlap: mmrotate never intersects the pair
            if not poly.is_valid:  # mmrotate would stop on an invalid polygon
                continue
            iof = poly.intersection(win).area / unions[j]
            if iof >= iof_thr:
                moved = bboxes[j] + np.array([-x0, -y0] * 4, dtype=np.float32)
                lines.append((list(moved), objects[j][1], objects[j][2] if iof >= 1 else "2"))
        out[f"{name}__{x1 - x0}__{x0}___{y0}"] = lines
    return out


# ---- comparison ------------------------------------------------------------------------------

def ours(image_id, width, height, config):
    ann = parse_dota_label(DATA / "labelTxt" / f"{image_id}.txt")
    out = {}
    for p in split_annotation(ann, image_id, width, height, config):
        out[p.name] = [(list(poly), n, str(d)) for poly, n, d in
                       zip(p.annotation.polygons, p.annotation.names, p.annotation.difficult)]
    return out


def assert_same_labels(got, want):
    assert list(got) == list(want)  # the same patches, in the same order
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for (gp, gc, gd), (wp, wc, wd) in zip(got[name], want[name]):
            np.testing.assert_allclose(gp, wp, rtol=0, atol=1e-6, err_msg=name)
            assert (gc, gd) == (wc, wd), name


CONFIGS = [dict(size=1024, gap=200, rates=(1.0,)),  # single scale
           dict(size=1024, gap=500, rates=(0.5, 1.0, 1.5)),  # the DOTA v2.0 multi-scale recipe
           dict(size=256, gap=64, rates=(1.0, 0.5))]  # small windows: many cut objects


@pytest.mark.parametrize("image_id", LABELS)
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_devkit_rule_equals_the_devkit(image_id, kwargs):
    width, height = image_size(image_id)
    objects = file_objects(image_id)
    want = {}
    for rate in kwargs["rates"]:
        want.update(devkit_oracle(image_id, objects, *cv2_size(width, height, rate), rate, kwargs["size"],
                                  kwargs["gap"]))
    got = ours(image_id, width, height, SplitConfig(rule="devkit", **kwargs))
    assert_same_labels(got, want)


@pytest.mark.parametrize("image_id", LABELS)
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_mmrotate_rule_equals_mmrotate(image_id, kwargs):
    width, height = image_size(image_id)
    want = mmrotate_oracle(image_id, file_objects(image_id), width, height, kwargs["rates"], kwargs["size"],
                           kwargs["gap"])
    got = ours(image_id, width, height, SplitConfig(rule="mmrotate", **kwargs))
    assert_same_labels(got, want)


def test_the_real_data_exercises_every_devkit_branch():
    """The comparisons above cover whole, kept, difficulty-2, 5-point and unwritten cuts."""
    counts = {"whole": 0, "kept": 0, "two": 0, "five": 0, "dropped": 0}
    for image_id in LABELS:
        width, height = image_size(image_id)
        for obj in file_objects(image_id):
            p = [float(int(v)) for v in obj[0]]
            gt = shgeo.Polygon(np.reshape(p, (4, 2)))
            for x0, y0 in [(x, y) for x in range(0, width, 192) for y in range(0, height, 192)]:
                rect = shgeo.Polygon([(x0, y0), (x0 + 256, y0), (x0 + 256, y0 + 256), (x0, y0 + 256)])
                if not gt.is_valid or gt.area == 0:
                    continue
                inter = gt.intersection(rect)
                iof = inter.area / gt.area
                n = len(inter.exterior.coords) - 1 if inter.geom_type == "Polygon" and iof > 0 else 0
                counts["whole"] += iof == 1
                counts["kept"] += 0.7 < iof < 1 and n == 4
                counts["two"] += 0 < iof <= 0.7 and n == 4
                counts["five"] += 0 < iof < 1 and n == 5
                counts["dropped"] += 0 < iof < 1 and n not in (4, 5)
    assert min(counts.values()) >= 5, counts


# ---- hand-checked cases ----------------------------------------------------------------------

def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


WINDOW = np.array([[0, 0, 100, 100]])
# (polygon, devkit (written polygon, difficulty) or None, mmrotate (difficulty) or None); every object
# has difficulty 1 in the file so that "kept" and "2" differ. Window [0, 100]^2 of a 1000 x 1000 image.
HAND = [
    # whole inside: written unchanged by both
    (rect(10, 10, 30, 30), (rect(10, 10, 30, 30), 1), 1),
    # whole, touching the window's inner border at 0 and 100: not clamped (whole objects never are)
    (rect(0, 80, 20, 100), (rect(0, 80, 20, 100), 1), 1),
    # 28 px wide, 20 inside: IoF 20/28 = 0.714 > 0.7: devkit clips and keeps the flag; mmrotate writes
    # it whole with 2 (truncated)
    (rect(80, 10, 108, 20), (rect(80, 10, 100, 20), 1), 2),
    # 30 px wide, 21 inside: IoF exactly 0.7: devkit's "> 0.7" fails (2); mmrotate's ">= 0.7" writes it
    (rect(79, 30, 109, 40), (rect(79, 30, 100, 40), 2), 2),
    # IoF 20/30 = 0.667 <= 0.7: devkit writes the clip with 2; mmrotate drops it
    (rect(80, 50, 110, 60), (rect(80, 50, 100, 60), 2), None),
    # cut on the left: the clip starts at x 0, clamped to 1 (devkit: <= 1 -> 1); IoF 10/15
    (rect(-5, 70, 10, 80), (rect(1, 70, 10, 80), 2), None),
    # a corner sticks out: the clip (60,40) (100,48) (100,70) (90,90) (50,80) has 5 points; its
    # shortest edge, x = 100 from y 48 to 70, becomes its midpoint (100, 59); IoF 1840 / 1950
    ([60, 40, 110, 50, 90, 90, 50, 80], ([60, 40, 100, 59, 90, 90, 50, 80], 1), 2),
    # over the window's corner: quarter inside (IoF 0.25): devkit writes the clip with 2
    (rect(90, 90, 110, 110), (rect(90, 90, 100, 100), 2), None),
    # a diamond's tip inside: the clip is a triangle (95,50) (100,45) (100,55): the devkit drops it
    ([110, 35, 125, 50, 110, 65, 95, 50], None, None),
    # a vertex past the corner: the clip has 6 points: the devkit drops it
    ([60, 60, 95, 70, 130, 130, 70, 95], None, None),
    # touching the window from outside (x = 100): IoF 0, written by neither
    (rect(100, 10, 120, 20), None, None),
    # zero area (all corners on a line): written by neither
    ([10, 10, 20, 20, 30, 30, 40, 40], None, None),
]


def _written(found, i):
    rows = np.flatnonzero(found.obj == i)
    assert len(rows) <= 1
    return None if not len(rows) else (found.polygons[rows[0]].tolist(), int(found.difficult[rows[0]]))


@pytest.mark.parametrize("poly, devkit, mmrotate", HAND)
def test_hand_checked_truncation_cases(poly, devkit, mmrotate):
    polys = np.array([poly], dtype=np.float64)
    found = devkit_window_objects(polys, np.array([1]), WINDOW, 1000, 1000, 100, 0.7)
    got = _written(found, 0)
    if devkit is None:
        assert got is None
    else:
        assert got is not None
        np.testing.assert_array_equal(got[0], devkit[0])
        assert got[1] == devkit[1]
    found = mmrotate_window_objects(polys, np.array([1]), WINDOW, 0.7)
    got = _written(found, 0)
    assert (got is None) == (mmrotate is None)
    if got is not None:  # mmrotate never clips
        np.testing.assert_array_equal(got[0], poly)
        assert got[1] == mmrotate


def test_devkit_window_moved_back_at_the_image_border_clips_at_w_minus_1():
    # 150 x 100 image, 100 px windows, gap 20: columns at 0 and 150 - 100 = 50 (moved back from 80).
    # The devkit's clip rectangle ends at W - 1 = 149 and H - 1 = 99: an object reaching the border
    # x = 150 is cut there (IoF 9 / 10 > 0.7), then shifted by the corner 50.
    ann = DotaAnnotation(polygons=[rect(140, 10, 150, 20), rect(10.9, 20.7, 30.2, 40.5)], labels=[0, 1],
                         difficult=[0, 0])
    patches = split_annotation(ann, "I", 150, 100, SplitConfig(rule="devkit", size=100, gap=20))
    assert [p.name for p in patches] == ["I__1__0___0", "I__1__50___0"]
    assert patches[0].objects.tolist() == [1] and patches[1].objects.tolist() == [0]
    # the file's coordinates are truncated to integers first (the devkit's parse_dota_poly2)
    np.testing.assert_array_equal(patches[0].annotation.polygons[0], rect(10, 20, 30, 40))
    np.testing.assert_array_equal(patches[1].annotation.polygons[0], rect(90, 10, 99, 20))
    # at rate 1.5 the integer coordinates are scaled (15, 30, 45, 60) and truncated after the shift
    (patch,) = [p for p in split_annotation(ann, "I", 150, 100, SplitConfig(rule="devkit", size=300, gap=20,
                                                                              rates=(1.5,)))]
    assert patch.name == "I__1.5__0___0" and patch.window == (0, 0, 300, 300)
    np.testing.assert_array_equal(patch.annotation.polygons[1], rect(15, 30, 45, 60))


def test_mmrotate_rates_change_the_window_and_drop_mostly_empty_windows():
    # rates 0.5 / 1: windows of int(1024 / 0.5) = 2048 and 1024 px of the unresized image.
    one = lambda w, h, rates: [(ws.rate, ws.size, ws.windows.tolist())  # noqa: E731
                               for ws in plan_windows(w, h, SplitConfig(rule="mmrotate", gap=200, rates=rates))]
    # 1500 x 1500: the 2048 window is 1500^2 / 2048^2 = 54% image (<= 60%): dropped; the 1024 ones stay
    assert one(1500, 1500, (0.5, 1.0)) == [(0.5, 2048, []), (1.0, 1024, [[0, 0, 1024, 1024], [0, 476, 1024, 1500],
                                                                         [476, 0, 1500, 1024], [476, 476, 1500, 1500]])]
    # 600 x 600: no window is > 60% image (9% and 34%): only the best covered (1024) is kept
    assert one(600, 600, (0.5, 1.0)) == [(0.5, 2048, []), (1.0, 1024, [[0, 0, 1024, 1024]])]
    # rate 0.5 alone: the one window is kept even though 600^2 / 2048^2 = 9%
    assert one(600, 600, (0.5,)) == [(0.5, 2048, [[0, 0, 2048, 2048]])]
    # the recipe's rate 1.5: int(1024 / 1.5) = 682 px windows, gap int(500 / 1.5) = 333 (stride 349)
    assert one(1100, 700, (1.5,))[0][2] == [[0, 0, 682, 682], [0, 18, 682, 700], [418, 0, 1100, 682],
                                            [418, 18, 1100, 700]]
    ann = DotaAnnotation(polygons=[rect(500.5, 10, 530.5, 20)], labels=[0], difficult=[0])
    (patch,) = split_annotation(ann, "P7", 600, 600, SplitConfig(rule="mmrotate", rates=(0.5, 1.0)))
    assert patch.name == "P7__1024__0___0" and patch.scale == 1.0
    np.testing.assert_array_equal(patch.annotation.polygons[0], rect(500.5, 10, 530.5, 20))  # not truncated


def test_padding_follows_the_rule(tmp_path):
    assert SplitConfig().padding == (0, 0, 0) and SplitConfig(rule="mmrotate").padding == (104, 116, 124)
    assert SplitConfig(rule="mmrotate", pad_value=(1, 2, 3)).padding == (1, 2, 3)
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    cv2.imwrite(str(src / "images" / "I.png"), np.full((40, 60, 3), 7, np.uint8))
    for rule, pad in [("devkit", 0), ("mmrotate", [104, 116, 124])]:
        split_dota(src, tmp_path / rule, SplitConfig(rule=rule, size=64, gap=8))
        (path,) = (tmp_path / rule / "images").glob("*.png")
        assert path.stem == ("I__1__0___0" if rule == "devkit" else "I__64__0___0")
        patch = cv2.imread(str(path))
        assert patch.shape == (64, 64, 3) and (patch[:40, :60] == 7).all()
        assert (patch[40:] == pad).all() and (patch[:, 60:] == pad).all()


def test_split_config_rule_fields_are_validated():
    for kwargs, field in [({"rule": "dota"}, "rule"), ({"rule": "mmrotate", "size": 8, "gap": 0}, "size"),
                          ({"rule": "mmrotate", "rates": (1.0, 0.9999)}, "rates"), ({"rates": (16.0,)}, "rates"),
                          ({"img_rate_thr": 1.0}, "img_rate_thr")]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            SplitConfig(**kwargs)


@pytest.mark.parametrize("name, naming, parts", [
    ("P0001__1__0___824", "auto", ("P0001", 1.0, 0, 824, None)),
    ("P0001__1.0__0___824", "auto", ("P0001", 1.0, 0, 824, None)),
    ("P0001__0.5__412___0", "auto", ("P0001", 0.5, 412, 0, None)),
    ("P0001__2__10___20", "auto", ("P0001", 2.0, 10, 20, None)),
    ("P0001__2048__1000___0", "auto", ("P0001", 1.0, 1000, 0, 2048)),  # mmrotate: offsets in image pixels
    ("P0001__682__349___0", "auto", ("P0001", 1.0, 349, 0, 682)),
    ("P0001__2__10___20", "size", ("P0001", 1.0, 10, 20, 2)),
    ("P0001__1024__10___20", "rate", ("P0001", 1024.0, 10, 20, None))])
def test_patch_names_of_both_rules_are_parsed(name, naming, parts):
    p = parse_patch_name(name, naming)
    assert (p.image_id, p.rate, p.x, p.y, p.size) == parts


def test_merge_maps_both_name_kinds_back():
    sq = [10, 20, 30, 20, 30, 40, 10, 40]
    dets = Detections(["I__0.5__100___50", "J__2048__100___50", "K__1024__100___50", "E__1__0___0"],
                      [0.9, 0.8, 0.7, 0.6], [sq, sq, sq, sq])
    merged = merge_detections({"ship": dets}, naming="auto")["ship"]
    by_image = dict(zip(merged.image_ids.tolist(), merged.polygons.tolist()))
    assert by_image["I"] == [220, 140, 260, 140, 260, 180, 220, 180]  # (p + (100, 50)) / 0.5
    assert by_image["J"] == by_image["K"] == [110, 70, 130, 70, 130, 90, 110, 90]  # p + (100, 50)
    forced = merge_detections({"ship": dets.select(np.array([2]))}, naming="rate")["ship"]
    np.testing.assert_allclose(forced.polygons[0], np.array([110, 70, 130, 70, 130, 90, 110, 90]) / 1024)
    assert len(merge_detections({"ship": Detections()})["ship"]) == 0


# ---- multi-scale split, then merge -----------------------------------------------------------

def _merge_labels(patches, score_of):
    rows = {}
    for p in patches:
        for j, (poly, name) in enumerate(zip(p.annotation.polygons, p.annotation.names)):
            rows.setdefault(name, []).append((p.name, score_of(p, j), poly))
    dets = {c: Detections([r[0] for r in v], [r[1] for r in v], [r[2] for r in v]) for c, v in rows.items()}
    return merge_detections(dets)


def _match_once(merged, polys, names, image_id, atol):
    """Every object of ``polys``/``names`` is matched by exactly one merged detection within ``atol``
    px, and every merged detection by exactly one object."""
    for c in set(names) | set(merged):
        want = polys[np.asarray(names) == c]
        d = merged.get(c, Detections())
        got = d.polygons[d.image_ids == image_id]
        assert len(got) == len(want), c
        if len(want):
            close = np.abs(got[:, None, :] - want[None, :, :]).max(-1) <= atol
            assert (close.sum(0) == 1).all() and (close.sum(1) == 1).all(), c


@pytest.mark.parametrize("image_id", ["P0706", "P1888", "P2709"])
def test_multiscale_mmrotate_split_then_merge_returns_the_ground_truth(image_id):
    """mmrotate rule, rates 0.5 / 1 / 1.5, gap 500 (window 2048 / 1024 / 682 px of the image).

    "Returns": every object written in at least one patch comes back exactly once, at its own
    coordinates (1e-6 px), after mapping the patch labels back (offsets only: these names carry the
    window side) and the merge's rotated NMS at IoU 0.1; the objects written nowhere do not.
    """
    ann = parse_dota_label(DATA / "labelTxt" / f"{image_id}.txt")
    config = SplitConfig(rule="mmrotate", size=1024, gap=500, rates=(0.5, 1.0, 1.5))
    patches = split_annotation(ann, image_id, *image_size(image_id), config)
    placed = np.zeros(len(ann), bool)
    for p in patches:
        placed[p.objects] = True
    assert placed.mean() > 0.95
    merged = _merge_labels(patches, lambda p, j: 1.0)
    _match_once(merged, ann.polygons[placed].astype(np.float64), np.array(ann.names)[placed], image_id, 1e-6)


def _neighbours_pushed_together(polys, rates, iou_thr=0.09):
    """Pairs of objects whose corners, truncated as the devkit does at some rate (floor(r x) / r),
    overlap as the merge measures it -- IoU of the minimum-area rotated rectangles (shapely) --
    above ``iou_thr``, a margin below the merge's 0.1."""
    pairs = set()
    for r in rates:
        rects = shapely.minimum_rotated_rectangle(shapely.polygons((np.floor(polys * r) / r).reshape(-1, 4, 2)))
        a, b = shapely.STRtree(rects).query(rects, predicate="intersects")
        a, b = a[a < b], b[a < b]
        inter = shapely.area(shapely.intersection(rects[a], rects[b]))
        iou = inter / (shapely.area(rects[a]) + shapely.area(rects[b]) - inter)
        pairs |= set(zip(a[iou > iou_thr].tolist(), b[iou > iou_thr].tolist()))
    return pairs


@pytest.mark.parametrize("image_id", ["P0706", "P1888"])
@pytest.mark.parametrize("rates", [(0.5,), (1.0,), (1.5,), (0.5, 1.0, 1.5)])
def test_multiscale_devkit_split_then_merge_returns_the_ground_truth(image_id, rates):
    """devkit rule, gap 500, 1024 px windows of the image resized by each rate.

    "Returns": give the copies written whole (the object's scaled corners all inside the window's
    clip rectangle, so IoF 1) score 1 and the clipped copies score 0.5. After the merge (patch
    coordinates + corner, divided by the rate; rotated NMS at IoU 0.1), every score-1 detection
    matches exactly one object that lies whole in some window, within 1 / rate px of the object's
    integer-truncated corners (the devkit truncates ``rate * x - corner``: the mapped-back value is
    floor(rate * x) / rate, in (x - 1 / rate, x]; several rates: 1 / min(rate)), and each such
    object is matched exactly once -- except that the truncation can push two neighbouring objects
    over the NMS threshold (found independently, :func:`_neighbours_pushed_together`): then at
    most one of the pair may be missing.
    """
    ann = parse_dota_label(DATA / "labelTxt" / f"{image_id}.txt")
    width, height = image_size(image_id)
    truth = np.trunc(ann.polygons.astype(np.float64))
    names = np.array(ann.names)
    patches = split_annotation(ann, image_id, width, height,
                               SplitConfig(rule="devkit", size=1024, gap=500, rates=rates))
    whole = np.zeros(len(ann), bool)
    scores = []
    for p in patches:
        x0, y0, x1, y1 = p.window
        w, h = cv2_size(width, height, p.scale)
        scaled = truth[p.objects] * p.scale
        inside = ((scaled[:, 0::2] >= x0) & (scaled[:, 0::2] <= min(x1, w - 1)) & (scaled[:, 1::2] >= y0)
                  & (scaled[:, 1::2] <= min(y1, h - 1))).all(1)
        whole[p.objects[inside]] = True
        scores.append(np.where(inside, 1.0, 0.5))
    assert whole.mean() > 0.9
    merged = _merge_labels(patches, lambda p, j: scores[patches.index(p)][j])
    tol = 1 / min(rates) + 1e-9
    matched = np.zeros(len(ann), int)
    for c, d in merged.items():
        top = d.polygons[d.scores == 1.0]
        cand = np.flatnonzero(whole & (names == c))
        close = np.abs(top[:, None, :] - truth[cand][None]).max(-1) <= tol  # [detections, objects]
        assert (close.sum(1) == 1).all(), c
        matched[cand] += close.sum(0)
        # mapped back corners never exceed the truncated ones (floor), by less than 1 / rate
        nearest = truth[cand][close.argmax(1)]
        assert (top <= nearest + 1e-9).all() and (top > nearest - tol).all()
    assert (matched <= 1).all()
    missing = set(np.flatnonzero(whole & (matched == 0)).tolist())
    if missing:
        pairs = _neighbours_pushed_together(truth, rates)
        assert all(any(m in pair for pair in pairs) for m in missing)
        assert not any(a in missing and b in missing for a, b in pairs)


def test_cli_split_rules_and_merge_of_both_names(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    (src / "images" / "P1888.png").write_bytes((DATA / "images" / "P1888.png").read_bytes())
    (src / "labelTxt" / "P1888.txt").write_bytes((DATA / "labelTxt" / "P1888.txt").read_bytes())
    truth = parse_dota_label(DATA / "labelTxt" / "P1888.txt")
    for rule, sides in [("devkit", {"0.5", "1", "1.5"}), ("mmrotate", {"512", "256", "170"})]:
        assert main(["dota", "split", "--src", str(src), "--out", str(tmp_path / rule), "--rule", rule,
                     "--size", "256", "--gap", "100", "--rates", "0.5", "1.0", "1.5"]) == 0
        assert "-> 66 objects" not in capsys.readouterr().out
        labels = load_dota_labels(tmp_path / rule / "labelTxt", DOTA_V2_CLASSES)
        assert {n.split("__")[1] for n in labels} == sides
        rows = {}
        for n, a in labels.items():
            for poly, c in zip(a.polygons, a.names):
                rows.setdefault(c, []).append((n, 1.0, poly))
        write_task1_dir(tmp_path / f"{rule}_dets", {c: Detections(*zip(*v)) for c, v in rows.items()})
    # mmrotate patches: every copy is the whole object, so the merge gives back each object written
    placed = {tuple(p) for a in load_dota_labels(tmp_path / "mmrotate" / "labelTxt").values() for p in a.polygons}
    assert main(["dota", "merge", "--dets", str(tmp_path / "mmrotate_dets"), "--out", str(tmp_path / "m")]) == 0
    merged = read_task1_dir(tmp_path / "m", DOTA_V2_CLASSES)
    got = np.concatenate([d.polygons for d in merged.values()])
    assert len(got) == len(truth) and len(placed) > 0
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(truth.polygons.astype(np.float64), axis=0), atol=1e-6)
    # devkit names carry rates: reading them as window sides is refused, as a one-line error
    assert main(["dota", "merge", "--dets", str(tmp_path / "devkit_dets"), "--out", str(tmp_path / "d"),
                 "--names", "size"]) == 2
    assert "is not a patch name <image id>__<window side>__<x>___<y>" in capsys.readouterr().err
    assert main(["dota", "merge", "--dets", str(tmp_path / "devkit_dets"), "--out", str(tmp_path / "d"),
                 "--names", "rate"]) == 0
