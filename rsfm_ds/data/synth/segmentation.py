"""Synthetic Potsdam and LoveDA in the releases' layouts, with learnable land-cover scenes.

A scene is painted region by region into a class map and a per-pixel base colour at the same
time (roads as strips with lane markings, buildings as rotated rectangles with a two-tone gable
roof and a ridge line, trees as clusters of crowns, low vegetation as the lighter background,
cars as small rectangles with a windscreen along the roads, water with ripples, bare soil, fields
with furrows). Texture is then added per class from three shared noise fields (smooth ~5 m,
blobby ~1 m, per-pixel grain) with class-dependent amplitudes: trees are strongly blobby, roads
and roofs smooth, fields grainy. Colour, texture and shape all carry the class, so a small model
learns it (the learning bar of issue 8 is mIoU >= 0.6 for the debug backbone).

Potsdam (:func:`synth_potsdam`): ``N`` tiles of ``size`` x ``size`` px at the real 5 cm ground
sampling (a 6000 px tile covers 300 m, a 1024 px tile 51 m), real tile ids (the first train and
test tiles of the release's lists, about 24:14), written as the release's files (see
:mod:`rsfm_ds.data.seg.potsdam`): RGB and IRRG orthophotos (uncompressed TIFF, like the release),
full colour labels and eroded ``noBoundary`` labels (LZW TIFF), where pixels within ~3 px of a
class boundary are black. A 6000 px tile takes ~6 s of CPU and ~220 MB on disk.

LoveDA (:func:`synth_loveda`): ``N`` images per split (Train, Val, Test), alternately Urban and
Rural, ``size`` px (release: 1024) at ~0.3 m, as ``<split>/<domain>/images_png/<id>.png`` with
``masks_png`` (raw values 0..7, 0 = no-data) for Train and Val; Test has images only, like the
release. Urban scenes are road grids with dense buildings, rural scenes field patchworks with
forest, rivers and farmsteads. About one image in ten has a black no-data band at its border.

The canvas, the textures and the ripples are the shared scene elements (:mod:`.elements`); the
synthetic MillionAID generator calls :func:`render_potsdam_tile` and :func:`render_loveda_image`
for its residential, urban and farmland scenes.

Everything is deterministic in ``seed``; each tile / image has its own generator, so the content
of one does not depend on how many are written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import cv2
import numpy as np

from ...errors import ConfigError
from ..images import write_image
from ..seg.loveda import LOVEDA_DOMAINS, LOVEDA_SPLITS
from ..seg.potsdam import POTSDAM_PALETTE, TEST_TILES, TRAIN_TILES, tile_path
from .elements import Canvas, Colour, Texture, jitter, render_textured, ripples

# ---------------------------------------------------------------------------------------------
# Potsdam: 0 impervious, 1 building, 2 low vegetation, 3 tree, 4 car, 5 clutter; 5 cm pixels.
_IMP, _BLD, _LOW, _TREE, _CAR, _CLU = range(6)
_POTSDAM_PX_PER_M = 20.0
_POTSDAM_TEXTURES = {_IMP: Texture(6, 3, 5), _BLD: Texture(5, 2, 4), _LOW: Texture(14, 6, 9),
                     _TREE: Texture(10, 28, 10), _CAR: Texture(2, 1, 4), _CLU: Texture(8, 6, 8)}
_ROOFS: Tuple[Colour, ...] = ((175, 85, 65, 120), (135, 75, 55, 110), (200, 120, 90, 135), (110, 90, 120, 100))
_CARS: Tuple[Colour, ...] = ((200, 30, 30, 90), (30, 60, 200, 70), (230, 230, 235, 160), (240, 200, 20, 150),
                             (40, 40, 45, 40), (20, 150, 170, 80))


def render_potsdam_tile(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic Potsdam tile: ``(uint8 [S, S, 4] R, G, B, IR, uint8 [S, S] class indices 0..5)``."""
    m = _POTSDAM_PX_PER_M
    canvas = Canvas(size, size, _LOW, (150, 185, 100, 200))
    area_m2 = (size / m) ** 2
    roads: List[Tuple[Tuple[float, float], Tuple[float, float], float]] = []
    for k in range(max(1, int(rng.poisson(size / m / 90.0)))):  # roads: full-length strips, 6-10 m
        width = rng.uniform(6, 10) * m
        pos = rng.uniform(0.15, 0.85) * size
        horizontal = (k + int(rng.integers(2))) % 2 == 0
        bend = rng.uniform(-0.05, 0.05) * size
        p0, p1 = ((0.0, pos), (float(size), pos + bend)) if horizontal else ((pos, 0.0), (pos + bend, float(size)))
        canvas.strip(p0, p1, width, _IMP, jitter(rng, (150, 150, 148, 110), 10))
        roads.append((p0, p1, width))
    for _ in range(int(rng.poisson(area_m2 / 1500.0))):  # paved yards and car parks
        canvas.rect(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(6, 20) * m, rng.uniform(5, 15) * m,
                    float(rng.choice([0.0, 90.0])) + rng.uniform(-8, 8), _IMP,
                    jitter(rng, (160, 158, 150, 115), 8))
    for _ in range(max(1, int(rng.poisson(area_m2 / 900.0)))):  # buildings: gable roofs, not on roads
        cx, cy = rng.uniform(0, size, 2)
        length, width = rng.uniform(9, 25) * m, rng.uniform(7, 14) * m
        angle = float(rng.choice([0.0, 90.0])) + rng.uniform(-10, 10)
        roof = _ROOFS[int(rng.integers(len(_ROOFS)))]
        canvas.rect(cx, cy, length, width, angle, _BLD, jitter(rng, roof, 12), allowed=(_LOW, _TREE))
        # The half of the roof facing away from the sun is darker; the ridge line is darker still.
        d = np.radians(angle + 90.0)
        canvas.rect(cx + np.cos(d) * width / 4, cy + np.sin(d) * width / 4, length, width / 2, angle, None,
                    jitter(rng, tuple(int(c * 0.78) for c in roof), 5), allowed=(_BLD,))
        canvas.rect(cx, cy, length, max(2.0, 0.15 * m), angle, None, tuple(int(c * 0.55) for c in roof),
                    allowed=(_BLD,))
    for _ in range(max(1, int(rng.poisson(area_m2 / 700.0)))):  # tree clusters: overlapping crowns
        cx, cy = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(2, 9))):
            r = rng.uniform(2, 5) * m
            ox, oy = rng.normal(0, 4 * m, 2)
            canvas.ellipse(cx + ox, cy + oy, r, r * rng.uniform(0.8, 1.0), 0.0, _TREE,
                           jitter(rng, (50, 100, 45, 175), 10), allowed=(_LOW,))
    for _ in range(max(1, int(rng.poisson(area_m2 / 4000.0)))):  # clutter: ponds (rippled) or bare soil
        cx, cy = rng.uniform(0, size, 2)
        a, b = rng.uniform(3, 10, 2) * m
        if rng.random() < 0.5:
            mask = canvas.ellipse(cx, cy, a, b, rng.uniform(0, 180), _CLU, jitter(rng, (45, 85, 150, 30), 10),
                                  allowed=(_LOW,))
            r = (mask.shape[0] - 1) // 2
            ripples(canvas, mask, int(cx) - r, int(cy) - r, int(0.8 * m), (70, 115, 175, 40), _CLU)
        else:
            canvas.ellipse(cx, cy, a, b, rng.uniform(0, 180), _CLU, jitter(rng, (150, 115, 80, 140), 12),
                           allowed=(_LOW,))
    for p0, p1, width in roads:  # lane markings, then cars parked along both edges
        (x0, y0), (x1, y1) = p0, p1
        length = float(np.hypot(x1 - x0, y1 - y0))
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        angle = float(np.degrees(np.arctan2(uy, ux)))
        for t in np.arange(0.0, length, 6 * m):
            canvas.rect(x0 + ux * (t + 1.5 * m), y0 + uy * (t + 1.5 * m), 3 * m, 0.15 * m, angle, None,
                        (235, 235, 230, 150), allowed=(_IMP,))
        for side in (-1, 1):
            t = rng.uniform(0, 8) * m
            while t < length:
                off = side * (width / 2 - 1.4 * m)
                cx, cy = x0 + ux * t - uy * off, y0 + uy * t + ux * off
                colour = _CARS[int(rng.integers(len(_CARS)))]
                canvas.rect(cx, cy, 4.5 * m, 1.9 * m, angle, _CAR, jitter(rng, colour, 15), allowed=(_IMP,))
                canvas.rect(cx + ux * 0.8 * m, cy + uy * 0.8 * m, 0.9 * m, 1.6 * m, angle, None,
                            (25, 30, 35, 30), allowed=(_CAR,))
                t += rng.uniform(5.5, 30) * m
    return render_textured(rng, canvas, _POTSDAM_TEXTURES, m), canvas.label


def erode_boundaries(label: np.ndarray, radius: int = 3, ignore: int = 255) -> np.ndarray:
    """ISPRS-style eroded label: pixels within ~``radius`` px of a class boundary set to ``ignore``."""
    kernel = np.ones((3, 3), np.uint8)
    edge = (cv2.dilate(label, kernel) != cv2.erode(label, kernel)).astype(np.uint8)
    if radius > 1:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius - 1, 2 * radius - 1))
        edge = cv2.dilate(edge, disc)
    out = label.copy()
    out[edge > 0] = ignore
    return out


@dataclass
class SynthSegReport:
    """What a synthetic segmentation writer produced."""

    root: Path
    items: List[str] = field(default_factory=list)
    """Tile ids (Potsdam) or image paths relative to ``root`` (LoveDA)."""
    bytes: int = 0


def potsdam_synth_tiles(tiles: int) -> List[str]:
    """The real tile ids a synthetic release of ``tiles`` tiles uses: first train and test ids, ~24:14.

    Raises:
        ConfigError: ``tiles`` not in 1..38.
    """
    total = len(TRAIN_TILES) + len(TEST_TILES)
    if not 1 <= tiles <= total:
        raise ConfigError(f"tiles: must be in 1..{total}, got {tiles}")
    n_test = 0 if tiles == 1 else min(len(TEST_TILES), max(1, round(tiles * len(TEST_TILES) / total)))
    n_train = min(len(TRAIN_TILES), tiles - n_test)
    n_test = tiles - n_train
    return list(TRAIN_TILES[:n_train]) + list(TEST_TILES[:n_test])


def _write(path: Path, image_bgr: np.ndarray, params: Sequence[int] = ()) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, image_bgr, params).stat().st_size


def synth_potsdam(out: Union[str, Path], tiles: int = 4, seed: int = 0, size: int = 6000) -> SynthSegReport:
    """Write ``tiles`` synthetic Potsdam tiles of ``size`` px in the release layout under ``out``.

    Raises:
        ConfigError: ``tiles`` not in 1..38 or ``size`` < 64.
    """
    if size < 64:
        raise ConfigError(f"size: must be >= 64, got {size}")
    root = Path(out)
    report = SynthSegReport(root=root)
    all_tiles = list(TRAIN_TILES + TEST_TILES)
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(POTSDAM_PALETTE)] = POTSDAM_PALETTE  # index 255 (boundary) stays black
    raw = [cv2.IMWRITE_TIFF_COMPRESSION, 1]
    lzw = [cv2.IMWRITE_TIFF_COMPRESSION, 5]
    for tile in potsdam_synth_tiles(tiles):
        rng = np.random.default_rng([seed, all_tiles.index(tile)])
        rgbi, label = render_potsdam_tile(rng, size)
        r, g, b, ir = (rgbi[..., c] for c in range(4))
        report.bytes += _write(tile_path(root, tile, "rgb"), np.dstack([b, g, r]), raw)
        report.bytes += _write(tile_path(root, tile, "irrg"), np.dstack([g, r, ir]), raw)  # IR, R, G as RGB
        report.bytes += _write(tile_path(root, tile, "label"), palette[label][..., ::-1], lzw)
        report.bytes += _write(tile_path(root, tile, "label_noBoundary"), palette[erode_boundaries(label)][..., ::-1],
                               lzw)
        report.items.append(tile)
    return report


# ---------------------------------------------------------------------------------------------
# LoveDA raw mask values: 0 no-data, 1 background, 2 building, 3 road, 4 water, 5 barren,
# 6 forest, 7 agriculture; ~0.3 m pixels.
_ND, _BG, _LB, _RD, _WT, _BR, _FO, _AG = range(8)
LOVEDA_PX_PER_M = 1 / 0.3
LOVEDA_TEXTURES = {_BG: Texture(10, 5, 7), _LB: Texture(4, 2, 4), _RD: Texture(3, 1, 3), _WT: Texture(6, 3, 3),
                    _BR: Texture(10, 4, 14), _FO: Texture(8, 24, 9), _AG: Texture(8, 3, 6)}
_LOVEDA_ROOFS: Tuple[Colour, ...] = ((205, 205, 210, 0), (70, 110, 175, 0), (170, 80, 70, 0), (215, 190, 150, 0))
_FIELDS: Tuple[Colour, ...] = ((120, 165, 80, 0), (175, 175, 95, 0), (95, 140, 70, 0), (150, 160, 110, 0))


def render_loveda_image(rng: np.random.Generator, size: int, domain: str) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic LoveDA scene: ``(uint8 [S, S, 3] RGB, uint8 [S, S] raw mask 0..7)``."""
    m = LOVEDA_PX_PER_M * size / 1024  # a smaller image shows the same scene at a coarser sampling
    urban = domain == "Urban"
    canvas = Canvas(size, size, _BG, (135, 135, 120, 0) if urban else (145, 140, 110, 0))
    if not urban:  # field patchwork with furrows
        step = rng.uniform(40, 90) * m
        for gy in np.arange(-step / 2, size, step):
            for gx in np.arange(-step / 2, size, step):
                if rng.random() < 0.2:
                    continue
                w, h = step * rng.uniform(0.8, 0.95, 2)
                angle = rng.uniform(-8, 8)
                colour = jitter(rng, _FIELDS[int(rng.integers(len(_FIELDS)))], 12)
                cx, cy = gx + step / 2, gy + step / 2
                canvas.rect(cx, cy, w, h, angle, _AG, colour)
                dark = tuple(int(c * 0.85) for c in colour)
                for t in np.arange(-h / 2, h / 2, 3 * m):
                    d = np.radians(angle + 90)
                    canvas.rect(cx + np.cos(d) * t, cy + np.sin(d) * t, w, max(1.0, 0.8 * m), angle, None, dark,
                                allowed=(_AG,))
    for _ in range(max(1, int(rng.poisson(1.0 if urban else 2.5)))):  # forest blobs
        cx, cy = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(4, 14))):
            r = rng.uniform(6, 18) * m
            ox, oy = rng.normal(0, 15 * m, 2)
            canvas.ellipse(cx + ox, cy + oy, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, 180), _FO,
                           jitter(rng, (45, 85, 50, 0), 8))
    if rng.random() < (0.3 if urban else 0.6):  # water: a river band or a lake, with ripples
        if rng.random() < 0.5:
            y0, y1 = rng.uniform(0, size, 2)
            canvas.strip((0.0, y0), (float(size), y1), rng.uniform(15, 40) * m, _WT, jitter(rng, (40, 70, 100, 0), 8))
        else:
            cx, cy = rng.uniform(0, size, 2)
            mask = canvas.ellipse(cx, cy, rng.uniform(20, 60) * m, rng.uniform(15, 40) * m, rng.uniform(0, 180), _WT,
                                  jitter(rng, (40, 70, 100, 0), 8))
            r = (mask.shape[0] - 1) // 2
            ripples(canvas, mask, int(cx) - r, int(cy) - r, max(2, int(3 * m)), (60, 95, 125, 0), _WT)
    for _ in range(int(rng.poisson(1.0))):  # barren: sandy patches
        cx, cy = rng.uniform(0, size, 2)
        canvas.ellipse(cx, cy, rng.uniform(15, 50) * m, rng.uniform(10, 35) * m, rng.uniform(0, 180), _BR,
                       jitter(rng, (185, 165, 130, 0), 10), allowed=(_BG, _AG))
    # Roads: a grid in towns, a few country roads otherwise.
    n_roads = int(rng.integers(2, 5)) if urban else int(rng.integers(1, 3))
    for k in range(n_roads):
        pos = rng.uniform(0.1, 0.9) * size
        width = rng.uniform(8, 16) * m if urban else rng.uniform(5, 9) * m
        bend = rng.uniform(-0.03, 0.03) * size
        p0, p1 = ((0.0, pos), (float(size), pos + bend)) if k % 2 == 0 else ((pos, 0.0), (pos + bend, float(size)))
        canvas.strip(p0, p1, width, _RD, jitter(rng, (95, 95, 100, 0) if urban else (120, 115, 105, 0), 6))
    for _ in range(int(rng.poisson(60 if urban else 8))):  # buildings, not on roads or water
        cx, cy = rng.uniform(0, size, 2)
        if not urban and rng.random() < 0.7:
            cx, cy = cx * 0.3 + size * 0.35, cy * 0.3 + size * 0.35  # farmsteads cluster
        length, width = rng.uniform(10, 40) * m, rng.uniform(8, 20) * m
        angle = float(rng.choice([0.0, 90.0])) + rng.uniform(-6, 6)
        roof = _LOVEDA_ROOFS[int(rng.integers(len(_LOVEDA_ROOFS)))]
        canvas.rect(cx, cy, length, width, angle, _LB, jitter(rng, roof, 10), allowed=(_BG, _AG, _BR, _FO))
    if rng.random() < 0.1:  # no-data band at a border, black in the image
        band = int(rng.uniform(0.05, 0.25) * size)
        sl = [(slice(None), slice(0, band)), (slice(None), slice(size - band, None)),
              (slice(0, band), slice(None)), (slice(size - band, None), slice(None))][int(rng.integers(4))]
        canvas.label[sl] = _ND
        canvas.base[sl] = 0
    rgbi = render_textured(rng, canvas, LOVEDA_TEXTURES, m)
    return rgbi[..., :3], canvas.label


def synth_loveda(out: Union[str, Path], images: int = 4, seed: int = 0, size: int = 1024) -> SynthSegReport:
    """Write ``images`` synthetic LoveDA images per split in the release layout under ``out``.

    Images alternate Urban / Rural; ids are consecutive integers over Train, Val, Test.

    Raises:
        ConfigError: ``images`` < 1 or ``size`` < 64.
    """
    if images < 1:
        raise ConfigError(f"images: must be >= 1, got {images}")
    if size < 64:
        raise ConfigError(f"size: must be >= 64, got {size}")
    root = Path(out)
    report = SynthSegReport(root=root)
    image_id = 0
    for split in LOVEDA_SPLITS:
        for i in range(images):
            domain = LOVEDA_DOMAINS[i % 2]
            rng = np.random.default_rng([seed, image_id])
            rgb, mask = render_loveda_image(rng, size, domain)
            folder = root / split / domain
            report.bytes += _write(folder / "images_png" / f"{image_id}.png", rgb[..., ::-1])
            if split != "Test":
                report.bytes += _write(folder / "masks_png" / f"{image_id}.png", mask)
            report.items.append(f"{split}/{domain}/images_png/{image_id}.png")
            image_id += 1
    return report
