"""Synthetic MillionAID: remote-sensing-like JPEGs in the real layout ``train/<L1>/<L2>/[<L3>]/*.jpg``.

The class tree has the real dataset's shape: 8 top-level land-use nodes, 28 second-level nodes and
51 leaves, 17 of the leaves two levels deep (e.g. ``commercial_land/commercial_area``), the rest three
(e.g. ``agriculture_land/arable_land/dry_field``). The names follow the published hierarchy; where
the release spells a folder differently nothing depends on it, since the scanner derives the tree
from the folders.

Each image is drawn with OpenCV primitives from a per-image seed: a smooth textured ground, then
the scene elements of its top-level class (field patchworks, road grids, roofs with shadows, water
bodies with shorelines, vehicles, bare/rocky texture), at a random size of ``min_size..max_size``
pixels a side (a third of them non-square). It is fast: ~10 ms per image on one core.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import cv2
import numpy as np

from ...config import check

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


# Per top-level class: ground colour (BGR, as OpenCV draws) and how many of each element to draw
# per megapixel: fields, roads, roofs, water bodies, vehicles, rocks/shrubs.
_THEMES: Dict[str, Tuple[Tuple[int, int, int], Dict[str, float]]] = {
    "agriculture_land": ((70, 120, 95), dict(fields=30, roads=3, roofs=2, water=0.5, vehicles=2, rocks=0)),
    "commercial_land": ((125, 128, 130), dict(fields=0, roads=8, roofs=250, water=0, vehicles=150, rocks=0)),
    "industrial_land": ((115, 120, 118), dict(fields=2, roads=6, roofs=80, water=0.5, vehicles=30, rocks=10)),
    "public_service_land": ((80, 125, 100), dict(fields=8, roads=5, roofs=20, water=1, vehicles=25, rocks=0)),
    "residential_land": ((85, 115, 100), dict(fields=3, roads=8, roofs=300, water=0.5, vehicles=60, rocks=0)),
    "transportation_land": ((120, 125, 125),
                            dict(fields=4, roads=14, roofs=10, water=1, vehicles=120, rocks=0)),
    "unutilized_land": ((120, 160, 180), dict(fields=0, roads=0.5, roofs=0, water=0.5, vehicles=0, rocks=80)),
    "water_area": ((150, 110, 60), dict(fields=2, roads=1, roofs=3, water=4, vehicles=2, rocks=10)),
}


def _count(rng: np.random.Generator, per_mpx: float, area_mpx: float) -> int:
    return int(rng.poisson(per_mpx * area_mpx))


def _jitter(rng: np.random.Generator, colour: Tuple[int, int, int], amount: int) -> Tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def render_scene(rng: np.random.Generator, top_level: str, width: int, height: int) -> np.ndarray:
    """One remote-sensing-like scene, ``uint8 [height, width, 3]`` BGR."""
    ground, counts = _THEMES[top_level]
    # Smooth low-frequency variation, mostly in brightness: a coarse grid upsampled bicubically.
    grid = (max(2, height // 48), max(2, width // 48))
    coarse = (rng.normal(0.0, 14.0, (*grid, 1)) + rng.normal(0.0, 4.0, (*grid, 3))).astype(np.float32)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img += np.asarray(ground, np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    area = width * height / 1e6
    side = min(width, height)

    for _ in range(_count(rng, counts["fields"], area)):  # field parcels, ploughed stripes
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(side // 10, side // 3, size=2)
        box = cv2.boxPoints(((float(cx), float(cy)), (float(w), float(h)), float(rng.uniform(0, 90))))
        colour = _jitter(rng, (60, 140, 110) if rng.random() < 0.6 else (70, 110, 150), 30)
        cv2.fillPoly(img, [box.astype(np.int32)], colour)
        dark = tuple(max(0, c - 25) for c in colour)
        for t in np.linspace(0.0, 1.0, int(rng.integers(4, 16))):  # furrows between opposite edges
            p = box[0] + t * (box[1] - box[0])
            q = box[3] + t * (box[2] - box[3])
            cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), dark, 1)
    for _ in range(_count(rng, counts["water"], area)):  # lakes, rivers: dark blue with a shore
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(side // 8, side // 2)), int(rng.integers(side // 12, side // 3)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(img, centre, (axes[0] + 6, axes[1] + 6), angle, 0, 360, (150, 185, 200), -1)
        cv2.ellipse(img, centre, axes, angle, 0, 360, _jitter(rng, (110, 75, 35), 15), -1)
    for _ in range(_count(rng, counts["roads"], area) or int(rng.random() < 0.3)):  # roads
        horizontal = rng.random() < 0.5
        pos = int(rng.integers(0, height if horizontal else width))
        bend = int(rng.integers(-side // 6, side // 6 + 1))
        p0, p1 = ((0, pos), (width, pos + bend)) if horizontal else ((pos, 0), (pos + bend, height))
        thickness = int(rng.integers(4, 14))
        cv2.line(img, p0, p1, _jitter(rng, (95, 98, 100), 12), thickness)
        cv2.line(img, p0, p1, (220, 220, 220), 1)
    for _ in range(_count(rng, counts["roofs"], area)):  # buildings: roof plus a cast shadow
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (int(v) for v in rng.integers(8, max(9, side // 12), size=2))
        cv2.rectangle(img, (cx + 3, cy + 3), (cx + w + 3, cy + h + 3), (40, 45, 45), -1)
        roof = [(60, 60, 170), (200, 200, 200), (120, 120, 125), (70, 90, 140)][int(rng.integers(4))]
        cv2.rectangle(img, (cx, cy), (cx + w, cy + h), _jitter(rng, roof, 20), -1)
        cv2.line(img, (cx, cy + h // 2), (cx + w, cy + h // 2), (30, 30, 30), 1)
    for _ in range(_count(rng, counts["vehicles"], area)):  # vehicles: small bright rectangles
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (3, 6) if rng.random() < 0.5 else (6, 3)
        colour = tuple(int(c) for c in rng.integers(30, 255, size=3))
        cv2.rectangle(img, (cx, cy), (cx + w, cy + h), colour, -1)
    for _ in range(_count(rng, counts["rocks"], area)):  # rocks and shrubs
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, centre, int(rng.integers(2, 10)), _jitter(rng, (70, 95, 90), 25), -1)

    # Fine sensor-like grain, generated at quarter resolution (cheap) and added with saturation.
    grain = rng.integers(0, 24, size=(height // 4 + 1, width // 4 + 1, 1), dtype=np.uint8)
    grain = cv2.resize(grain, (width, height), interpolation=cv2.INTER_NEAREST)
    cv2.add(img, np.repeat(grain[..., None], 3, axis=2), dst=img)
    return img


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
        image = render_scene(rng, path[0], width, height)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok, "OpenCV failed to encode a JPEG"
        folder = root.joinpath(split, *path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{path[-1]}_{i:07d}.jpg").write_bytes(data.tobytes())
        total += data.size
    return SynthReport(root=root, images=images, classes=len(leaves), bytes=total)
