"""Task heads over the ViTDet feature pyramid; each head owns its config dataclass and its loss."""
from .oriented_rcnn import ImageDetections, OrientedRCNN, OrientedRCNNConfig
from .oriented_rpn import AnchorGenerator, OrientedRPNConfig, OrientedRPNHead, rotated_box_bounds
from .rotated_roi_head import RotatedBBoxHead, RotatedRoIConfig, RotatedRoIExtractor, RotatedRoIHead
from .segmentation_model import SegmentationModel
from .upernet import FCNHead, UperNet, UperNetConfig, UperNetHead, resize_logits, segmentation_loss

__all__ = ["FCNHead", "UperNet", "UperNetConfig", "UperNetHead", "resize_logits", "segmentation_loss",
           "SegmentationModel", "OrientedRCNN", "OrientedRCNNConfig", "ImageDetections", "OrientedRPNHead",
           "OrientedRPNConfig", "AnchorGenerator", "rotated_box_bounds", "RotatedRoIHead", "RotatedRoIConfig",
           "RotatedRoIExtractor", "RotatedBBoxHead"]
