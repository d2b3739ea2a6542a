"""Scene elements shared by every synthetic generator: objects, ground, land-cover canvas, textures.

The pretraining imagery (:mod:`.millionaid`) and the downstream datasets (:mod:`.detection` for
DOTA / DIOR-R, :mod:`.segmentation` for Potsdam / LoveDA) are drawn from this one set of elements,
so what MAE learns to reconstruct on the synthetic MillionAID images is what the fine-tuned
models must recognise later: the same planes, ships, storage tanks, vehicles and courts at the
same pixel sizes, and the same land-cover canvas and per-class textures.

Objects (oriented, drawn into a ``uint8 [H, W, 3]`` BGR image from a box ``(cx, cy, w, h, theta)``
in pixels and radians, ``w`` along the object's long axis; sizes at ~0.3 m/px, see
:func:`sample_size`):

- :func:`draw_plane`: light-grey cross (fuselage, swept wings, tailplane) with a cast shadow;
- :func:`draw_ship`: hull with a pointed bow and a white superstructure, on a dark-water patch;
- :func:`draw_tank`: pale disc with a dark rim, roof ring and shadow crescent;
- :func:`draw_vehicle`: saturated-colour rectangle with a windscreen and a shadow;
- :func:`draw_court`: green tennis court on a red-brown apron, white lines and a net.

:func:`place_objects` samples non-overlapping boxes of given kinds; :func:`detection_ground` is the
textured ground (colour field, field parcels, roads, grain) the objects stand on.

Land cover (:class:`Canvas`): a class map and a base colour painted region by region (rotated
rectangles, ellipses, strips), then :func:`render_textured` adds per-class texture from three
shared noise fields (smooth, blobby, grain) whose amplitudes a :class:`Texture` gives per class;
:func:`ripples` draws waves on water.

Every function draws from the generator it is given in a fixed order: the same generator state
gives the same pixels, which the downstream generators' byte-for-byte reproducibility relies on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

Colour = Tuple[int, ...]
KINDS: Tuple[str, ...] = ("plane", "ship", "storage-tank", "small-vehicle", "tennis-court")
"""The object kinds, by their DOTA class names."""


def to_image(local: np.ndarray, box: Tuple[float, ...]) -> np.ndarray:
    """Local points ``[P, 2]`` (u along w, v along h, centred) -> image pixels ``[P, 2]``."""
    cx, cy, _, _, t = box
    c, s = math.cos(t), math.sin(t)
    u, v = local[:, 0], local[:, 1]
    return np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=1)


def fill(img: np.ndarray, pts: np.ndarray, colour: Colour) -> None:
    # 4 fractional bits: sub-pixel vertices keep small rotated shapes crisp.
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)


def draw_lines(img: np.ndarray, pts: np.ndarray, pairs: List[Tuple[int, int]], colour: Colour, width: int) -> None:
    for a, b in pairs:
        p, q = np.round(pts[[a, b]] * 16).astype(np.int32)
        cv2.line(img, tuple(p.tolist()), tuple(q.tolist()), colour, width, cv2.LINE_AA, shift=4)


def local_rect(w: float, h: float, u0: float = 0.0, v0: float = 0.0) -> np.ndarray:
    return np.array([[u0 - w / 2, v0 - h / 2], [u0 + w / 2, v0 - h / 2],
                     [u0 + w / 2, v0 + h / 2], [u0 - w / 2, v0 + h / 2]])


def draw_plane(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
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
        fill(img, to_image(part, box) + offset, (60, 62, 64))
    for part in parts:
        fill(img, to_image(part, box), (shade, shade, shade - 8))
    fill(img, to_image(local_rect(0.5 * length, body * 0.35, 0.1 * length), box), (shade - 60,) * 3)


def draw_ship(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    _, _, length, beam, _ = box
    water = local_rect(length + 0.5 * beam + 10, beam * 2.2 + 10)
    fill(img, to_image(water, box), (int(rng.integers(80, 110)), int(rng.integers(55, 75)), 30))
    hull = np.array([[length / 2, 0.0], [0.2 * length, beam / 2], [-length / 2, beam / 2],
                     [-length / 2, -beam / 2], [0.2 * length, -beam / 2]])
    tone = int(rng.integers(70, 150))
    fill(img, to_image(hull, box), (tone, tone + 5, tone + 10))
    deck = hull * 0.7 + [-0.05 * length, 0.0]
    fill(img, to_image(deck, box), (tone + 40, tone + 45, tone + 45))
    fill(img, to_image(local_rect(0.2 * length, 0.6 * beam, -0.3 * length), box), (235, 235, 235))


def draw_tank(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    cx, cy, d, _, _ = box
    r = d / 2
    centre = (int(round(cx * 16)), int(round(cy * 16)))
    shadow = (int(round((cx + 0.18 * d) * 16)), int(round((cy + 0.18 * d) * 16)))
    tone = int(rng.integers(205, 245))
    cv2.circle(img, shadow, int(r * 16), (55, 58, 60), -1, cv2.LINE_AA, shift=4)
    cv2.circle(img, centre, int(r * 16), (tone - 90,) * 3, -1, cv2.LINE_AA, shift=4)
    cv2.circle(img, centre, int(r * 0.86 * 16), (tone, tone, tone - 5), -1, cv2.LINE_AA, shift=4)
    cv2.circle(img, centre, int(r * 0.45 * 16), (tone - 45,) * 3, max(1, int(d / 25)), cv2.LINE_AA, shift=4)


def draw_vehicle(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    _, _, length, width, _ = box
    hue = int(rng.integers(0, 180))
    colour = cv2.cvtColor(np.array([[[hue, 220, 230]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    fill(img, to_image(local_rect(length, width), box) + 0.12 * width, (50, 52, 55))  # shadow
    fill(img, to_image(local_rect(length, width), box), tuple(int(c) for c in colour))
    fill(img, to_image(local_rect(0.18 * length, 0.8 * width, 0.22 * length), box), (35, 35, 40))
    fill(img, to_image(local_rect(0.12 * length, 0.8 * width, -0.32 * length), box), (45, 45, 50))


def draw_court(img: np.ndarray, box: Tuple[float, ...], rng: np.random.Generator) -> None:
    _, _, length, width, _ = box
    fill(img, to_image(local_rect(length, width), box), (60, 80, int(rng.integers(140, 170))))  # apron
    court_l, court_w = 0.8 * length, 0.7 * width
    fill(img, to_image(local_rect(court_l, court_w), box), (80, int(rng.integers(140, 170)), 60))
    line = max(1, int(round(width / 30)))
    corners = to_image(local_rect(court_l, court_w), box)
    draw_lines(img, corners, [(0, 1), (1, 2), (2, 3), (3, 0)], (245, 245, 245), line)
    inner = np.array([[-0.27 * court_l, -court_w / 2], [-0.27 * court_l, court_w / 2],
                      [0.27 * court_l, -court_w / 2], [0.27 * court_l, court_w / 2],
                      [-0.27 * court_l, 0.0], [0.27 * court_l, 0.0]])
    draw_lines(img, to_image(inner, box), [(0, 1), (2, 3), (4, 5)], (245, 245, 245), line)
    net = to_image(np.array([[0.0, -width / 2], [0.0, width / 2]]), box)
    draw_lines(img, net, [(0, 1)], (30, 30, 30), line + 1)


DRAW_OBJECT: Dict[str, Callable[[np.ndarray, Tuple[float, ...], np.random.Generator], None]] = {
    "plane": draw_plane, "ship": draw_ship, "storage-tank": draw_tank,
    "small-vehicle": draw_vehicle, "tennis-court": draw_court}


def sample_size(kind: str, rng: np.random.Generator) -> Tuple[float, float]:
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


def detection_ground(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
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
        pts = to_image(local_rect(w, h), (c[0], c[1], w, h, rng.uniform(-math.pi / 2, math.pi / 2)))
        tint = tuple(int(v) for v in np.clip(base + rng.normal(0, 14, 3), 0, 255))
        fill(img, pts, tint)
    for _ in range(int(rng.integers(1, 4))):  # roads crossing the scene
        p = rng.uniform(0, [width, height])
        t = rng.uniform(0, math.pi)
        d = np.array([math.cos(t), math.sin(t)]) * 2 * max(width, height)
        ends = np.stack([p - d, p + d])
        draw_lines(img, ends, [(0, 1)], (88, 90, 92), int(rng.integers(8, 16)))
    # Sensor-like grain at half resolution: cheap to draw and to compress.
    grain = rng.integers(0, 12, size=(height // 2 + 1, width // 2 + 1), dtype=np.uint8)
    grain = cv2.resize(grain, (width, height), interpolation=cv2.INTER_NEAREST)
    return cv2.add(img, cv2.merge([grain, grain, grain]))


def place_objects(rng: np.random.Generator, width: int, height: int, count: int, margin: float = 4.0,
                  kinds: Sequence[str] = KINDS) -> List[Tuple[str, Tuple[float, float, float, float, float]]]:
    """Sample up to ``count`` non-overlapping ``(kind, (cx, cy, w, h, theta))`` inside the image.

    Each kind is drawn uniformly from ``kinds``; boxes are not le90-regularised (the drawers take
    the raw box). Circumscribed circles (grown for shadows and water patches) are disjoint.
    """
    placed: List[Tuple[str, Tuple[float, float, float, float, float]]] = []
    circles: List[Tuple[float, float, float]] = []
    for _ in range(count * 20):
        if len(placed) == count:
            break
        kind = kinds[int(rng.integers(len(kinds)))]
        w, h = sample_size(kind, rng)
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


class Canvas:
    """A class map ``uint8 [H, W]`` and a base colour ``uint8 [H, W, 4]`` (R, G, B, near-IR)."""

    def __init__(self, height: int, width: int, cls: int, colour: Colour):
        self.label = np.full((height, width), cls, np.uint8)
        self.base = np.empty((height, width, 4), np.uint8)
        self.base[:] = colour

    @property
    def shape(self) -> Tuple[int, int]:
        return self.label.shape

    def stamp(self, mask: np.ndarray, x0: int, y0: int, cls: Optional[int], colour: Colour,
              allowed: Optional[Sequence[int]] = None) -> None:
        """Paint where the local ``mask`` (placed at ``x0, y0``) is set and the class is ``allowed``.

        ``cls=None`` changes the colour only (markings, ripples).
        """
        h, w = self.shape
        mh, mw = mask.shape
        ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + mw, w), min(y0 + mh, h)
        if ax0 >= ax1 or ay0 >= ay1:
            return
        m = mask[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] > 0
        sub = self.label[ay0:ay1, ax0:ax1]
        if allowed is not None:
            m &= np.isin(sub, allowed)
        if cls is not None:
            sub[m] = cls
        self.base[ay0:ay1, ax0:ax1][m] = colour

    def poly(self, points: np.ndarray, cls: Optional[int], colour: Colour,
             allowed: Optional[Sequence[int]] = None) -> None:
        """Fill a polygon ``float [N, 2]`` of (x, y) image coordinates."""
        x0, y0 = np.floor(points.min(0)).astype(int)
        x1, y1 = np.ceil(points.max(0)).astype(int)
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
        cv2.fillPoly(mask, [np.round(points - (x0, y0)).astype(np.int32)], 1)
        self.stamp(mask, x0, y0, cls, colour, allowed)

    def rect(self, cx: float, cy: float, length: float, width: float, angle: float, cls: Optional[int],
             colour: Colour, allowed: Optional[Sequence[int]] = None) -> None:
        """Fill a rotated rectangle; ``angle`` in degrees, ``length`` along it."""
        self.poly(cv2.boxPoints(((cx, cy), (length, width), angle)), cls, colour, allowed)

    def ellipse(self, cx: float, cy: float, a: float, b: float, angle: float, cls: Optional[int],
                colour: Colour, allowed: Optional[Sequence[int]] = None) -> np.ndarray:
        """Fill an ellipse with half-axes ``a, b``; returns its local mask (placed at ``cx - r, cy - r``)."""
        r = int(np.ceil(max(a, b))) + 1
        mask = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
        cv2.ellipse(mask, (r, r), (max(1, int(a)), max(1, int(b))), angle, 0, 360, 1, -1)
        self.stamp(mask, int(cx) - r, int(cy) - r, cls, colour, allowed)
        return mask

    def strip(self, p0: Tuple[float, float], p1: Tuple[float, float], width: float, cls: Optional[int],
              colour: Colour, allowed: Optional[Sequence[int]] = None) -> None:
        """A straight band of ``width`` px from ``p0`` to ``p1`` (roads, rivers, markings)."""
        (x0, y0), (x1, y1) = p0, p1
        length = float(np.hypot(x1 - x0, y1 - y0))
        angle = float(np.degrees(np.arctan2(y1 - y0, x1 - x0)))
        self.rect((x0 + x1) / 2, (y0 + y1) / 2, length, width, angle, cls, colour, allowed)


def jitter(rng: np.random.Generator, colour: Colour, amount: int) -> Colour:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def noise_field(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise ``float32 [H, W]`` with features ~``cell`` px, roughly unit variance."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32) * 1.6  # bicubic upsampling shrinks variance
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


@dataclass(frozen=True)
class Texture:
    """Per-class amplitudes (grey levels) of the smooth, blobby and grain noise fields."""

    smooth: float
    blobby: float
    grain: float


def render_textured(rng: np.random.Generator, canvas: Canvas, textures: Dict[int, Texture], px_per_m: float
            ) -> np.ndarray:
    """Base colour + per-class texture -> ``uint8 [H, W, 4]`` (R, G, B, near-IR)."""
    h, w = canvas.shape
    amps = np.zeros((3, 256), np.float32)
    for cls, t in textures.items():
        amps[:, cls] = (t.smooth, t.blobby, t.grain)
    grain = cv2.resize(rng.standard_normal((h // 2 + 1, w // 2 + 1)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_NEAREST)
    tex = amps[0][canvas.label] * noise_field(rng, h, w, 5.0 * px_per_m)
    tex += amps[1][canvas.label] * noise_field(rng, h, w, 1.0 * px_per_m)
    tex += amps[2][canvas.label] * grain
    out = np.empty((h, w, 4), np.uint8)
    for c in range(4):
        out[..., c] = np.clip(canvas.base[..., c] + tex, 0, 255)
    return out


def ripples(canvas: Canvas, mask: np.ndarray, x0: int, y0: int, period: int, colour: Colour, cls: int) -> None:
    """Lighter wavy lines across the pixels of class ``cls`` in a water body's local ``mask``."""
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    waves = ((yy + 0.3 * period * np.sin(xx / max(period, 1))) % period) < max(1, period // 4)
    canvas.stamp(mask * waves, x0, y0, None, colour, allowed=(cls,))
