"""Rotated-box conventions and conversions.

A box is ``(cx, cy, w, h, theta)``: theta in radians, image coordinates (x right, y down), the
w-axis along ``u = (cos t, sin t)`` and the h-axis along ``v = (-sin t, cos t)``. Its corners are
``c -+ (w/2) u -+ (h/2) v`` in the order

    c - w/2 u - h/2 v,  c + w/2 u - h/2 v,  c + w/2 u + h/2 v,  c - w/2 u + h/2 v

which for ``theta = 0`` is top-left, top-right, bottom-right, bottom-left: clockwise on screen and
a positive shoelace sum ``sum(x_i y_{i+1} - x_{i+1} y_i)``. Every polygon this package produces has
that orientation.

le90 is the regular form: ``w >= h`` and ``theta`` in ``[-pi/2, pi/2)``. The same rectangle has
four parameterisations (swap w/h with a quarter turn, add half turns); le90 picks one, except for
squares, whose theta is only defined modulo pi/2.

``polygon_to_box`` computes the minimum-area enclosing rectangle in torch rather than with
``cv2.minAreaRect``, whose angle range changed between OpenCV 4 and 5 (docs/rotated_ops.md).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Pairs of the 4 vertices. Every convex-hull edge of 4 points joins one of these pairs, and the
# minimum-area rectangle has a side along a hull edge, so trying all six directions is exact.
_PAIR_I = (0, 0, 0, 1, 1, 2)
_PAIR_J = (1, 2, 3, 2, 3, 3)


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def wrap_angle_le90(theta: Tensor) -> Tensor:
    """Wrap angles (any shape) into ``[-pi/2, pi/2)``, i.e. modulo pi."""
    wrapped = torch.remainder(theta + math.pi / 2, math.pi) - math.pi / 2
    # remainder() can round up to exactly pi for inputs just below a multiple of pi.
    return torch.where(wrapped >= math.pi / 2, wrapped - math.pi, wrapped)


def regularize_le90(boxes: Tensor) -> Tensor:
    """Return the le90 form of ``boxes`` ``[..., 5]``: ``w >= h``, theta in ``[-pi/2, pi/2)``.

    Swaps w and h (adding a quarter turn) only when ``w < h``, so the function is idempotent;
    the rectangle itself never changes.
    """
    cx, cy, w, h, theta = boxes.unbind(-1)
    swap = w < h
    theta = wrap_angle_le90(torch.where(swap, theta + math.pi / 2, theta))
    return torch.stack(
        [cx, cy, torch.where(swap, h, w), torch.where(swap, w, h), theta], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area ``w * h`` of ``boxes`` ``[..., 5]`` -> ``[...]``."""
    return boxes[..., 2] * boxes[..., 3]


def box_to_polygon(boxes: Tensor) -> Tensor:
    """Corners of ``boxes`` ``[..., 5]`` -> ``[..., 8]`` as ``x1 y1 x2 y2 x3 y3 x4 y4``.

    Corner order as in the module docstring (positive shoelace orientation for ``w, h >= 0``).
    """
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Half-extent vectors along the w-axis (ux, uy) and the h-axis (vx, vy).
    ux, uy = 0.5 * w * cos, 0.5 * w * sin
    vx, vy = -0.5 * h * sin, 0.5 * h * cos
    return torch.stack([
        cx - ux - vx, cy - uy - vy,
        cx + ux - vx, cy + uy - vy,
        cx + ux + vx, cy + uy + vy,
        cx - ux + vx, cy - uy + vy,
    ], dim=-1)


def polygon_to_box(polys: Tensor) -> Tensor:
    """Minimum-area enclosing rectangle of quadrilaterals ``[..., 8]`` -> le90 boxes ``[..., 5]``.

    Works for any vertex order (clockwise, counter-clockwise, self-intersecting) and for
    non-convex or degenerate quads: the rectangle encloses the convex hull of the four points.
    Computed in float64 around the points' mean; returned in the input's floating dtype
    (float32 for integer input). All points equal gives ``w = h = 0, theta = 0``.
    """
    out_dtype = _float_dtype(polys)
    pts = polys.to(torch.float64).reshape(*polys.shape[:-1], 4, 2)
    mean = pts.mean(dim=-2, keepdim=True)
    rel = pts - mean  # [..., 4, 2]

    d = rel[..., _PAIR_J, :] - rel[..., _PAIR_I, :]  # [..., 6, 2]
    length = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    # Coincident pairs get the x-axis: any direction gives an enclosing rectangle, so extra
    # candidates cannot beat the true minimum.
    u = torch.where(length > 0, d / length.clamp_min(torch.finfo(torch.float64).tiny),
                    torch.tensor([1.0, 0.0], dtype=torch.float64, device=polys.device))
    ux, uy = u[..., 0:1], u[..., 1:2]  # [..., 6, 1]
    px, py = rel[..., None, :, 0], rel[..., None, :, 1]  # [..., 1, 4]
    s = px * ux + py * uy  # coordinate along u: [..., 6, 4]
    t = py * ux - px * uy  # coordinate along v = (-uy, ux)
    s_max, s_min = s.amax(-1), s.amin(-1)
    t_max, t_min = t.amax(-1), t.amin(-1)
    w, h = s_max - s_min, t_max - t_min  # [..., 6]

    best = (w * h).argmin(dim=-1, keepdim=True)  # [..., 1]

    def pick(x: Tensor) -> Tensor:
        return x.gather(-1, best).squeeze(-1)

    bx, by = pick(ux.squeeze(-1)), pick(uy.squeeze(-1))
    s_mid = 0.5 * (pick(s_max) + pick(s_min))
    t_mid = 0.5 * (pick(t_max) + pick(t_min))
    cx = mean[..., 0, 0] + s_mid * bx - t_mid * by
    cy = mean[..., 0, 1] + s_mid * by + t_mid * bx
    boxes = torch.stack([cx, cy, pick(w), pick(h), torch.atan2(by, bx)], dim=-1)
    return regularize_le90(boxes).to(out_dtype)
