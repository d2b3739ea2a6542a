"""Own class lists through the DOTA command-line tools: split -> merge -> evaluate.

The oracle: the split's own patch labels, used as detections with score 1, merge back to exactly
the source objects, so the evaluation of an own-class list must give AP 1 for every class.
"""
import json

import cv2
import numpy as np

from rsfm_ds.cli import main
from rsfm_ds.data.det.dota import Detections, load_dota_labels, write_task1_dir

CLASSES = "boat,tank"


def _own_dota(root, size=600):
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "images" / "S0001.png"), image)
    lines = ["imagesource:own", "gsd:0.5"]
    rng = np.random.default_rng(1)
    # Squares on a grid (apart, so the merge's NMS keeps every one), some in the patches' overlap.
    for k, (x, y) in enumerate(np.stack(np.meshgrid([30, 170, 290, 420], [40, 250, 510]), -1).reshape(-1, 2)):
        w = rng.uniform(15, 40)
        name = ("boat", "tank")[k % 2]
        lines.append(f"{x:.1f} {y:.1f} {x + w:.1f} {y:.1f} {x + w:.1f} {y + w:.1f} {x:.1f} {y + w:.1f} {name} 0")
    (root / "labelTxt" / "S0001.txt").write_text("\n".join(lines) + "\n")


def test_split_merge_eval_with_own_classes(tmp_path, capsys):
    src = tmp_path / "src"
    _own_dota(src)
    assert main(["dota", "split", "--src", str(src), "--out", str(tmp_path / "split"), "--size", "400",
                 "--gap", "100", "--rule", "mmrotate", "--iof-thr", "0.99", "--classes", CLASSES]) == 0
    patches = load_dota_labels(tmp_path / "split" / "labelTxt", ("boat", "tank"))
    assert len(patches) > 1
    dets = {}
    for cls in ("boat", "tank"):
        rows = [(name, 1.0, poly) for name, ann in patches.items() for poly, c in zip(ann.polygons, ann.names)
                if c == cls]
        dets[cls] = Detections(*zip(*rows))
    write_task1_dir(tmp_path / "dets", dets)
    assert main(["dota", "merge", "--dets", str(tmp_path / "dets"), "--out", str(tmp_path / "merged"),
                 "--classes", CLASSES]) == 0
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == ["Task1_boat.txt", "Task1_tank.txt"]
    capsys.readouterr()
    assert main(["eval", "det", "--dets", str(tmp_path / "merged"), "--labels", str(src / "labelTxt"),
                 "--classes", CLASSES, "--json", str(tmp_path / "map.json")]) == 0
    out = capsys.readouterr().out
    assert "boat" in out and "tank" in out
    result = json.loads((tmp_path / "map.json").read_text())
    assert result["mAP"] == 1.0 and set(result["AP"]) == {"boat", "tank"}


def test_unknown_and_bad_class_lists_are_one_line_errors(tmp_path, capsys):
    src = tmp_path / "src"
    _own_dota(src)
    assert main(["dota", "split", "--src", str(src), "--out", str(tmp_path / "split"), "--classes", "boat"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "S0001.txt" in err and "'tank'" in err
    assert main(["dota", "split", "--src", str(src), "--out", str(tmp_path / "split"), "--classes", "boat,,x"]) == 2
    assert "--classes" in capsys.readouterr().err
