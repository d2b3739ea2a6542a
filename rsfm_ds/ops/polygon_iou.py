"""Exact IoU of convex quadrilaterals and rotated boxes, vectorised over pairs.

Why our own: mmcv's compiled ``box_iou_rotated`` does not build against torch 2.14 headers and
mmrotate caps mmcv below 2.2 (docs/rotated_ops.md); Gaussian approximations are not
acceptable for matching or evaluation. Everything here is plain torch, so the same code runs on
CPU and CUDA.

Method: Sutherland-Hodgman clipping of the subject polygon P against the four edge half-planes
of the clip polygon Q, for all pairs at once. P is carried as a closed chain of directed segments
in fixed slots (x and y each ``[2 (start, end), K, B]``, pairs last so that every kernel runs on
long contiguous rows) rather than as a vertex list. Clipping moves segment endpoints
(elementwise: no compaction, no sorting), and the stretch of boundary a half-plane cuts away is
replaced by one new segment along its line, from the point where the chain leaves the half-plane
to the point where it comes back. A clip therefore adds exactly one slot (4 segments become 8
after four clips), and every new vertex is computed once and shared by the two segments that
meet there, so the chain stays closed in floating point. The intersection area is the shoelace
sum over segments, ``0.5 * sum cross(start, end)``.

Precision: geometry runs in float64. A point within ``tol = 64 eps * max |coordinate|`` of a clip
line counts as on it (inside), so identical, nested and touching boxes, whose shared edges agree
only up to rounding, clip cleanly. IoU matches shapely to ~1e-13 on float64 inputs (where
shapely's own overlay is right: GEOS 3.14 returns points for some pairs with coinciding edges),
so float32 inputs are exact up to the float32 result; the contract is <= 1e-5. Degenerate
(zero-area) polygons have IoU 0, never NaN. Devices need float64 (CPU, CUDA; not MPS).

Dense ``[N, M]`` matrices are computed over candidate pairs only: pairs whose axis-aligned
bounding boxes are disjoint have IoU 0 and are skipped. ``chunk_size`` bounds the number of pairs
clipped at once (peak memory about 1 KB per pair); the candidate mask is built for blocks of
``64 * chunk_size // M`` rows, so memory stays bounded for any N.

Two paths compute the same numbers: the plain torch code below (the reference, used on CUDA)
and, for CPU tensors, a fused C++ kernel that runs the same clipping per pair in a compiled loop
(``rotated_iou_fused`` says how it is built, selected and why; ``RSFM_ROTATED_OPS=plain|fused``
forces one). The fused path ignores ``chunk_size``: it needs no per-pair scratch memory. ``mode="iof"`` divides by the first polygon's area instead of
the union (mmcv's ``box_iou_rotated`` ``mode``).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import Tensor

from .box_geometry import box_to_polygon
from .rotated_iou_fused import select_kernel

DEFAULT_CHUNK_SIZE = 1 << 13
# Denominators: the union (IoU) or the first polygon's area (IoF); the codes the kernel takes.
MODES = {"iou": 0, "iof": 1}

# Extra candidate filter for a block of rows [r0, r1): returns a [r1 - r0, M] bool mask.
PairFilter = Callable[[int, int], Tensor]


@dataclass
class ConvexSet:
    """Convex quadrilaterals prepared for clipping (float64, positively oriented).

    One row per polygon, so a batch of pairs is a row gather from each side.

    Attributes:
        subject: ``[N, 9]`` for use as the clipped polygon: vertex x (``0:4``), vertex y
            (``4:8``), area (``8``; negative orientation counts as zero).
        clip: ``[N, 13]`` for use as the clipping polygon: x (``0:4``) and y (``4:8``) of the
            unit direction of edge ``i -> i+1`` (zero for a degenerate edge, which then
            constrains nothing), edge offsets ``cross(dir_i, vert_i)`` (``8:12``; a point p is
            inside edge i's half-plane when ``cross(dir_i, p) - offset_i >= 0``), area (``12``).
        aabbs: ``[4, N]`` axis-aligned bounds (x_min, y_min, x_max, y_max).
        scale: 0-d, the largest absolute vertex coordinate.
    """

    subject: Tensor
    clip: Tensor
    aabbs: Tensor
    scale: Tensor

    @classmethod
    def from_vertices(cls, verts: Tensor) -> "ConvexSet":
        """Build from ``[N, 4, 2]`` float64 vertices, convex and positively oriented."""
        x, y = verts[..., 0], verts[..., 1]  # [N, 4]
        ex, ey = x.roll(-1, dims=1) - x, y.roll(-1, dims=1) - y
        length = torch.hypot(ex, ey)
        inv = torch.where(length > 0, 1 / length.clamp_min(torch.finfo(verts.dtype).tiny), 0)
        dx, dy = ex * inv, ey * inv
        offsets = dx * y - dy * x
        area = 0.5 * (x * y.roll(-1, dims=1) - y * x.roll(-1, dims=1)).sum(1, keepdim=True)
        area = area.clamp_min(0)
        aabbs = torch.stack([x.amin(1), y.amin(1), x.amax(1), y.amax(1)])
        scale = verts.abs().amax() if verts.numel() else verts.new_zeros(())
        return cls(torch.cat([x, y, area], 1), torch.cat([dx, dy, offsets, area], 1), aabbs, scale)

    def __len__(self) -> int:
        return self.subject.shape[0]

    def take(self, index: Tensor) -> "ConvexSet":
        """The polygons at ``index`` (same ``scale``, so tolerances do not change)."""
        return ConvexSet(self.subject[index], self.clip[index], self.aabbs[:, index], self.scale)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def convex_quads(polys: Tensor) -> Tensor:
    """Convex hull of each quadrilateral ``[N, 8]`` as ``[N, 4, 2]`` float64, positively oriented.

    Vertices are sorted by angle around their mean, which repairs clockwise and
    self-intersecting vertex orders; a point inside the triangle of the other three (a non-convex
    quad) then shows up as the one reflex vertex and is replaced by its predecessor, leaving the
    triangle hull with a zero-length edge. For the convex quads DOTA annotates the hull is the
    quad itself.
    """
    pts = polys.to(torch.float64).reshape(-1, 4, 2)
    rel = pts - pts.mean(dim=1, keepdim=True)
    order = torch.atan2(rel[..., 1], rel[..., 0]).argsort(dim=1)
    pts = pts.gather(1, order[..., None].expand(-1, -1, 2))
    prev, nxt = pts.roll(1, dims=1), pts.roll(-1, dims=1)
    reflex = _cross(pts - prev, nxt - pts) < 0
    return torch.where(reflex[..., None], prev, pts)


def box_vertices(boxes: Tensor) -> Tensor:
    """Corners of ``boxes`` ``[N, 5]`` as ``[N, 4, 2]`` float64, positively oriented."""
    return box_to_polygon(boxes.to(torch.float64)).reshape(-1, 4, 2)


def intersection_area(subject: Tensor, clip_dirs: Tensor, clip_offsets: Tensor,
                      tol: Tensor) -> Tensor:
    """Area of ``subject ∩ clip`` for B aligned pairs of convex quads (pair index last).

    Args:
        subject: ``[2, 4, B]`` float64 vertices of P (x/y, vertex, pair).
        clip_dirs: ``[2, 4, B]`` unit edge directions of Q (see ``ConvexSet.clip``).
        clip_offsets: ``[4, B]`` edge offsets of Q.
        tol: 0-d tensor; points closer than this to a clip line count as on it.

    Returns:
        ``[B]`` float64 intersection areas (>= 0 up to rounding).
    """
    batch = subject.shape[-1]
    # Segment k of the chain runs from (x[0, k], y[0, k]) to (x[1, k], y[1, k]); slots 4..7
    # receive the segments that the four clips add.
    x = subject.new_empty(2, 8, batch)
    y = subject.new_empty(2, 8, batch)
    x[0, :4], y[0, :4] = subject[0], subject[1]
    x[1, :4], y[1, :4] = subject[0].roll(-1, dims=0), subject[1].roll(-1, dims=0)
    neg_dy = -clip_dirs[1]
    for j in range(4):
        k = 4 + j
        xs, ys = x[:, :k], y[:, :k]
        f = ys * clip_dirs[0, j]
        f.addcmul_(xs, neg_dy[j]).sub_(clip_offsets[j])
        out = (f < -tol).to(subject.dtype)  # [2, k, B]: 1 where the endpoint is outside
        # Where both endpoints are out, t only needs to lie in [0, 1]: the segment collapses to
        # a point on itself, which stays outside and adds no area.
        t = (f[0] / (f[0] - f[1])).nan_to_num_(0.0).clamp_(0, 1)  # [k, B]
        cut_x = torch.lerp(xs[0], xs[1], t)
        cut_y = torch.lerp(ys[0], ys[1], t)
        # lerp with weight exactly 0 or 1 returns that endpoint bit for bit, so the moved
        # endpoints and the new segment below share their vertices exactly.
        xs.lerp_(cut_x, out)
        ys.lerp_(cut_y, out)
        # The chain leaves the half-plane along one segment (weight row 0) and comes back along
        # another (row 1); a convex chain does each at most once. The new segment joins those
        # two points; with no crossing both weights are zero and it is a point.
        w = (out.flip(0) - out).clamp_(min=0)
        torch.sum(w * cut_x, dim=1, out=x[:, k])
        torch.sum(w * cut_y, dim=1, out=y[:, k])
    return 0.5 * (x[0] * y[1] - y[0] * x[1]).sum(0)


def tolerance(a: ConvexSet, b: ConvexSet) -> Tensor:
    """0-d float64: points closer than this to a clip line count as on it, for pairs of a, b."""
    # Side tests are differences of products of coordinates, so their rounding error grows with
    # the coordinates' magnitude; 64 eps leaves a wide margin over the few eps they accumulate.
    scale = torch.maximum(a.scale, b.scale).clamp_min(1.0)
    return 64 * torch.finfo(torch.float64).eps * scale


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")


def kernel_for(a: ConvexSet, b: ConvexSet) -> Optional[ModuleType]:
    """The fused kernel when it applies to this pair of sets (CPU tensors), else None."""
    return select_kernel(a.subject.device)


def _iou_of_pairs(a: ConvexSet, b: ConvexSet, ia: Tensor, ib: Tensor, tol: Tensor,
                  chunk_size: int, mode: str = "iou",
                  kernel: Optional[ModuleType] = None) -> Tensor:
    """IoU (or IoF) of the pairs ``(a[ia[k]], b[ib[k]])`` -> ``[len(ia)]`` float64."""
    if kernel is not None:
        return kernel.overlap_pairs(a.subject, b.clip, ia, ib, float(tol.detach()), MODES[mode])
    out = torch.empty(ia.shape[0], dtype=torch.float64, device=ia.device)
    for k0 in range(0, ia.shape[0], chunk_size):
        pa = a.subject.index_select(0, ia[k0:k0 + chunk_size]).t().contiguous()  # [9, B]
        pb = b.clip.index_select(0, ib[k0:k0 + chunk_size]).t().contiguous()  # [13, B]
        batch = pa.shape[1]
        inter = intersection_area(pa[:8].view(2, 4, batch), pb[:8].view(2, 4, batch), pb[8:12],
                                  tol)
        area_a, area_b = pa[8], pb[12]
        inter = torch.minimum(inter.clamp_min(0), torch.minimum(area_a, area_b))
        # IoF (mmcv's mode "iof") divides by the first polygon's area; the same zero rule holds.
        union = area_a if mode == "iof" else area_a + area_b - inter
        # Zero union means both polygons are degenerate: IoU 0, not NaN.
        positive = union > 0
        out[k0:k0 + chunk_size] = torch.where(positive, inter, 0) / torch.where(positive, union, 1)
    return out


def _aabb_overlap(a: Tensor, b: Tensor) -> Tensor:
    """Bounds ``[4, n]`` and ``[4, M]`` -> ``[n, M]``: the closed boxes intersect."""
    return ((a[0, :, None] <= b[2]) & (b[0] <= a[2, :, None])
            & (a[1, :, None] <= b[3]) & (b[1] <= a[3, :, None]))


def iou_blocks(a: ConvexSet, b: ConvexSet, chunk_size: int = DEFAULT_CHUNK_SIZE,
               pair_filter: Optional[PairFilter] = None, prune: bool = True,
               mode: str = "iou") -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
    """IoU of every pair that can overlap, as sparse lists, one block of rows at a time.

    Args:
        a, b: the two sets (N and M polygons).
        chunk_size: pairs clipped at once; rows are scanned in blocks of ``64 * chunk_size // M``.
        pair_filter: optional extra mask per row block (e.g. upper triangle, same label).
        prune: skip pairs with disjoint bounding boxes (their IoU is 0).
        mode: ``"iou"`` or ``"iof"`` (intersection over the area of ``a``'s polygon).

    Yields:
        ``(rows [P], cols [P], iou [P] float64)`` for the P candidate pairs of a block; pairs
        not yielded have IoU 0 (or were filtered out).
    """
    _check_mode(mode)
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return
    tol = tolerance(a, b)
    kernel = kernel_for(a, b)
    # The candidate mask is cheap next to the clipping, so it is built for many rows at once.
    block = max(1, 64 * chunk_size // m)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        if prune:
            cand = _aabb_overlap(a.aabbs[:, r0:r1], b.aabbs)
        else:
            cand = torch.ones(r1 - r0, m, dtype=torch.bool, device=a.subject.device)
        if pair_filter is not None:
            cand &= pair_filter(r0, r1)
        rows, cols = cand.nonzero(as_tuple=True)
        rows = rows + r0
        yield rows, cols, _iou_of_pairs(a, b, rows, cols, tol, chunk_size, mode, kernel)


def _iou_matrix(a: ConvexSet, b: ConvexSet, chunk_size: int, dtype: torch.dtype,
                mode: str) -> Tensor:
    _check_mode(mode)
    kernel = kernel_for(a, b)
    if kernel is None or len(a) == 0 or len(b) == 0:
        out = torch.zeros(len(a), len(b), dtype=dtype, device=a.subject.device)
        for rows, cols, iou in iou_blocks(a, b, chunk_size, mode=mode):
            out[rows, cols] = iou.to(dtype)
        return out
    # The kernel applies the bounding-box filter per pair itself and writes float32 or float64
    # directly (the same rounding as computing in float64 and casting).
    direct = dtype in (torch.float32, torch.float64)
    out = torch.empty(len(a), len(b), dtype=dtype if direct else torch.float64)
    kernel.overlap_matrix(a.subject, b.clip, a.aabbs.t().contiguous(), b.aabbs.t().contiguous(),
                          float(tolerance(a, b).detach()), MODES[mode], True, out)
    return out if direct else out.to(dtype)


def _iou_aligned(a: ConvexSet, b: ConvexSet, chunk_size: int, dtype: torch.dtype,
                 mode: str) -> Tensor:
    _check_mode(mode)
    if len(a) != len(b):
        raise ValueError(f"aligned IoU needs equal counts, got {len(a)} and {len(b)}")
    if len(a) == 0:
        return torch.empty(0, dtype=dtype, device=a.subject.device)
    idx = torch.arange(len(a), device=a.subject.device)
    return _iou_of_pairs(a, b, idx, idx, tolerance(a, b), chunk_size, mode,
                         kernel_for(a, b)).to(dtype)


def _result_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    dtype = torch.result_type(x, y)
    return dtype if dtype.is_floating_point else torch.float32


def polygon_iou(polys1: Tensor, polys2: Tensor, aligned: bool = False,
                chunk_size: int = DEFAULT_CHUNK_SIZE, mode: str = "iou") -> Tensor:
    """Exact IoU of quadrilaterals ``x1 y1 ... x4 y4``.

    Each quad is replaced by its convex hull (see ``convex_quads``), so vertex order (clockwise,
    counter-clockwise, self-intersecting) does not matter.

    Args:
        polys1: ``[N, 8]``.
        polys2: ``[M, 8]`` (``M == N`` when ``aligned``).
        aligned: IoU of row k with row k only.
        chunk_size: pairs processed at once by the plain path (memory bound, about 1 KB per
            pair).
        mode: ``"iou"``, or ``"iof"`` for the intersection over the area of the first argument's
            polygon (mmcv's ``box_iou_rotated(..., mode="iof")``).

    Returns:
        ``[N, M]`` (``[N]`` when aligned) in the inputs' floating dtype (float32 for integers).
    """
    a = ConvexSet.from_vertices(convex_quads(polys1))
    b = ConvexSet.from_vertices(convex_quads(polys2))
    dtype = _result_dtype(polys1, polys2)
    return (_iou_aligned if aligned else _iou_matrix)(a, b, chunk_size, dtype, mode)


def box_iou_rotated(boxes1: Tensor, boxes2: Tensor, aligned: bool = False,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, mode: str = "iou") -> Tensor:
    """Exact IoU of rotated boxes ``(cx, cy, w, h, theta)``.

    Args:
        boxes1: ``[N, 5]``.
        boxes2: ``[M, 5]`` (``M == N`` when ``aligned``).
        aligned: IoU of row k with row k only.
        chunk_size: pairs processed at once by the plain path (memory bound, about 1 KB per
            pair).
        mode: ``"iou"``, or ``"iof"`` for the intersection over the area of the first argument's
            polygon (mmcv's ``box_iou_rotated(..., mode="iof")``).

    Returns:
        ``[N, M]`` (``[N]`` when aligned) in the inputs' floating dtype. ``w, h`` must be
        non-negative; zero-area boxes have IoU 0 with everything.
    """
    a = ConvexSet.from_vertices(box_vertices(boxes1))
    b = ConvexSet.from_vertices(box_vertices(boxes2))
    dtype = _result_dtype(boxes1, boxes2)
    return (_iou_aligned if aligned else _iou_matrix)(a, b, chunk_size, dtype, mode)
