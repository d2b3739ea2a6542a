"""RoIAlignRotated in plain torch, with mmcv's semantics.

Why our own: mmcv's compiled ``RoIAlignRotated`` does not build against torch 2.14
(docs/rotated_ops.md); torchvision's ``roi_align`` is axis-aligned only.

Semantics (mmcv ``roi_align_rotated``): a RoI ``(batch_idx, cx, cy, w, h, theta)`` is scaled by
``spatial_scale`` (minus 0.5 on the centre when ``aligned``) and split into ``oh x ow`` bins; each
bin averages ``gh x gw`` bilinear samples at the bin's sub-cell centres. A sample at RoI-local
offset ``(xx, yy)`` from the centre lies at

    x = cx + xx cos(t) + yy sin(t),    y = cy - xx sin(t) + yy cos(t),    t = theta

and ``clockwise=True`` negates theta. **This package's boxes put the w-axis along (cos, sin)
(image coordinates), which is mmcv's ``clockwise=True``**; mmrotate's Oriented R-CNN configs
set ``clockwise=True`` for the same reason. The default ``False`` is kept for parity with mmcv.

Bilinear rule (mmcv / torchvision): a sample with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``
contributes 0; otherwise negative coordinates clamp to 0 and coordinates at or past the last
row / column clamp to it. ``aligned=False`` also forces RoI sides to at least 1 (mmcv's legacy
mode).

``sampling_ratio <= 0`` is mmcv's adaptive grid, ``ceil(roi_side / out_side)`` per RoI; it is
vectorised by sampling every RoI on the largest grid and giving the surplus samples weight 0, so
its cost follows the largest RoI. Pass ``sampling_ratio > 0`` (Oriented R-CNN uses 2) to bound
it.

Implementation: every output bin is a weighted sum of 4 * gh * gw feature vectors, one
``F.embedding_bag`` over the ``[N * H * W, C]`` feature rows. No ``[K, samples, C]`` intermediate
is built, and autograd gives the gradient w.r.t. ``features`` (RoIs get none, as in mmcv).
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair(size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _grid(rois_side: Tensor, out_side: int, sampling_ratio: int) -> Tuple[Tensor, int]:
    """Samples per bin along one axis: per-RoI counts ``[K]`` and their maximum."""
    if sampling_ratio > 0:
        return torch.full_like(rois_side, sampling_ratio, dtype=torch.long), sampling_ratio
    counts = torch.ceil(rois_side / out_side).long()
    return counts, max(int(counts.max()), 1)


def _sample_offsets(side: Tensor, out_side: int, counts: Tensor,
                    grid: int) -> Tuple[Tensor, Tensor]:
    """RoI-local sample coordinates along one axis ``[K, out_side, grid]`` and validity.

    Same operation order as mmcv's kernel: ``(start + bin * i) + (j + 0.5) * bin / count``.
    """
    bin_size = (side / out_side)[:, None, None]
    cell = torch.arange(out_side, device=side.device, dtype=side.dtype)[None, :, None]
    sub = torch.arange(grid, device=side.device)
    count = counts[:, None, None].to(side.dtype)
    frac = (sub.to(side.dtype)[None, None, :] + 0.5) * bin_size / count
    coords = -side[:, None, None] / 2 + cell * bin_size + frac
    return coords, (sub[None, :] < counts[:, None])[:, None, :]


def roi_align_rotated(features: Tensor, rois: Tensor, output_size: Union[int, Tuple[int, int]],
                      spatial_scale: float = 1.0, sampling_ratio: int = 0, aligned: bool = True,
                      clockwise: bool = False) -> Tensor:
    """Rotated RoIAlign (mmcv semantics, see the module docstring).

    Args:
        features: ``[N, C, H, W]``.
        rois: ``[K, 6]`` ``(batch_idx, cx, cy, w, h, theta)`` in input-image coordinates,
            theta in radians.
        output_size: ``oh`` or ``(oh, ow)``.
        spatial_scale: feature-map size / input-image size (1 / stride).
        sampling_ratio: samples per bin per axis; ``<= 0`` for mmcv's adaptive grid.
        aligned: shift by -0.5 pixel so pixel centres sit at half-integers (torchvision's and
            mmcv's ``aligned=True``).
        clockwise: negate theta; ``True`` matches this package's box convention.

    Returns:
        ``[K, C, oh, ow]`` in the features' dtype.
    """
    oh, ow = _pair(output_size)
    num_imgs, channels, height, width = features.shape
    k = rois.shape[0]
    if k == 0:
        return features.new_zeros(0, channels, oh, ow)
    dtype = torch.promote_types(features.dtype, torch.float32)
    rois = rois.detach().to(dtype)
    offset = 0.5 if aligned else 0.0
    cx = rois[:, 1] * spatial_scale - offset
    cy = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale
    roi_h = rois[:, 4] * spatial_scale
    theta = -rois[:, 5] if clockwise else rois[:, 5]
    if not aligned:
        roi_w, roi_h = roi_w.clamp_min(1.0), roi_h.clamp_min(1.0)

    count_h, grid_h = _grid(roi_h, oh, sampling_ratio)
    count_w, grid_w = _grid(roi_w, ow, sampling_ratio)
    yy, valid_y = _sample_offsets(roi_h, oh, count_h, grid_h)  # [K, oh, gh]
    xx, valid_x = _sample_offsets(roi_w, ow, count_w, grid_w)  # [K, ow, gw]
    # Broadcast to samples [K, oh, gh, ow, gw].
    yy, xx = yy[:, :, :, None, None], xx[:, None, None, :, :]
    cos, sin = torch.cos(theta).view(-1, 1, 1, 1, 1), torch.sin(theta).view(-1, 1, 1, 1, 1)
    y = yy * cos - xx * sin + cy.view(-1, 1, 1, 1, 1)
    x = yy * sin + xx * cos + cx.view(-1, 1, 1, 1, 1)

    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    # Clamping to [0, H] / [0, W] also keeps indices of the zero-weight outside samples valid.
    y, x = y.clamp(0, height), x.clamp(0, width)
    y_low, x_low = y.floor().long(), x.floor().long()
    at_end_y, at_end_x = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = y_low.clamp(max=height - 1), x_low.clamp(max=width - 1)
    y_high = torch.where(at_end_y, y_low, y_low + 1)
    x_high = torch.where(at_end_x, x_low, x_low + 1)
    ly = torch.where(at_end_y, 0.0, y - y_low)
    lx = torch.where(at_end_x, 0.0, x - x_low)
    hy, hx = 1 - ly, 1 - lx

    count = (count_h * count_w).clamp_min(1).to(dtype).view(-1, 1, 1, 1, 1)
    scale = (inside & valid_y[..., None, None] & valid_x[:, None, None]).to(dtype) / count
    base = (rois[:, 0].long() * (height * width)).view(-1, 1, 1, 1, 1)
    index = torch.stack([base + y_low * width + x_low, base + y_low * width + x_high,
                         base + y_high * width + x_low, base + y_high * width + x_high], dim=-1)
    weight = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=-1) * scale[..., None]

    # Bags: one per output bin [K, oh, ow]; members: its gh * gw samples x 4 corners.
    index = index.permute(0, 1, 3, 2, 4, 5).reshape(k * oh * ow, -1)
    weight = weight.permute(0, 1, 3, 2, 4, 5).reshape(k * oh * ow, -1)
    table = features.permute(0, 2, 3, 1).reshape(num_imgs * height * width, channels)
    pooled = F.embedding_bag(index, table, per_sample_weights=weight.to(features.dtype),
                             mode="sum")
    return pooled.view(k, oh, ow, channels).permute(0, 3, 1, 2).contiguous()
