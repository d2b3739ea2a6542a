"""Synthetic DOTA and DIOR-R in the releases' on-disk formats, with learnable oriented objects.

Five object kinds, each with its own shape, colour and texture, so a small detector separates
them (the learning bar of issue 7 is mAP >= 0.5 for the debug backbone):

======================  ==================  =====================================================
DOTA class              DIOR-R class        drawing (w x h in px at ~0.3 m/px)
======================  ==================  =====================================================
plane                   airplane            light-grey cross: fuselage, swept wings, tailplane,
                                            with a cast shadow (length 44-110, span 0.8-1.05 x)
ship                    ship                hull with a pointed bow, white superstructure near
                                            the stern, on a dark-water patch (48-150 x 16-30)
storage-tank            storagetank         pale disc with a dark rim, a roof ring and a shadow
                                            crescent (diameter 24-76; axis-aligned box)
small-vehicle           vehicle             saturated-colour rectangle with a dark windscreen
                                            (28-44 x 16-22)
tennis-court            tenniscourt         green court on a red-brown apron with white lines and
                                            a net (64-110 x 0.5 x)
======================  ==================  =====================================================

Objects get uniform random angles (tanks excepted), never overlap (their circumscribed circles
are disjoint), lie fully inside the image, and about one in ten is drawn faded (blended 45% into
the ground) and marked difficult. The ground is a smooth two-scale colour field with field
parcels, roads and sensor grain; nothing on it resembles an object class.

DOTA (:func:`synth_dota`): ``<out>/images/P<id>.png`` and ``<out>/labelTxt/P<id>.txt`` with the
``imagesource:`` / ``gsd:`` header lines, ``size`` x ``size`` px (default 1024).

DIOR-R (:func:`synth_dior`): 800 x 800 JPEGs, the XML tree of the release (see
:mod:`rsfm_ds.data.det.dior`) with ``<robndbox>`` corners and ``<angle>`` (degrees of the box's
w-axis, le90), ``ImageSets/Main/{train,val,test}.txt``; train/val images in
``JPEGImages-trainval/``, test images in ``JPEGImages-test/``, ids 00001.. with trainval first,
as the release numbers them.

Ground-truth corners come from ``rsfm_ds.ops.rotated.box_to_polygon`` of the le90 box. Every image
has its own generator seeded by ``(seed, 1, index)``, so an image does not depend on how many are
written. Speed: ~40 ms per 1024 px image on one core, most of it PNG encoding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union
from xml.sax.saxutils import escape

import cv2
import numpy as np
import torch

from ...errors import ConfigError
from ...ops.rotated import box_to_polygon, regularize_le90
from ..det.dior import (ANNOTATION_SUBDIR, CORNER_TAGS, IMAGESET_SUBDIR, TEST_IMAGE_SUBDIR,
                        TRAINVAL_IMAGE_SUBDIR)
from ..det.dota import DOTA_V2_CLASSES, DotaAnnotation, format_coordinates, write_dota_label
from ..images import write_image

PathLike = Union[str, Path]
Colour = Tuple[int, int, int]
KINDS: Tuple[str, ...] = ("plane", "ship", "storage-tank", "small-vehicle", "tennis-court")
DIOR_NAMES: Dict[str, str] = {"plane": "airplane", "ship": "ship", "storage-tank": "storagetank",
                              "small-vehicle": "vehicle", "tennis-court": "tenniscourt"}
DIFFICULT_FRACTION = 0.1
SYNTH_GSD = 0.3


@dataclass
class SynthObject:
    """One drawn object: its kind (a DOTA class name), le90 box, corners and difficult flag."""

    kind: str
    box: Tuple[float, float, float, float, float]
    polygon: np.ndarray  # float64 [8]
    difficult: int


def _to_image(local: np.ndarray, box: Tuple[float, ...]) -> np.ndarray:
    """Local points ``[P, 2]`` (u along w, v along h, centred) -> image pixels ``[P, 2]``."""
    cx, cy, _, _, t = box
    c, s = math.cos(t), math.sin(t)
    u, v = local[:, 0], local[:, 1]
    return np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=1)


def _fill(img: np.ndarray, pts: np.ndarray, colour: Colour) -> None:
    # 4 fractional bits: sub-pixel vertices keep small rotated shapes crisp.
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)


def _lines(img: np.ndarray, pts: np.ndarray, pairs: List[Tuple[int, int]], colour: Colour, width: int) -> None:
    for a, b in pairs:
        p, q = np.round(pts[[a, b]] * 16).astype(np.int32)
        cv2.line(img, tuple(p.tolist()), tuple(q.tolist()), colour, width, cv2.LINE_AA, shift=4)


def _rect(w: float, h: float, u0: float = 0.0, v0: float = 0.0) -> np.ndarray:
    return np.array([[u0 - w / 2, v0 - h / 2], [u0 + w / 2, v0 - h / 2],
                     [u0 + w / 2, v0 + h / 2], [u0 - w / 2, v0 + h / 2]])


def _draw_plane(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    _, _, length, span, _ = box
    half_l, half_s = length / 2, span / 2
    body = max(3.0, 0.11 * length)
    wing = np.array([[0.12, 0.0], [-0.12, 1.0], [-0.26, 1.0], [-0.10, 0.0]]) * [length, half_s]
    tail = np.array([[-0.34, 0.0], [-0.46, 0.36], [-0.5, 0.36], [-0.5, 0.0]]) * [length, half_s]
    fuselage = np.array([[half_l, 0.0], [half_l - body, body / 2], [-half_l, body / 2],
                         [-half_l, -body / 2], [half_l - body, -body / 2]])
    parts = [fuselage, wing, wing * [1, -1], tail, tail * [1, -1]]
    shade = int(rng.integers(195, 240))
    offset = np.array([0.06, 0.06]) * length
    for part in parts:  # cast shadow first, then the aircraft
        _fill(img, _to_image(part, box) + offset, (60, 62, 64))
    for part in parts:
        _fill(img, _to_image(part, box), (shade, shade, shade - 8))
    _fill(img, _to_image(_rect(0.5 * length, body * 0.35, 0.1 * length), box), (shade - 60,) * 3)


def _draw_ship(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    _, _, length, beam, _ = box
    water = _rect(length + 0.5 * beam + 10, beam * 2.2 + 10)
    _fill(img, _to_image(water, box), (int(rng.integers(80, 110)), int(rng.integers(55, 75)), 30))
    hull = np.array([[length / 2, 0.0], [0.2 * length, beam / 2], [-length / 2, beam / 2],
                     [-length / 2, -beam / 2], [0.2 * length, -beam / 2]])
    tone = int(rng.integers(70, 150))
    _fill(img, _to_image(hull, box), (tone, tone + 5, tone + 10))
    deck = hull * 0.7 + [-0.05 * length, 0.0]
    _fill(img, _to_image(deck, box), (tone + 40, tone + 45, tone + 45))
    _fill(img, _to_image(_rect(0.2 * length, 0.6 * beam, -0.3 * length), box), (235, 235, 235))


def _draw_tank(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    cx, cy, d, _, _ = box
    r = d / 2
    centre = (int(round(cx * 16)), int(round(cy * 16)))
    shadow = (int(round((cx + 0.18 * d) * 16)), int(round((cy + 0.18 * d) * 16)))
    tone = int(rng.integers(205, 245))
    cv2.circle(img, shadow, int(r * 16), (55, 58, 60), -1, cv2.LINE_AA, shift=4)
    cv2.circle(img, centre, int(r * 16), (tone - 90,) * 3, -1, cv2.LINE_AA, shift=4)
    cv2.circle(img, centre, int(r * 0.86 * 16), (tone, tone, tone - 5), -1, cv2.LINE_AA, shift=4)
    cv2.circle(img, centre, int(r * 0.45 * 16), (tone - 45,) * 3, max(1, int(d / 25)), cv2.LINE_AA, shift=4)


def _draw_vehicle(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    _, _, length, width, _ = box
    hue = int(rng.integers(0, 180))
    colour = cv2.cvtColor(np.array([[[hue, 220, 230]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    _fill(img, _to_image(_rect(length, width), box) + 0.12 * width, (50, 52, 55))  # shadow
    _fill(img, _to_image(_rect(length, width), box), tuple(int(c) for c in colour))
    _fill(img, _to_image(_rect(0.18 * length, 0.8 * width, 0.22 * length), box), (35, 35, 40))
    _fill(img, _to_image(_rect(0.12 * length, 0.8 * width, -0.32 * length), box), (45, 45, 50))


def _draw_court(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    _, _, length, width, _ = box
    _fill(img, _to_image(_rect(length, width), box), (60, 80, int(rng.integers(140, 170))))  # apron
    court_l, court_w = 0.8 * length, 0.7 * width
    _fill(img, _to_image(_rect(court_l, court_w), box), (80, int(rng.integers(140, 170)), 60))
    line = max(1, int(round(width / 30)))
    corners = _to_image(_rect(court_l, court_w), box)
    _lines(img, corners, [(0, 1), (1, 2), (2, 3), (3, 0)], (245, 245, 245), line)
    inner = np.array([[-0.27 * court_l, -court_w / 2], [-0.27 * court_l, court_w / 2],
                      [0.27 * court_l, -court_w / 2], [0.27 * court_l, court_w / 2],
                      [-0.27 * court_l, 0.0], [0.27 * court_l, 0.0]])
    _lines(img, _to_image(inner, box), [(0, 1), (2, 3), (4, 5)], (245, 245, 245), line)
    net = _to_image(np.array([[0.0, -width / 2], [0.0, width / 2]]), box)
    _lines(img, net, [(0, 1)], (30, 30, 30), line + 1)


_DRAW: Dict[str, Callable[[np.ndarray, Tuple[float, ...], np.random.Generator], None]] = {
    "plane": _draw_plane, "ship": _draw_ship, "storage-tank": _draw_tank,
    "small-vehicle": _draw_vehicle, "tennis-court": _draw_court}


def _sample_size(kind: str, rng: np.random.Generator) -> Tuple[float, float]:
    """``(w, h)`` of a new object, w along the drawing's long axis (sizes: module docstring)."""
    if kind == "plane":
        length = rng.uniform(44, 110)
        return length, length * rng.uniform(0.8, 1.05)
    if kind == "ship":
        beam = rng.uniform(16, 30)
        return beam * rng.uniform(3.0, 5.0), beam
    if kind == "storage-tank":
        d = rng.uniform(24, 76)
        return d, d
    if kind == "small-vehicle":
        return rng.uniform(28, 44), rng.uniform(16, 22)
    length = rng.uniform(64, 110)  # tennis-court
    return length, 0.5 * length


def _ground(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Textured ground ``uint8 [H, W, 3]`` BGR: colour field, parcels, roads, grain."""
    base = np.array([rng.uniform(95, 125), rng.uniform(115, 140), rng.uniform(120, 150)], np.float32)
    coarse = rng.normal(0.0, 10.0, (max(2, height // 128), max(2, width // 128), 3)).astype(np.float32)
    fine = rng.normal(0.0, 5.0, (max(2, height // 16), max(2, width // 16), 1)).astype(np.float32)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img += cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)[..., None] + base
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 7))):  # field parcels: large, low-contrast polygons
        c = rng.uniform(0, [width, height])
        w, h = rng.uniform(120, 400, size=2)
        pts = _to_image(_rect(w, h), (c[0], c[1], w, h, rng.uniform(-math.pi / 2, math.pi / 2)))
        tint = tuple(int(v) for v in np.clip(base + rng.normal(0, 14, 3), 0, 255))
        _fill(img, pts, tint)
    for _ in range(int(rng.integers(1, 4))):  # roads crossing the scene
        p = rng.uniform(0, [width, height])
        t = rng.uniform(0, math.pi)
        d = np.array([math.cos(t), math.sin(t)]) * 2 * max(width, height)
        ends = np.stack([p - d, p + d])
        _lines(img, ends, [(0, 1)], (88, 90, 92), int(rng.integers(8, 16)))
    # Sensor-like grain at half resolution: cheap to draw and to compress.
    grain = rng.integers(0, 12, size=(height // 2 + 1, width // 2 + 1), dtype=np.uint8)
    grain = cv2.resize(grain, (width, height), interpolation=cv2.INTER_NEAREST)
    return cv2.add(img, cv2.merge([grain, grain, grain]))


def _place(rng: np.random.Generator, width: int, height: int, count: int, margin: float = 4.0
           ) -> List[Tuple[str, Tuple[float, float, float, float, float]]]:
    """Sample up to ``count`` non-overlapping (kind, le90 box) inside the image."""
    placed: List[Tuple[str, Tuple[float, float, float, float, float]]] = []
    circles: List[Tuple[float, float, float]] = []
    for _ in range(count * 20):
        if len(placed) == count:
            break
        kind = KINDS[int(rng.integers(len(KINDS)))]
        w, h = _sample_size(kind, rng)
        # The drawing's extras (shadow, water patch) reach past the box; keep them clear too.
        extent = 0.5 * math.hypot(w, h) * (1.6 if kind == "ship" else 1.15) + margin
        if 2 * extent >= min(width, height):
            continue
        cx, cy = rng.uniform(extent, width - extent), rng.uniform(extent, height - extent)
        if any((cx - x) ** 2 + (cy - y) ** 2 < (extent + r) ** 2 for x, y, r in circles):
            continue
        theta = 0.0 if kind == "storage-tank" else float(rng.uniform(-math.pi / 2, math.pi / 2))
        circles.append((cx, cy, extent))
        placed.append((kind, (cx, cy, w, h, theta)))
    return placed


def render_scene(rng: np.random.Generator, width: int, height: int, objects: Tuple[int, int] = (8, 24)
                 ) -> Tuple[np.ndarray, List[SynthObject]]:
    """One image ``uint8 [H, W, 3]`` BGR and its objects (``objects``: min, max count)."""
    img = _ground(rng, height, width)
    placed = _place(rng, width, height, int(rng.integers(objects[0], objects[1] + 1)))
    out: List[SynthObject] = []
    if not placed:
        return img, out
    boxes = regularize_le90(torch.tensor([b for _, b in placed], dtype=torch.float64))
    polys = box_to_polygon(boxes).numpy()
    for (kind, box), le90, poly in zip(placed, boxes.tolist(), polys):
        difficult = int(rng.random() < DIFFICULT_FRACTION)
        target = img.copy() if difficult else img
        _DRAW[kind](target, box, rng)
        if difficult:  # faded: the object blended 45% into the ground
            cv2.addWeighted(target, 0.45, img, 0.55, 0.0, dst=img)
        out.append(SynthObject(kind, tuple(le90), poly, difficult))
    return img, out


@dataclass
class SynthDetReport:
    """What a synthetic detection dataset writer wrote."""

    root: Path
    images: int = 0
    objects: int = 0
    difficult: int = 0
    per_class: Dict[str, int] = field(default_factory=dict)

    def count(self, objects: List[SynthObject], name_of: Dict[str, str]) -> None:
        self.images += 1
        self.objects += len(objects)
        self.difficult += sum(o.difficult for o in objects)
        for o in objects:
            name = name_of[o.kind]
            self.per_class[name] = self.per_class.get(name, 0) + 1


def _check(images: int, size: int) -> None:
    if images < 1:
        raise ConfigError(f"images: must be >= 1, got {images}")
    if size < 256:
        raise ConfigError(f"size: must be >= 256 px, got {size}")


def synth_dota(out: PathLike, images: int = 50, seed: int = 0, size: int = 1024, first_id: int = 0
               ) -> SynthDetReport:
    """Write ``images`` DOTA-format images and labels under ``out`` (``images/``, ``labelTxt/``).

    Args:
        out: dataset folder (created).
        images: number of images.
        seed: random seed; image ``i`` uses the generator ``(seed, 1, first_id + i)``.
        size: image side in pixels.
        first_id: ids are ``P{first_id + i:04d}``: give a second split distinct ids.

    Raises:
        ConfigError: ``images < 1`` or ``size < 256``.
    """
    _check(images, size)
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    report = SynthDetReport(root)
    index = {name: i for i, name in enumerate(DOTA_V2_CLASSES)}
    for i in range(first_id, first_id + images):
        rng = np.random.default_rng([seed, 1, i])
        img, objects = render_scene(rng, size, size)
        image_id = f"P{i:04d}"
        write_image(root / "images" / f"{image_id}.png", img)
        ann = DotaAnnotation(polygons=np.array([o.polygon for o in objects]).reshape(-1, 8),
                             labels=[index[o.kind] for o in objects],
                             difficult=[o.difficult for o in objects], source="rsfm-synth", gsd=SYNTH_GSD)
        write_dota_label(root / "labelTxt" / f"{image_id}.txt", ann)
        report.count(objects, {k: k for k in KINDS})
    return report


def format_dior_xml(image_id: str, width: int, height: int, objects: List[SynthObject], folder: str) -> str:
    """The DIOR-R oriented-box XML of one image, laid out as the release's files."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<annotation>",
             f"    <folder>{escape(folder)}</folder>", f"    <filename>{image_id}.jpg</filename>",
             f"    <path>{escape(folder)}</path>", "    <source>", "        <database>Unknown</database>",
             "    </source>", "    <size>", f"        <width>{width}</width>",
             f"        <height>{height}</height>", "        <depth>3</depth>", "    </size>",
             "    <segmented>0</segmented>"]
    for o in objects:
        coords = format_coordinates(o.polygon)
        lines += ["    <object>", "        <type>robndbox</type>", f"        <name>{DIOR_NAMES[o.kind]}</name>",
                  "        <pose>Unspecified</pose>", "        <truncated>0</truncated>",
                  f"        <difficult>{o.difficult}</difficult>", "        <robndbox>"]
        lines += [f"            <{tag}>{value}</{tag}>" for tag, value in zip(CORNER_TAGS, coords)]
        lines += ["        </robndbox>", f"        <angle>{math.degrees(o.box[4]):.2f}</angle>",
                  "    </object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def synth_dior(out: PathLike, images: int = 50, seed: int = 0, size: int = 800, val_fraction: float = 0.2,
               test_fraction: float = 0.2, quality: int = 95) -> SynthDetReport:
    """Write ``images`` DIOR-R-format images, XMLs and image sets under ``out``.

    Ids are ``00001``..: the first ``images - n_test`` are train/val (every image of that range
    goes to train or val by a seeded draw, ``round(val_fraction * images)`` to val), the last
    ``n_test = round(test_fraction * images)`` are test.

    Raises:
        ConfigError: ``images < 1``, ``size < 256`` or fractions outside [0, 1) / summing to >= 1.
    """
    _check(images, size)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction/test_fraction: need each in [0, 1) and a sum < 1, got "
                          f"{val_fraction}, {test_fraction}")
    root = Path(out)
    n_test = int(round(test_fraction * images))
    n_trainval = images - n_test
    n_val = min(int(round(val_fraction * images)), n_trainval - 1)
    is_val = np.zeros(n_trainval, dtype=bool)
    is_val[np.random.default_rng([seed, 0]).permutation(n_trainval)[:max(n_val, 0)]] = True
    for sub in (ANNOTATION_SUBDIR, IMAGESET_SUBDIR, Path(TRAINVAL_IMAGE_SUBDIR), Path(TEST_IMAGE_SUBDIR)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    report = SynthDetReport(root)
    sets: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    for i in range(images):
        rng = np.random.default_rng([seed, 1, i])
        img, objects = render_scene(rng, size, size)
        image_id = f"{i + 1:05d}"
        split = "test" if i >= n_trainval else ("val" if is_val[i] else "train")
        folder = TEST_IMAGE_SUBDIR if split == "test" else TRAINVAL_IMAGE_SUBDIR
        target = root / folder / f"{image_id}.jpg"
        write_image(target, img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        (root / ANNOTATION_SUBDIR / f"{image_id}.xml").write_text(
            format_dior_xml(image_id, size, size, objects, folder), encoding="utf-8")
        sets[split].append(image_id)
        report.count(objects, DIOR_NAMES)
    for split, ids in sets.items():
        (root / IMAGESET_SUBDIR / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return report
