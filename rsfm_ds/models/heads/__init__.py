"""Task heads over the ViTDet feature pyramid; each head owns its loss (design.md)."""
from .upernet import FCNHead, UperNet, UperNetHead, resize_logits, segmentation_loss

__all__ = ["FCNHead", "UperNet", "UperNetHead", "resize_logits", "segmentation_loss"]
