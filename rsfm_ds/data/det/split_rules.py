"""Which objects a patch window keeps, and how a cut object is written: the two reference rules.

Both rules take every object x window pair at once: a bounding-box test picks the pairs that can
overlap, then shapely 2's vectorised GEOS functions intersect them in one call (no Python loop
over pairs). GEOS is also what both references call, one pair at a time, so the intersection
areas, vertex lists and therefore the written labels are the same to the last bit (for a given
GEOS version: the vertex order of an intersection is GEOS's choice).

``devkit`` -- the DOTA devkit's ``ImgSplit_multi_process.py`` (``splitbase.savepatches``):

- Polygons are the label file's coordinates truncated to integers (``parse_dota_poly2``), times
  the rate. The window's clip rectangle is ``(left, up, min(left + size, W - 1),
  min(up + size, H - 1))`` in the resized ``W`` x ``H`` image (the ``- 1`` is the devkit's).
- ``IoF = area(object & rectangle) / area(object)`` ("half_iou"). Objects of zero area are never
  written. ``IoF == 1``: the whole polygon, minus the window corner, each coordinate truncated
  to an integer (``polyorig2sub``), no clamping; difficulty kept.
- ``0 < IoF < 1``: the intersection, oriented counter-clockwise (``shapely.geometry.polygon.orient``,
  sign 1), without its closing vertex. 4 vertices: kept. 5 vertices: reduced to 4 by
  ``GetPoly4FromPoly5`` (the shortest edge, the closing edge included, is replaced by its
  midpoint). Fewer than 4 (a triangle) or more than 5: the object is not written. Then
  ``choose_best_pointorder_fit_another`` picks, of the 4 cyclic rotations of the quadrilateral,
  the one with the smallest sum of squared distances to the original polygon; coordinates minus
  the window corner are truncated to integers and clamped to ``[1, size]`` (a value ``<= 1``
  becomes 1, ``>= size`` becomes ``size``). Difficulty: the object's when ``IoF > iof_thr``,
  else ``2``; the object is written either way.
- An intersection that is not one polygon (a non-convex object cut into two pieces) stops the
  devkit with an error (it reads ``.exterior``); here the object is not written in that window.

``mmrotate`` -- mmrotate 0.x ``tools/data/dota/split/img_split.py`` (``bbox_overlaps_iof``,
``get_window_obj``, ``crop_and_save_img``):

- Polygons are the label file's coordinates as float32. Pairs whose horizontal boxes overlap with
  positive area are intersected with the full window ``(x, y, x + size, y + size)``;
  ``IoF = area(object & window) / max(float32(area(object)), 1e-6)``.
- An object is written when ``IoF >= iof_thr``: whole (not clipped), translated by the window
  corner in float32. Difficulty ``2`` when ``IoF < 1`` ("trunc"), else the object's.

Both references stop with a GEOS ``TopologyException`` on a self-intersecting polygon (a "bow
tie" label); here such an object is never written, and is reported by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

TRUNCATED_DIFFICULTY = 2
"""The difficulty both references write for an object cut by the window (below the threshold
in the devkit, any cut in mmrotate)."""


@dataclass
class WindowObjects:
    """Objects written into windows: one row per (window, object) pair, sorted by window, then
    object (the references' file order).

    Attributes:
        window: ``int64 [M]`` index of the window.
        obj: ``int64 [M]`` index of the object in the image's annotation.
        polygons: ``float64 [M, 8]`` the written corners, in the window's coordinates.
        difficult: ``int64 [M]`` the written difficulty.
    """

    window: np.ndarray
    obj: np.ndarray
    polygons: np.ndarray
    difficult: np.ndarray

    @staticmethod
    def build(window: np.ndarray, obj: np.ndarray, polygons: np.ndarray, difficult: np.ndarray
              ) -> "WindowObjects":
        order = np.lexsort((obj, window))
        return WindowObjects(np.asarray(window, np.int64)[order], np.asarray(obj, np.int64)[order],
                             np.asarray(polygons, np.float64).reshape(-1, 8)[order],
                             np.asarray(difficult, np.int64)[order])


def _quads(polys: np.ndarray) -> np.ndarray:
    """``[N, 8]`` corner lists -> shapely Polygons, as ``shgeo.Polygon([(x1, y1), ..., (x4, y4)])``."""
    return shapely.polygons(np.asarray(polys, dtype=np.float64).reshape(-1, 4, 2))


def _rects(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Rectangles with the references' vertex order (top-left, top-right, bottom-right,
    bottom-left): GEOS's output vertex order depends on it."""
    corners = np.stack([x0, y0, x1, y0, x1, y1, x0, y1], axis=-1).astype(np.float64)
    return shapely.polygons(corners.reshape(-1, 4, 2))


def _overlapping_pairs(hbb: np.ndarray, rects: np.ndarray, usable: np.ndarray):
    """``(i, k)`` of the usable objects whose boxes ``hbb [N, 4]`` overlap ``rects [K, 4]`` with
    positive area (the others have an empty intersection)."""
    lo = np.maximum(hbb[:, None, :2], rects[None, :, :2])
    hi = np.minimum(hbb[:, None, 2:], rects[None, :, 2:])
    overlap = (hi > lo).all(-1) & usable[:, None]  # [N, K]
    return np.nonzero(overlap)


def _hbb(polys: np.ndarray) -> np.ndarray:
    return np.concatenate([polys[:, 0::2].min(1, keepdims=True), polys[:, 1::2].min(1, keepdims=True),
                           polys[:, 0::2].max(1, keepdims=True), polys[:, 1::2].max(1, keepdims=True)], 1)


def is_simple(polys: np.ndarray) -> np.ndarray:
    """``bool [N]``: the quadrilaterals GEOS can intersect (valid: not self-intersecting, not
    collapsed to a line or a point)."""
    return shapely.is_valid(_quads(polys)) if len(polys) else np.zeros(0, bool)


def self_intersecting(polys: np.ndarray) -> np.ndarray:
    """``bool [N]``: quadrilaterals with area that GEOS refuses to intersect ("bow ties")."""
    quads = _quads(polys)
    return ~shapely.is_valid(quads) & (shapely.area(quads) > 0) if len(polys) else np.zeros(0, bool)


def poly5_to_poly4(points: np.ndarray) -> np.ndarray:
    """The devkit's ``GetPoly4FromPoly5`` for ``[M, 5, 2]`` pentagons -> ``[M, 4, 2]``.

    Edge ``j`` joins vertex ``j`` and ``j + 1`` (edge 4 closes the ring). The first shortest edge
    ``j`` is replaced by its midpoint, put in vertex ``j``'s place; vertex ``j + 1`` (mod 5) goes.
    """
    m = len(points)
    nxt = np.roll(points, -1, axis=1)
    pos = np.argmin(np.hypot(*(nxt - points).transpose(2, 0, 1)), axis=1)  # [M], first minimum
    rows = np.arange(m)
    out = points.copy()
    out[rows, pos] = (points[rows, pos] + nxt[rows, pos]) / 2
    keep = np.ones((m, 5), bool)
    keep[rows, (pos + 1) % 5] = False
    return out[keep].reshape(m, 4, 2)


def best_rotation(quads: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The devkit's ``choose_best_pointorder_fit_another``: of the 4 cyclic rotations of each
    ``quads [M, 8]`` (starting at vertex 1, 2, 3 or 4), the first with the least sum of squared
    coordinate differences to ``reference [M, 8]``."""
    q = quads.reshape(-1, 4, 2)
    rotations = np.stack([np.roll(q, -r, axis=1).reshape(-1, 8) for r in range(4)], axis=1)  # [M, 4, 8]
    cost = ((rotations - reference[:, None, :]) ** 2).sum(-1)
    return rotations[np.arange(len(q)), np.argmin(cost, axis=1)]


def devkit_window_objects(polys: np.ndarray, difficult: np.ndarray, windows: np.ndarray, width: int,
                          height: int, size: int, iof_thr: float) -> WindowObjects:
    """The DOTA devkit's labels for every window (see the module docstring).

    Args:
        polys: ``float64 [N, 8]`` corners in the *resized* image: the file's integer-truncated
            coordinates times the rate.
        difficult: ``int64 [N]`` the file's flags.
        windows: ``int64 [K, 4]`` ``(left, up, left + size, up + size)`` in the resized image.
        width, height: size of the resized image (the clip rectangle ends at ``W - 1, H - 1``).
        size: the window side (the clamp's upper bound).
        iof_thr: ``IoF > iof_thr`` keeps the object's difficulty, otherwise it is written as 2.
    """
    polys = np.asarray(polys, dtype=np.float64).reshape(-1, 8)
    left, up = windows[:, 0], windows[:, 1]
    clip = np.stack([left, up, np.minimum(left + size, width - 1), np.minimum(up + size, height - 1)], 1)
    objects = _quads(polys)
    area = shapely.area(objects)
    usable = (area > 0) & is_simple(polys)
    i, k = _overlapping_pairs(_hbb(polys), clip.astype(np.float64), usable)
    inter = shapely.intersection(objects[i], _rects(*clip[k].T))
    iof = shapely.area(inter) / area[i]
    corner = np.stack([left, up] * 4, axis=1)[k].astype(np.float64)  # [P, 8]

    whole = iof == 1
    cut = np.flatnonzero((iof > 0) & ~whole)
    oriented = shapely.orient_polygons(inter[cut], exterior_cw=False)
    is_polygon = shapely.get_type_id(oriented) == shapely.GeometryType.POLYGON
    cut, oriented = cut[is_polygon], oriented[is_polygon]
    ring = shapely.get_exterior_ring(oriented)
    coords, owner = shapely.get_coordinates(ring, return_index=True)
    n_vertices = np.bincount(owner, minlength=len(ring)) - 1  # the closing vertex repeats the first
    starts = np.cumsum(n_vertices + 1) - (n_vertices + 1)  # first coordinate of each ring
    quads = []
    for n in (4, 5):  # the two vertex counts the devkit writes
        sel = np.flatnonzero(n_vertices == n)
        pts = coords[starts[sel, None] + np.arange(n)]  # [S, n, 2]
        quads.append((cut[sel], pts if n == 4 else poly5_to_poly4(pts)))
    cut = np.concatenate([c for c, _ in quads])
    clipped = np.concatenate([q.reshape(-1, 8) for _, q in quads])
    clipped = best_rotation(clipped, polys[i[cut]])
    clipped = np.trunc(clipped - corner[cut])
    clipped = np.where(clipped <= 1, 1.0, np.where(clipped >= size, float(size), clipped))
    kept_flag = np.where(iof[cut] > iof_thr, difficult[i[cut]], TRUNCATED_DIFFICULTY)

    w = np.flatnonzero(whole)
    return WindowObjects.build(
        np.concatenate([k[w], k[cut]]), np.concatenate([i[w], i[cut]]),
        np.concatenate([np.trunc(polys[i[w]] - corner[w]), clipped]),
        np.concatenate([difficult[i[w]], kept_flag]))


def mmrotate_window_objects(polys: np.ndarray, difficult: np.ndarray, windows: np.ndarray,
                            iof_thr: float) -> WindowObjects:
    """mmrotate's labels for every window (see the module docstring).

    Args:
        polys: ``[N, 8]`` corners in image pixels (used as float32, as mmrotate loads them).
        difficult: ``int64 [N]`` the file's flags.
        windows: ``int64 [K, 4]`` ``(x, y, x + size, y + size)`` in image pixels.
        iof_thr: ``IoF >= iof_thr`` writes the object.
    """
    polys = np.asarray(polys, dtype=np.float32).reshape(-1, 8)
    objects = _quads(polys)
    usable = is_simple(polys)
    area = np.clip(shapely.area(objects).astype(np.float32), 1e-6, np.inf)  # mmrotate's "unions"
    i, k = _overlapping_pairs(_hbb(polys).astype(np.float64), windows.astype(np.float64), usable)
    inter_area = shapely.area(shapely.intersection(objects[i], _rects(*windows[k].T)))
    iof = inter_area / area[i].astype(np.float64)
    sel = iof >= iof_thr
    i, k, iof = i[sel], k[sel], iof[sel]
    shift = -np.stack([windows[k, 0], windows[k, 1]] * 4, axis=1).astype(np.float32)
    return WindowObjects.build(k, i, polys[i] + shift,
                               np.where(iof < 1, TRUNCATED_DIFFICULTY, difficult[i]))


__all__ = ["TRUNCATED_DIFFICULTY", "WindowObjects", "best_rotation", "devkit_window_objects", "is_simple",
           "mmrotate_window_objects", "poly5_to_poly4", "self_intersecting"]
