"""The segmentation model: a ViTDet backbone with UperNet (and its auxiliary FCN head) on top.

Training: ``forward(batch)`` with ``batch = {"image": [B, 3, H, W], "label": int64 [B, H, W]}``
returns ``{"loss_seg", "loss_aux", "loss"}`` (the sum under ``"loss"``). Inference:
``logits(images)`` gives ``[B, K, H, W]`` at input resolution (what sliding-window inference
calls per window).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from ..vitdet import ViTDetConfig, build_vitdet
from .upernet import UperNet, UperNetConfig


class SegmentationModel(nn.Module):
    """ViTDet backbone + UperNet.

    Args:
        backbone: maps ``[B, 3, H, W]`` to the pyramid UperNet reads (``p2``..``p5``), with an
            ``init_module(m)`` method (:class:`~rsfm_ds.models.vitdet.ViTDetBackbone`).
        head: the decode and auxiliary heads with their loss.
    """

    def __init__(self, backbone: nn.Module, head: UperNet):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def build(cls, backbone: ViTDetConfig, num_classes: int, head: Optional[UperNetConfig] = None,
              ignore_index: int = 255) -> "SegmentationModel":
        """The model of a fine-tuning run: its ViTDet backbone, then UperNet on its pyramid, in that
        order (initialisation draws in module order)."""
        vitdet = build_vitdet(backbone)
        # UperNet reads every level the pyramid builds (p2..p5, or p4 alone when single-scale).
        return cls(vitdet, UperNet(num_classes, in_channels=backbone.out_channels, cfg=head,
                                   ignore_index=ignore_index, in_keys=tuple(vitdet.out_strides)))

    def init_module(self, m: nn.Module) -> None:
        """Per-module initialisation for ZeRO-3 builds: backbone rules inside the backbone; the
        head's layers keep PyTorch's defaults, re-applied here."""
        if any(m is b for b in self.backbone.modules()):
            self.backbone.init_module(m)
        elif hasattr(m, "reset_parameters") and m is not self:
            m.reset_parameters()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.predict(self.backbone(images), images.shape[-2:])

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        losses = self.head.loss(self.backbone(batch["image"]), batch["label"])
        losses["loss"] = sum(losses.values())
        return losses


__all__ = ["SegmentationModel"]
