"""Box coders of Oriented R-CNN (Xie et al., ICCV 2021), following mmrotate's.

Why our own: mmrotate's coders import mmdet/mmcv, which do not install against torch 2.14
(docs/rotated_ops.md). Formulas and defaults follow mmrotate's ``MidpointOffsetCoder`` (RPN)
and ``DeltaXYWHTRBBoxCoder`` (``DeltaXYWHAOBBoxCoder`` in 0.x) with the options its le90
Oriented R-CNN config sets (``edge_swap=True, proj_xy=True``); the default target stds are
that config's. Boxes follow ``box_geometry``'s convention; decoded boxes are le90.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .box_geometry import box_to_polygon, regularize_le90, wrap_angle_le90

# mmrotate's wh_ratio_clip = 16 / 1000: |dw|, |dh| <= log(62.5) when decoding.
DEFAULT_MAX_RATIO = abs(math.log(16 / 1000))


def _float(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _normalize(deltas: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    return (deltas - means.to(deltas)) / stds.to(deltas)


def _denormalize(deltas: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    return deltas * stds.to(deltas) + means.to(deltas)


def _hbox_centre_size(boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1


class MidpointOffsetCoder:
    """RPN coder: horizontal anchors ``(x1, y1, x2, y2)`` <-> oriented boxes, 6 deltas.

    Encoding, with anchor centre/size ``(px, py, pw, ph)`` and the target's horizontal bounds
    ``(gx, gy, gw, gh)`` (centre/size of its corners' bounding box)::

        dx = (gx - px) / pw     dw = log(gw / pw)     da = (ga - gx) / gw
        dy = (gy - py) / ph     dh = log(gh / ph)     db = (gb - gy) / gh

    where ``(ga, gy - gh/2)`` is the target's top vertex (on the top side of the bounds) and
    ``(gx + gw/2, gb)`` its right vertex; then ``(deltas - means) / stds``.

    The top vertex is the corner with the smallest y; corners within ``tie_tolerance`` pixels of
    it are tied and the one with the largest x wins, so an axis-aligned target encodes as
    ``da = db = 0.5`` even when rounding in its corners makes one of them a hair higher. The
    right vertex is the next corner clockwise on screen, so the two are always adjacent.
    mmrotate uses the same top rule with 0.1 px and picks the right vertex by a separate
    0.1 px rule on x; the two agree except for near-axis-aligned targets. We default to
    1e-3 px because 0.1 px snaps thin, slightly tilted boxes to axis-aligned ones (a
    109 x 5 px box tilted by 1 degree decodes ~2 px off); ``tie_tolerance=0`` makes
    encode/decode exact inverses.

    Decoding: denormalise, clamp ``dw, dh`` to ``+-max_ratio`` and ``da, db`` to ``[-0.5, 0.5]``,
    rebuild the bounds, then the vertices ``(gx + da gw, y1)``, ``(x2, gy + db gh)``,
    ``(gx - da gw, y2)``, ``(x1, gy - db gh)``: a parallelogram centred at ``(gx, gy)``. Its
    shorter half-diagonal is stretched to the longer one, which makes it a rectangle with the
    same centre and diagonal directions (Oriented R-CNN's parallelogram -> rectangle step); the
    rectangle is returned as an le90 box.

    Args:
        target_means, target_stds: delta normalisation (defaults: Oriented R-CNN's RPN).
        max_ratio: bound on ``|dw|, |dh|`` when decoding.
        tie_tolerance: pixels within which corners tie for the top vertex.
    """

    def __init__(self, target_means: Sequence[float] = (0.0,) * 6,
                 target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5),
                 max_ratio: float = DEFAULT_MAX_RATIO, tie_tolerance: float = 1e-3) -> None:
        if len(target_means) != 6 or len(target_stds) != 6:
            raise ValueError("MidpointOffsetCoder needs 6 target means and 6 target stds")
        self.means = torch.tensor(target_means, dtype=torch.float64)
        self.stds = torch.tensor(target_stds, dtype=torch.float64)
        self.max_ratio = max_ratio
        self.tie_tolerance = tie_tolerance

    def encode(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        """Deltas ``[..., 6]`` taking ``anchors`` ``[..., 4]`` to ``gt_boxes`` ``[..., 5]``."""
        anchors, gt_boxes = _float(anchors), _float(gt_boxes)
        px, py, pw, ph = _hbox_centre_size(anchors)
        poly = box_to_polygon(gt_boxes).unflatten(-1, (4, 2))
        xs, ys = poly[..., 0], poly[..., 1]  # [..., 4], positive (screen-clockwise) order
        x_min, x_max = xs.amin(-1), xs.amax(-1)
        y_min, y_max = ys.amin(-1), ys.amax(-1)
        gx, gy, gw, gh = (x_min + x_max) * 0.5, (y_min + y_max) * 0.5, x_max - x_min, y_max - y_min
        tied = ys <= y_min[..., None] + self.tie_tolerance
        top = torch.where(tied, xs, -math.inf).argmax(-1, keepdim=True)
        ga = xs.gather(-1, top).squeeze(-1)
        gb = ys.gather(-1, (top + 1) % 4).squeeze(-1)
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw),
                              torch.log(gh / ph), (ga - gx) / gw, (gb - gy) / gh], dim=-1)
        return _normalize(deltas, self.means, self.stds)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """le90 boxes ``[..., 5]`` from ``anchors`` ``[..., 4]`` and ``deltas`` ``[..., 6]``."""
        anchors, deltas = _float(anchors), _float(deltas)
        dx, dy, dw, dh, da, db = _denormalize(deltas, self.means, self.stds).unbind(-1)
        px, py, pw, ph = _hbox_centre_size(anchors)
        gw = pw * dw.clamp(-self.max_ratio, self.max_ratio).exp()
        gh = ph * dh.clamp(-self.max_ratio, self.max_ratio).exp()
        gx, gy = px + pw * dx, py + ph * dy
        # Half-diagonals to the top vertex (a) and the right vertex (b); bottom = -a, left = -b.
        a = torch.stack([da.clamp(-0.5, 0.5) * gw, -0.5 * gh], dim=-1)
        b = torch.stack([0.5 * gw, db.clamp(-0.5, 0.5) * gh], dim=-1)
        len_a = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
        len_b = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
        longest = torch.maximum(len_a, len_b)
        a = a * torch.where(len_a > 0, longest / len_a, 1)
        b = b * torch.where(len_b > 0, longest / len_b, 1)
        # Corners top (c + a), right (c + b), bottom (c - a): sides b - a (the w-axis) and
        # -(a + b) (the h-axis). The angle comes from the longer side, which is defined even
        # when the rectangle degenerates to a segment (da = -db = +-0.5).
        side_w, side_h = b - a, -(a + b)
        len_w = torch.linalg.vector_norm(side_w, dim=-1)
        len_h = torch.linalg.vector_norm(side_h, dim=-1)
        theta = torch.where(len_w >= len_h, torch.atan2(side_w[..., 1], side_w[..., 0]),
                            torch.atan2(side_h[..., 1], side_h[..., 0]) - math.pi / 2)
        return regularize_le90(torch.stack([gx, gy, len_w, len_h, theta], dim=-1))


class DeltaXYWHTCoder:
    """RoI-head coder: rotated proposals <-> rotated targets, 5 deltas, le90.

    With proposal ``(px, py, pw, ph, pt)`` and le90 target ``(gx, gy, gw, gh, gt)``, the centre
    offset is measured in the proposal's frame and the angle difference wrapped to
    ``[-pi/2, pi/2)``; of the two equivalent target parameterisations (``gw, gh, gt``) and
    (``gh, gw, gt + pi/2``) the one with the smaller ``|dt|`` is used (mmrotate's edge swap)::

        dx = ( cos(pt) (gx - px) + sin(pt) (gy - py)) / pw
        dy = (-sin(pt) (gx - px) + cos(pt) (gy - py)) / ph
        dt = wrap(gt' - pt),  dw = log(gw' / pw),  dh = log(gh' / ph)

    then ``(deltas - means) / stds``. Decoding inverts this (``|dw|, |dh|`` clamped to
    ``max_ratio``; centres optionally clamped to the image) and regularises to le90.

    Args:
        target_means, target_stds: delta normalisation (defaults: Oriented R-CNN's RoI head).
        max_ratio: bound on ``|dw|, |dh|`` when decoding.
    """

    def __init__(self, target_means: Sequence[float] = (0.0,) * 5,
                 target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.1),
                 max_ratio: float = DEFAULT_MAX_RATIO) -> None:
        if len(target_means) != 5 or len(target_stds) != 5:
            raise ValueError("DeltaXYWHTCoder needs 5 target means and 5 target stds")
        self.means = torch.tensor(target_means, dtype=torch.float64)
        self.stds = torch.tensor(target_stds, dtype=torch.float64)
        self.max_ratio = max_ratio

    def encode(self, proposals: Tensor, gt_boxes: Tensor) -> Tensor:
        """Deltas ``[..., 5]`` taking ``proposals`` ``[..., 5]`` to ``gt_boxes`` ``[..., 5]``."""
        proposals, gt_boxes = _float(proposals), _float(gt_boxes)
        px, py, pw, ph, pt = proposals.unbind(-1)
        gx, gy, gw, gh, gt = regularize_le90(gt_boxes).unbind(-1)
        cos, sin = torch.cos(pt), torch.sin(pt)
        dx = (cos * (gx - px) + sin * (gy - py)) / pw
        dy = (-sin * (gx - px) + cos * (gy - py)) / ph
        dt_same = wrap_angle_le90(gt - pt)
        dt_swap = wrap_angle_le90(gt - pt + math.pi / 2)
        same = dt_same.abs() < dt_swap.abs()
        dw = torch.log(torch.where(same, gw, gh) / pw)
        dh = torch.log(torch.where(same, gh, gw) / ph)
        deltas = torch.stack([dx, dy, dw, dh, torch.where(same, dt_same, dt_swap)], dim=-1)
        return _normalize(deltas, self.means, self.stds)

    def decode(self, proposals: Tensor, deltas: Tensor,
               max_shape: Optional[Tuple[int, int]] = None) -> Tensor:
        """le90 boxes ``[..., 5]`` from ``proposals`` ``[..., 5]`` and ``deltas`` ``[..., 5]``.

        ``max_shape`` ``(H, W)`` clamps decoded centres to ``[0, W - 1] x [0, H - 1]``.
        """
        proposals, deltas = _float(proposals), _float(deltas)
        dx, dy, dw, dh, dt = _denormalize(deltas, self.means, self.stds).unbind(-1)
        px, py, pw, ph, pt = proposals.unbind(-1)
        cos, sin = torch.cos(pt), torch.sin(pt)
        gx = px + dx * pw * cos - dy * ph * sin
        gy = py + dx * pw * sin + dy * ph * cos
        if max_shape is not None:
            gx = gx.clamp(0, max_shape[1] - 1)
            gy = gy.clamp(0, max_shape[0] - 1)
        gw = pw * dw.clamp(-self.max_ratio, self.max_ratio).exp()
        gh = ph * dh.clamp(-self.max_ratio, self.max_ratio).exp()
        return regularize_le90(torch.stack([gx, gy, gw, gh, pt + dt], dim=-1))
