"""Synthetic MillionAID: remote-sensing-like JPEGs in the real layout ``train/<L1>/<L2>/[<L3>]/*.jpg``.

The class tree has the real dataset's shape: 8 top-level land-use nodes, 28 second-level nodes and
51 leaves, 17 of the leaves two levels deep (e.g. ``commercial_land/commercial_area``), the rest three
(e.g. ``agriculture_land/arable_land/dry_field``). The names follow the published hierarchy; where
the release spells a folder differently nothing depends on it, since the scanner derives the tree
from the folders.

Each leaf class maps to a scene layout (:data:`LAYOUTS`) built from the elements the downstream
generators draw (:mod:`.elements`), at the same pixel scale, so what MAE pretraining sees carries
the structure that fine-tuning on the synthetic DOTA / DIOR-R / Potsdam / LoveDA data needs:

===========  ================================================================================
layout       content (elements)
===========  ================================================================================
airport      asphalt apron and a runway with centre dashes; planes, a few vehicles
harbour      open water beyond a quay line; ships on the water, vehicles on the quay side
tanks        detection ground; storage tanks, vehicles
courts       detection ground; tennis courts, vehicles
parking      asphalt lot with bay lines; vehicles
works        detection ground; every object kind (as in a DOTA image)
houses       a Potsdam tile at 5 cm, cropped (gable-roof buildings, roads with cars, trees,
             low vegetation, clutter)
urban        a LoveDA urban scene (road grid, dense buildings, forest, water)
farmland     a LoveDA rural scene (field patchwork with furrows, forest, rivers, farmsteads)
forest       land-cover canvas at LoveDA's 0.3 m: forest canopy, crowns, clearings
water        land-cover canvas: a rippled lake and its shore
bare         land-cover canvas: barren ground with sparse shrubs
===========  ================================================================================

Object layouts place and draw with :func:`.elements.place_objects` and
:data:`.elements.DRAW_OBJECT` (the DOTA / DIOR-R objects at the same sizes in pixels); ``houses``
calls :func:`.segmentation.render_potsdam_tile`, ``urban`` / ``farmland``
:func:`.segmentation.render_loveda_image`; the land-cover layouts paint a :class:`.elements.Canvas`
textured with LoveDA's class textures. Everything is randomised per image from a per-image seed,
at a random size of ``min_size..max_size`` pixels a side (a third of them non-square).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import cv2
import numpy as np

from ...config import check
from ..seg.loveda import LOVEDA_CLASSES
from .elements import (DRAW_OBJECT, KINDS, Canvas, detection_ground, fill, jitter, local_rect, place_objects,
                       render_textured, ripples, to_image)
from .segmentation import LOVEDA_PX_PER_M, LOVEDA_TEXTURES, render_loveda_image, render_potsdam_tile

MILLIONAID_TREE: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "agriculture_land": {
        "arable_land": ("dry_field", "greenhouse", "paddy_field", "terraced_field"),
        "grassland": (),
        "woodland": ("forest", "orchard"),
    },
    "commercial_land": {"commercial_area": ()},
    "industrial_land": {
        "factory_area": ("storage_tank", "works"),
        "mining_area": ("mine", "oil_field", "quarry"),
        "power_station": ("solar_power_plant", "substation", "wind_turbine"),
    },
    "public_service_land": {
        "leisure_land": ("baseball_field", "basketball_court", "golf_course", "ground_track_field",
                         "swimming_pool", "tennis_court"),
        "religious_land": ("cemetery", "church"),
        "school": (),
        "hospital": (),
    },
    "residential_land": {"apartment": (), "detached_house": (), "mobile_home_park": ()},
    "transportation_land": {
        "airport_area": ("apron", "helipad", "runway"),
        "highway_area": ("bridge", "intersection", "parking_lot", "road", "roundabout", "viaduct"),
        "port_area": ("pier",),
        "railway_area": ("railway", "train_station"),
    },
    "unutilized_land": {"bare_land": (), "desert": (), "ice_land": (), "island": (), "rock_land": (),
                        "sparse_shrub_land": ()},
    "water_area": {"beach": (), "dam": (), "lake": (), "river": ()},
}


def leaf_paths() -> List[Tuple[str, ...]]:
    """Folder path of every leaf class, sorted: ``(L1, L2)`` or ``(L1, L2, L3)``."""
    paths = []
    for l1, children in MILLIONAID_TREE.items():
        for l2, leaves in children.items():
            paths.extend([(l1, l2, l3) for l3 in leaves] if leaves else [(l1, l2)])
    return sorted(paths)


Box = Tuple[float, float, float, float, float]

LAYOUTS: Dict[str, str] = {
    **dict.fromkeys(("dry_field", "greenhouse", "paddy_field", "terraced_field", "grassland", "wind_turbine"),
                    "farmland"),
    **dict.fromkeys(("forest", "orchard", "golf_course"), "forest"),
    **dict.fromkeys(("commercial_area", "apartment", "railway", "train_station", "solar_power_plant"), "urban"),
    **dict.fromkeys(("detached_house", "mobile_home_park", "school", "hospital", "church", "cemetery",
                     "substation"), "houses"),
    **dict.fromkeys(("storage_tank", "oil_field"), "tanks"),
    "works": "works",
    **dict.fromkeys(("mine", "quarry", "bare_land", "desert", "ice_land", "rock_land", "sparse_shrub_land"),
                    "bare"),
    **dict.fromkeys(("baseball_field", "basketball_court", "ground_track_field", "swimming_pool", "tennis_court"),
                    "courts"),
    **dict.fromkeys(("apron", "helipad", "runway"), "airport"),
    **dict.fromkeys(("parking_lot", "road", "intersection", "roundabout", "viaduct"), "parking"),
    **dict.fromkeys(("pier", "beach"), "harbour"),
    **dict.fromkeys(("bridge", "island", "dam", "lake", "river"), "water"),
}
"""Scene layout of each leaf class (module docstring)."""


@dataclass(frozen=True)
class Scene:
    """One rendered MillionAID scene."""

    image: np.ndarray
    """``uint8 [H, W, 3]`` BGR."""
    layout: str
    """The layout drawn (a value of :data:`LAYOUTS`)."""
    objects: List[Tuple[str, Box]]
    """Objects drawn, as ``(kind, (cx, cy, w, h, theta))`` in pixels / radians, the box the object
    drawer was given; empty for the land-cover layouts."""


# Object layouts: kinds drawn (repeats weight the draw) and objects per 10^4 px^2 of image.
_OBJECT_LAYOUTS: Dict[str, Tuple[Tuple[str, ...], float]] = {
    "airport": (("plane", "plane", "plane", "small-vehicle"), 0.6),
    "harbour": (("ship", "ship", "ship", "small-vehicle"), 1.2),
    "tanks": (("storage-tank", "storage-tank", "storage-tank", "small-vehicle"), 1.0),
    "courts": (("tennis-court", "tennis-court", "tennis-court", "small-vehicle"), 0.5),
    "parking": (("small-vehicle",), 2.5),
    "works": (KINDS, 1.0),
}
_TARMAC = (112, 114, 116)  # BGR, as OpenCV draws
_WATER = (95, 65, 30)  # the dark water of the ship drawer's patch


def _segments(img: np.ndarray, local: np.ndarray, box: Box, colour, width: int) -> None:
    """Draw segments ``float [S, 2, 2]`` (local u, v) of ``box``'s frame in one OpenCV call."""
    pts = to_image(local.reshape(-1, 2), box).reshape(-1, 2, 2)
    cv2.polylines(img, list(np.round(pts * 16).astype(np.int32)), False, colour, width, cv2.LINE_AA, shift=4)


def _dashes(start: float, stop: float, period: float, v: float = 0.0) -> np.ndarray:
    """Segments ``[S, 2, 2]`` along u from ``start`` to ``stop``: half a period on, half off."""
    u = np.arange(start, stop, period)
    return np.stack([np.stack([u, np.full_like(u, v)], 1), np.stack([u + period / 2, np.full_like(u, v)], 1)], 1)


def _frame(rng: np.random.Generator, width: int, height: int) -> Tuple[Box, float]:
    """A random line through the image as a box frame (centre, angle), and a length covering it."""
    cx, cy = rng.uniform(0, [width, height])
    return (float(cx), float(cy), 0.0, 0.0, float(rng.uniform(-np.pi / 2, np.pi / 2))), 2.0 * float(np.hypot(width, height))


def _side(frame: Box, points: np.ndarray) -> np.ndarray:
    """Signed distance ``[P]`` of image points ``[P, 2]`` from the line of ``frame`` along its v axis."""
    d = points - np.asarray(frame[:2])
    return -d[:, 0] * np.sin(frame[4]) + d[:, 1] * np.cos(frame[4])


def _tarmac(img: np.ndarray, rng: np.random.Generator) -> None:
    """Blend the whole ground towards asphalt grey, keeping its texture."""
    cv2.addWeighted(img, 0.35, np.full_like(img, jitter(rng, _TARMAC, 8)), 0.65, 0.0, dst=img)


def _airport(img: np.ndarray, rng: np.random.Generator, frame: Box, length: float) -> None:
    _tarmac(img, rng)
    runway = rng.uniform(28, 44)
    fill(img, to_image(local_rect(length, runway), frame), jitter(rng, (82, 84, 86), 6))
    _segments(img, _dashes(-length / 2, length / 2, 24.0), frame, (235, 235, 235), 2)


def _harbour(img: np.ndarray, rng: np.random.Generator, frame: Box, length: float) -> None:
    # Water on the +v side of the quay line (the frame is turned so that this side holds the image centre).
    fill(img, to_image(local_rect(length, length, 0.0, length / 2), frame), jitter(rng, _WATER, 10))
    quay = np.array([[[-length / 2, 0.0], [length / 2, 0.0]]])
    _segments(img, quay, frame, (170, 172, 175), 3)


def _parking(img: np.ndarray, rng: np.random.Generator, frame: Box, length: float) -> None:
    _tarmac(img, rng)
    rows = np.arange(-length / 2, length / 2, 40.0)  # bay rows 40 px (~12 m) apart
    bays = np.stack([np.stack([np.full_like(rows, -length / 2), rows], 1),
                     np.stack([np.full_like(rows, length / 2), rows], 1)], 1)
    _segments(img, bays, frame, (225, 225, 225), 1)


_BACKDROPS: Dict[str, Callable[[np.ndarray, np.random.Generator, Box, float], None]] = {
    "airport": _airport, "harbour": _harbour, "parking": _parking}


def _object_scene(rng: np.random.Generator, layout: str, width: int, height: int
                  ) -> Tuple[np.ndarray, List[Tuple[str, Box]]]:
    kinds, density = _OBJECT_LAYOUTS[layout]
    img = detection_ground(rng, height, width)
    frame, length = _frame(rng, width, height)
    if layout == "harbour" and _side(frame, np.array([[width / 2, height / 2]]))[0] < 0:
        frame = (*frame[:4], frame[4] + np.pi)  # water covers at least half of the image
    if layout in _BACKDROPS:
        _BACKDROPS[layout](img, rng, frame, length)
    count = 1 + int(rng.poisson(density * width * height / 1e4))
    placed = place_objects(rng, width, height, count, kinds=kinds)
    if layout == "harbour" and placed:  # ships on the water, vehicles on the quay side
        on_water = _side(frame, np.array([b[:2] for _, b in placed])) > 0
        placed = [p for p, wet in zip(placed, on_water) if wet == (p[0] == "ship")]
    for kind, box in placed:
        DRAW_OBJECT[kind](img, box, rng)
    return img, placed


# LoveDA raw mask values of the land-cover classes the canvas layouts paint.
_BG, _WT, _BR, _FO = (LOVEDA_CLASSES.index(n) + 1 for n in ("background", "water", "barren", "forest"))


def _cover_scene(rng: np.random.Generator, layout: str, width: int, height: int) -> np.ndarray:
    """forest / water / bare at LoveDA's 0.3 m sampling: ``uint8 [H, W, 3]`` BGR."""
    m = LOVEDA_PX_PER_M
    side = max(width, height)
    if layout == "forest":
        canvas = Canvas(height, width, _FO, jitter(rng, (45, 85, 50, 0), 8))
        for _ in range(int(rng.integers(0, 3))):  # clearings
            canvas.ellipse(*rng.uniform(0, [width, height]), *rng.uniform(5, 15, 2) * m, rng.uniform(0, 180), _BG,
                           jitter(rng, (135, 140, 105, 0), 10))
        for _ in range(int(rng.integers(4, 12))):  # crowns standing out of the canopy
            r = rng.uniform(2, 6) * m
            canvas.ellipse(*rng.uniform(0, [width, height]), r, r * rng.uniform(0.8, 1.0), 0.0, _FO,
                           jitter(rng, (40, 95, 45, 0), 10))
    elif layout == "water":
        canvas = Canvas(height, width, _BG, jitter(rng, (145, 140, 110, 0), 10))
        centre = rng.uniform(0, [width, height])
        mask = canvas.ellipse(*centre, *rng.uniform(0.4, 0.9, 2) * side, rng.uniform(0, 180), _WT,
                              jitter(rng, (40, 70, 100, 0), 8))
        r = (mask.shape[0] - 1) // 2
        ripples(canvas, mask, int(centre[0]) - r, int(centre[1]) - r, max(2, int(3 * m)), (60, 95, 125, 0), _WT)
    else:  # bare: barren ground with sparse shrubs
        canvas = Canvas(height, width, _BR, jitter(rng, (185, 165, 130, 0), 12))
        for _ in range(int(rng.poisson(8))):
            r = rng.uniform(1, 3) * m
            canvas.ellipse(*rng.uniform(0, [width, height]), r, r, 0.0, _FO, jitter(rng, (70, 95, 60, 0), 10))
    rgb = render_textured(rng, canvas, LOVEDA_TEXTURES, m)[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1])


def render_scene(rng: np.random.Generator, leaf: str, width: int, height: int) -> Scene:
    """One scene of leaf class ``leaf`` (a folder name of :data:`MILLIONAID_TREE`), ``width`` x ``height`` px.

    Raises:
        KeyError: ``leaf`` is not a MillionAID leaf class.
    """
    layout = LAYOUTS[leaf]
    if layout in _OBJECT_LAYOUTS:
        img, objects = _object_scene(rng, layout, width, height)
        return Scene(img, layout, objects)
    side = max(width, height)  # the downstream renderers draw squares: crop
    if layout == "houses":
        rgb = render_potsdam_tile(rng, side)[0][:height, :width, :3]
    elif layout in ("urban", "farmland"):
        rgb = render_loveda_image(rng, side, "Urban" if layout == "urban" else "Rural")[0][:height, :width]
    else:
        return Scene(_cover_scene(rng, layout, width, height), layout, [])
    return Scene(np.ascontiguousarray(rgb[..., ::-1]), layout, [])


@dataclass(frozen=True)
class SynthReport:
    """What :func:`synth_millionaid` wrote."""

    root: Path
    images: int
    classes: int
    bytes: int


def synth_millionaid(out: Union[str, Path], images: int = 200, seed: int = 0, min_size: int = 256,
                     max_size: int = 1024, quality: int = 90, split: str = "train") -> SynthReport:
    """Write ``images`` synthetic JPEGs to ``out/<split>/<L1>/<L2>/[<L3>]/<leaf>_<i>.jpg``.

    Deterministic in ``seed``. Classes are dealt round-robin in a seeded order, so with at least 51
    images every leaf class gets one.

    Raises:
        ConfigError: a size, count or quality out of range (the message names it).
    """
    check(images >= 1, "images", f"must be >= 1, got {images}")
    check(16 <= min_size <= max_size, "min_size",
          f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    check(1 <= quality <= 100, "quality", f"must be within 1..100, got {quality}")
    root = Path(out)
    leaves = leaf_paths()
    order = np.random.default_rng([seed, 0]).permutation(len(leaves))
    total = 0
    for i in range(images):
        rng = np.random.default_rng([seed, 1, i])
        path = leaves[order[i % len(leaves)]]
        side = int(rng.integers(min_size, max_size + 1))
        other = side if rng.random() < 2 / 3 else int(np.clip(side * rng.uniform(0.75, 1.33),
                                                             min_size, max_size))
        width, height = (side, other) if rng.random() < 0.5 else (other, side)
        image = render_scene(rng, path[-1], width, height).image
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok, "OpenCV failed to encode a JPEG"
        folder = root.joinpath(split, *path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{path[-1]}_{i:07d}.jpg").write_bytes(data.tobytes())
        total += data.size
    return SynthReport(root=root, images=images, classes=len(leaves), bytes=total)
