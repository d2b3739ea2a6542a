"""Oriented R-CNN (Xie et al., ICCV 2021) over a ViTDet backbone, as mmrotate's
``oriented-rcnn-le90`` config.

Why our own: mmrotate needs mmcv's compiled ops, which do not build against torch 2.14
(docs/rotated_ops.md); the rotated ops are :mod:`rsfm_ds.ops.rotated`.

Pipeline (each stage documents its own rules):

1. backbone: a :class:`~rsfm_ds.models.vitdet.ViTDetBackbone` with ``extra_p6=True``: levels
   p2..p6 at strides 4..64, ``out_channels`` wide.
2. neck: none. mmrotate's FPN adds a 3x3 output conv per level after its lateral 1x1 conv and
   top-down sum; the ViTDet simple feature pyramid already ends every level in a 1x1 and a 3x3
   conv (with norms) and has no top-down path to smooth, so a further 3x3 conv would only add
   parameters (ViTDet, Li et al. 2022, likewise feeds its pyramid to the heads directly).
3. :class:`~.oriented_rpn.OrientedRPNHead` on p2..p6: proposals.
4. :class:`~.rotated_roi_head.RotatedRoIHead` on p2..p5: classes and refined boxes.

Batch contract (``rsfm_ds.data.det.dataset.collate_detection`` builds it)::

    images       [B, 3, H, W]  normalised, zero-padded bottom/right to a common size
    image_sizes  [(h, w)] * B  the unpadded size of each image
    boxes        [[G_i, 5]]    le90 ground truth per image (training only)
    labels       [[G_i]] int64 class indices (training only)

Training mode returns ``{"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss"}`` (the
sum under ``"loss"``); eval mode returns one :class:`ImageDetections` per image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..vitdet import ViTDetConfig, build_vitdet
from .oriented_rpn import OrientedRPNConfig, OrientedRPNHead
from .rotated_roi_head import RotatedRoIConfig, RotatedRoIHead

RPN_LEVELS = 5
"""The RPN reads p2..p6."""
ROI_LEVELS = 4
"""RoIs are pooled from p2..p5 (mmrotate's ``featmap_strides=[4, 8, 16, 32]``)."""


@dataclass
class OrientedRCNNConfig:
    """The Oriented R-CNN heads (the backbone is configured on its own)."""

    rpn: OrientedRPNConfig = field(default_factory=OrientedRPNConfig)
    """Oriented RPN."""
    roi: RotatedRoIConfig = field(default_factory=RotatedRoIConfig)
    """Rotated RoI head."""


class ImageDetections(NamedTuple):
    """Detections of one image in input pixels (of the possibly resized image), best first.

    Attributes:
        boxes: ``float32 [D, 5]`` le90 ``(cx, cy, w, h, theta)``.
        scores: ``float32 [D]``.
        labels: ``int64 [D]`` class indices.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor


class OrientedRCNN(nn.Module):
    """Backbone + oriented RPN + rotated RoI head.

    Args:
        backbone: module mapping ``[B, 3, H, W]`` to an ordered dict of >= 5 levels, finest
            first, with attributes ``out_strides`` (name -> stride) and ``out_channels``, and an
            ``init_module(m)`` method (a ViTDet backbone with ``extra_p6=True``).
        num_classes: object classes.
        cfg: the two heads' settings (:class:`OrientedRCNNConfig`; defaults: mmrotate's).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, cfg: Optional[OrientedRCNNConfig] = None):
        super().__init__()
        strides = list(backbone.out_strides.values())
        if len(strides) < RPN_LEVELS:
            raise ValueError(f"backbone: Oriented R-CNN needs {RPN_LEVELS} pyramid levels (p2..p6; "
                             f"build the ViTDet backbone with extra_p6=True), got {list(backbone.out_strides)}")
        if num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        cfg = cfg or OrientedRCNNConfig()
        channels = backbone.out_channels
        self.rpn_head = OrientedRPNHead(in_channels=channels, strides=strides[:RPN_LEVELS],
                                        feat_channels=channels, cfg=cfg.rpn)
        self.roi_head = RotatedRoIHead(num_classes, in_channels=channels, strides=strides[:ROI_LEVELS],
                                       cfg=cfg.roi)
        # Identity set of the backbone's modules: init_module sends those to the backbone's own
        # rules (which would otherwise re-initialise the heads' Linear layers as xavier).
        self._backbone_modules = frozenset(id(m) for m in backbone.modules())

    @classmethod
    def build(cls, backbone: ViTDetConfig, num_classes: int, cfg: Optional[OrientedRCNNConfig] = None
              ) -> "OrientedRCNN":
        """The detector of a fine-tuning run: its ViTDet backbone (with the stride-64 level), then the
        heads, in that order (initialisation draws in module order)."""
        return cls(build_vitdet(backbone, extra_p6=True), num_classes, cfg)

    def init_module(self, m: nn.Module) -> None:
        """Initialise the parameters ``m`` owns directly: backbone modules by the backbone's
        rules, head modules by mmdet's (see the heads); called per module by the engine, with
        the module's ZeRO-3 partitions gathered."""
        if id(m) in self._backbone_modules:
            self.backbone.init_module(m)
        else:
            self.rpn_head.init_module(m)
            self.roi_head.init_module(m)

    def forward(self, batch: Mapping[str, Any]) -> Union[Dict[str, Tensor], List[ImageDetections]]:
        """See the module docstring for the batch and the outputs."""
        image_sizes = [tuple(int(v) for v in hw) for hw in batch["image_sizes"]]
        feats = list(self.backbone(batch["images"]).values())
        rpn_feats, roi_feats = feats[:RPN_LEVELS], feats[:ROI_LEVELS]
        scores, deltas = self.rpn_head(rpn_feats)
        anchors = self.rpn_head.level_anchors(rpn_feats)
        proposals = [boxes for boxes, _ in self.rpn_head.proposals(
            [s.detach() for s in scores], [d.detach() for d in deltas], anchors)]

        if not self.training:
            rois = torch.cat([torch.cat([p.new_full((p.shape[0], 1), i), p], dim=1)
                              for i, p in enumerate(proposals)])
            logits, box_deltas = self.roi_head(roi_feats, rois)
            return [ImageDetections(*d) for d in
                    self.roi_head.predict(logits, box_deltas, rois, image_sizes)]

        gt_boxes, gt_labels = list(batch["boxes"]), list(batch["labels"])
        feat_hw = [tuple(x.shape[-2:]) for x in rpn_feats]
        loss_rpn_cls, loss_rpn_bbox = self.rpn_head.loss(scores, deltas, anchors, feat_hw,
                                                         image_sizes, gt_boxes)
        targets = self.roi_head.sample(proposals, gt_boxes, gt_labels)
        logits, box_deltas = self.roi_head(roi_feats, targets.rois)
        loss_cls, loss_bbox = self.roi_head.loss(logits, box_deltas, targets)
        losses = {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox,
                  "loss_cls": loss_cls, "loss_bbox": loss_bbox}
        losses["loss"] = sum(losses.values())
        return losses


__all__ = ["OrientedRCNNConfig", "OrientedRCNN", "ImageDetections", "RPN_LEVELS", "ROI_LEVELS"]
