"""Rotated-box operations in plain torch (see ``rsfm_ds.ops.rotated``)."""
from .rotated import (DeltaXYWHTCoder, MidpointOffsetCoder, batched_nms_rotated, box_area,
                      box_iou_rotated, box_to_polygon, nms_rotated, polygon_iou, polygon_to_box,
                      regularize_le90, roi_align_rotated, wrap_angle_le90)

__all__ = [
    "box_area", "box_to_polygon", "polygon_to_box", "regularize_le90", "wrap_angle_le90",
    "polygon_iou", "box_iou_rotated", "nms_rotated", "batched_nms_rotated", "roi_align_rotated",
    "MidpointOffsetCoder", "DeltaXYWHTCoder",
]
