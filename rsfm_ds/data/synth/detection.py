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

The objects, their placement and the ground are drawn by the shared scene elements
(:mod:`.elements`: :data:`~.elements.DRAW_OBJECT`, :func:`~.elements.place_objects`,
:func:`~.elements.detection_ground`), which the synthetic MillionAID pretraining images use too.
Ground-truth corners come from ``rsfm_ds.ops.rotated.box_to_polygon`` of the le90 box. Every image
has its own generator seeded by ``(seed, 1, index)``, so an image does not depend on how many are
written. Speed: ~40 ms per 1024 px image on one core, most of it PNG encoding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union
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
from .elements import DRAW_OBJECT, KINDS, detection_ground, place_objects

PathLike = Union[str, Path]
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


def render_scene(rng: np.random.Generator, width: int, height: int, objects: Tuple[int, int] = (8, 24)
                 ) -> Tuple[np.ndarray, List[SynthObject]]:
    """One image ``uint8 [H, W, 3]`` BGR and its objects (``objects``: min, max count)."""
    img = detection_ground(rng, height, width)
    placed = place_objects(rng, width, height, int(rng.integers(objects[0], objects[1] + 1)))
    out: List[SynthObject] = []
    if not placed:
        return img, out
    boxes = regularize_le90(torch.tensor([b for _, b in placed], dtype=torch.float64))
    polys = box_to_polygon(boxes).numpy()
    for (kind, box), le90, poly in zip(placed, boxes.tolist(), polys):
        difficult = int(rng.random() < DIFFICULT_FRACTION)
        target = img.copy() if difficult else img
        DRAW_OBJECT[kind](target, box, rng)
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
    if size < 128:  # objects are up to ~150 px long: smaller images would hold hardly any
        raise ConfigError(f"size: must be >= 128 px, got {size}")


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
        ConfigError: ``images < 1`` or ``size < 128``.
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
        ConfigError: ``images < 1``, ``size < 128`` or fractions outside [0, 1) / summing to >= 1.
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
