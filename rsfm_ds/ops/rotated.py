"""Rotated-box operations: the public interface.

Rotated ops are ours because mmcv's compiled ops do not build against torch 2.14 headers and
mmrotate caps mmcv below 2.2 (docs/rotated_ops.md). They are plain torch, vectorised over boxes
and pairs, on CPU and CUDA, and exact: IoU by polygon clipping (not a Gaussian approximation), NMS
equal to sequential greedy NMS. On CPU, IoU and NMS run the same algorithms in a fused C++ kernel
built on first use (``rotated_iou_fused``; ``RSFM_ROTATED_OPS=plain`` turns it off).

Conventions (``box_geometry``): a box is ``(cx, cy, w, h, theta)``, theta in radians, image
coordinates (y down), w-axis along ``(cos theta, sin theta)``; le90 means ``w >= h`` and theta in
``[-pi/2, pi/2)``. A polygon is ``x1 y1 x2 y2 x3 y3 x4 y4``.

=========================  ==============================================================
``box_to_polygon``         ``[..., 5] -> [..., 8]``
``polygon_to_box``         ``[..., 8] -> [..., 5]`` le90 minimum-area rectangle
``regularize_le90``        ``[..., 5] -> [..., 5]``
``box_area``               ``[..., 5] -> [...]``
``wrap_angle_le90``        angles modulo pi into ``[-pi/2, pi/2)``
``polygon_iou``            ``[N, 8] x [M, 8] -> [N, M]`` (``[N]`` aligned), exact, any vertex order;
                           ``mode="iof"`` divides by the first polygon's area
``box_iou_rotated``        ``[N, 5] x [M, 5] -> [N, M]`` (``[N]`` aligned), exact; ``mode`` as above
``nms_rotated``            greedy NMS -> kept indices by decreasing score
``batched_nms_rotated``    the same within each label
``roi_align_rotated``      ``[N, C, H, W], [K, 6] -> [K, C, oh, ow]`` (mmcv semantics; pass
                           ``clockwise=True`` for this package's boxes)
``MidpointOffsetCoder``    Oriented R-CNN RPN coder (anchors ``[..., 4]`` <-> boxes, 6 deltas)
``DeltaXYWHTCoder``        Oriented R-CNN RoI-head coder (boxes <-> boxes, 5 deltas)
=========================  ==============================================================
"""
from .box_geometry import (box_area, box_to_polygon, polygon_to_box, regularize_le90,
                           wrap_angle_le90)
from .coders import DeltaXYWHTCoder, MidpointOffsetCoder
from .nms import batched_nms_rotated, nms_rotated
from .polygon_iou import box_iou_rotated, polygon_iou
from .roi_align_rotated import roi_align_rotated

__all__ = [
    "box_area", "box_to_polygon", "polygon_to_box", "regularize_le90", "wrap_angle_le90",
    "polygon_iou", "box_iou_rotated", "nms_rotated", "batched_nms_rotated", "roi_align_rotated",
    "MidpointOffsetCoder", "DeltaXYWHTCoder",
]
