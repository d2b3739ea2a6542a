"""Task heads over the ViTDet feature pyramid; each head owns its loss (design.md)."""
from .oriented_rcnn import ImageDetections, OrientedRCNN
from .oriented_rpn import AnchorGenerator, OrientedRPNHead, rotated_box_bounds
from .rotated_roi_head import RotatedBBoxHead, RotatedRoIExtractor, RotatedRoIHead
from .upernet import FCNHead, UperNet, UperNetHead, resize_logits, segmentation_loss

__all__ = ["FCNHead", "UperNet", "UperNetHead", "resize_logits", "segmentation_loss",
           "OrientedRCNN", "ImageDetections", "OrientedRPNHead", "AnchorGenerator",
           "rotated_box_bounds", "RotatedRoIHead", "RotatedRoIExtractor", "RotatedBBoxHead"]
