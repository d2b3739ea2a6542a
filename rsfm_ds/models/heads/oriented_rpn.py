"""Oriented RPN (Xie et al., "Oriented R-CNN for Object Detection", ICCV 2021), as mmrotate's
``OrientedRPNHead`` in its ``oriented-rcnn-le90`` config.

- **Anchors** are horizontal, as mmdet's ``AnchorGenerator`` with ``center_offset=0``: at every
  location ``(x, y) = stride * (j, i)`` of every level, one anchor per aspect ratio r (0.5, 1, 2)
  of area ``(scale * stride)^2`` (scale 8), width ``scale * stride / sqrt(r)``, height
  ``scale * stride * sqrt(r)``; ordered location-major, then by ratio.
- **Head**: a 3x3 conv (+ ReLU) shared by all levels, then 1x1 convs to one objectness logit and
  six midpoint-offset deltas per anchor (:class:`~rsfm_ds.ops.rotated.MidpointOffsetCoder`).
- **Training targets**: anchors are matched against the *horizontal bounds* of the rotated ground
  truth (mmrotate's ``obb2xyxy``) by max IoU (pos >= 0.7, neg < 0.3, low-quality matches >= 0.3);
  anchors crossing the image border by more than ``allowed_border`` px are ignored (mmrotate's
  ``allowed_border=0``; -1 keeps every anchor), as are anchors whose location lies in batch
  padding. 256 anchors per image are sampled, half positives at most. The regression targets
  encode the *rotated* ground truth.
- **Losses** (mmdet's normalisation): binary cross-entropy over the sampled anchors, and smooth L1
  (beta 1/9) over the positives' 6 deltas, both summed and divided by the number of sampled
  anchors in the batch.
- **Proposals**: per level the ``pre_nms_top_k`` best-scoring anchors are decoded to le90 boxes,
  boxes with a side <= 0 are dropped, NMS at IoU 0.8 runs within each level, and the
  ``max_proposals`` best survivors over all levels are kept. ``nms_type="hbox"`` (default) runs
  the NMS on the proposals' horizontal bounds with torchvision, exactly what mmrotate's
  ``OrientedRPNHead`` does; ``"rotated"`` uses the exact rotated IoU
  (:func:`~rsfm_ds.ops.rotated.batched_nms_rotated`), which costs seconds per image on a CPU for
  ~2000 dense proposals (the IoU of nearly every pair must be clipped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ...config import check, check_choices
from ...ops.rotated import MidpointOffsetCoder, batched_nms_rotated
from .assign_sample import check_sampling, max_iou_assign, random_sample


@dataclass
class OrientedRPNConfig:
    """Oriented RPN (defaults: mmrotate's oriented-rcnn-le90)."""

    anchor_scale: float = 8.0
    """Anchor side over the level's stride."""
    anchor_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    """Anchor height/width ratios, one anchor each per location."""
    pos_iou: float = 0.7
    """Anchors with IoU >= this (to the ground truth's horizontal bounds) are positive."""
    neg_iou: float = 0.3
    """Anchors with IoU < this to every object are negative."""
    min_pos_iou: float = 0.3
    """Each object also takes its best anchors when their IoU is >= this."""
    num_samples: int = 256
    """Anchors sampled per image for the loss."""
    pos_fraction: float = 0.5
    """Largest share of positives among the sampled anchors."""
    allowed_border: int = 0
    """Anchors crossing the image border by more pixels are ignored in training; -1 keeps all."""
    pre_nms_top_k_train: int = 2000
    """Best anchors per level decoded before NMS, in training."""
    pre_nms_top_k_test: int = 2000
    """Best anchors per level decoded before NMS, at inference."""
    max_proposals_train: int = 2000
    """Proposals per image after NMS, in training."""
    max_proposals_test: int = 2000
    """Proposals per image after NMS, at inference."""
    nms_iou: float = 0.8
    """Proposal NMS threshold (within each level)."""
    nms_type: Literal["hbox", "rotated"] = "hbox"
    """hbox: NMS on the proposals' horizontal bounds (what mmrotate's OrientedRPNHead does);
    rotated: exact rotated IoU (seconds per image on a CPU)."""
    smooth_l1_beta: float = 1.0 / 9.0
    """Beta of the smooth-L1 regression loss (mmrotate's 1/9)."""

    def __post_init__(self):
        check_choices(self)
        check(self.anchor_scale > 0, "anchor_scale", f"must be positive, got {self.anchor_scale}")
        check(len(self.anchor_ratios) > 0 and all(r > 0 for r in self.anchor_ratios), "anchor_ratios",
              f"need one or more positive ratios, got {self.anchor_ratios}")
        check_sampling(self.pos_iou, self.neg_iou, self.num_samples, self.pos_fraction)
        check(0.0 <= self.min_pos_iou <= self.pos_iou, "min_pos_iou",
              f"must be in [0, pos_iou={self.pos_iou}], got {self.min_pos_iou}")
        check(self.allowed_border >= -1, "allowed_border", f"must be >= -1, got {self.allowed_border}")
        for name in ("pre_nms_top_k_train", "pre_nms_top_k_test", "max_proposals_train", "max_proposals_test"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(0.0 < self.nms_iou <= 1.0, "nms_iou", f"must be in (0, 1], got {self.nms_iou}")
        check(self.smooth_l1_beta > 0, "smooth_l1_beta", f"must be positive, got {self.smooth_l1_beta}")


def rotated_box_bounds(boxes: Tensor) -> Tensor:
    """Axis-aligned bounds ``[..., 4]`` ``(x1, y1, x2, y2)`` of rotated boxes ``[..., 5]``."""
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta).abs(), torch.sin(theta).abs()
    half_x = 0.5 * (w * cos + h * sin)
    half_y = 0.5 * (w * sin + h * cos)
    return torch.stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y], dim=-1)


class AnchorGenerator:
    """Horizontal anchors per pyramid level (see the module docstring for layout).

    Args:
        strides: stride of each level in input pixels.
        scale: anchor side over stride (8).
        ratios: height / width ratios.
    """

    def __init__(self, strides: Sequence[int], scale: float = 8.0,
                 ratios: Sequence[float] = (0.5, 1.0, 2.0)):
        self.strides = [int(s) for s in strides]
        self.ratios = tuple(float(r) for r in ratios)
        h_ratios = torch.tensor(self.ratios, dtype=torch.float32).sqrt()
        self.base = []
        for stride in self.strides:
            ws, hs = stride * scale / h_ratios, stride * scale * h_ratios
            self.base.append(torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1))

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return len(self.ratios)

    def grid(self, level: int, height: int, width: int, device: torch.device) -> Tensor:
        """Anchors ``[height * width * A, 4]`` of ``level`` on a ``height x width`` feature map."""
        stride = self.strides[level]
        ys = torch.arange(height, device=device, dtype=torch.float32) * stride
        xs = torch.arange(width, device=device, dtype=torch.float32) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        return (shifts + self.base[level].to(device)[None]).reshape(-1, 4)

    def valid(self, level: int, height: int, width: int, image_hw: Tuple[int, int],
              anchors: Tensor, allowed_border: int) -> Tensor:
        """``bool [height * width * A]``: anchors at locations inside the image (not batch
        padding) and, when ``allowed_border >= 0``, not crossing the image border by more."""
        stride = self.strides[level]
        rows = min(math.ceil(image_hw[0] / stride), height)
        cols = min(math.ceil(image_hw[1] / stride), width)
        loc = torch.zeros(height, width, dtype=torch.bool, device=anchors.device)
        loc[:rows, :cols] = True
        flags = loc.reshape(-1, 1).expand(-1, self.num_anchors).reshape(-1)
        if allowed_border >= 0:
            b = allowed_border
            flags = flags & (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) \
                & (anchors[:, 2] < image_hw[1] + b) & (anchors[:, 3] < image_hw[0] + b)
        return flags


class OrientedRPNHead(nn.Module):
    """Oriented region proposal network over a feature pyramid.

    Args:
        in_channels: width of every input level.
        strides: stride of each input level (p2..p6: 4, 8, 16, 32, 64).
        feat_channels: width of the shared 3x3 conv.
        cfg: anchors, assignment, sampling, proposals and loss (:class:`OrientedRPNConfig`).
    """

    def __init__(self, in_channels: int = 256, strides: Sequence[int] = (4, 8, 16, 32, 64),
                 feat_channels: int = 256, cfg: Optional[OrientedRPNConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or OrientedRPNConfig()
        self.anchors = AnchorGenerator(strides, cfg.anchor_scale, cfg.anchor_ratios)
        num_anchors = self.anchors.num_anchors
        self.conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.reg = nn.Conv2d(feat_channels, num_anchors * 6, 1)
        self.coder = MidpointOffsetCoder()
        self.apply(self.init_module)

    def init_module(self, m: nn.Module) -> None:
        """mmdet's RPN initialisation: the three convs normal(0, 0.01), zero bias."""
        if m is self.conv or m is self.cls or m is self.reg:
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level ``[B, C, H, W]`` -> objectness logits ``[B, H*W*A]`` and deltas
        ``[B, H*W*A, 6]`` (anchor order of :meth:`AnchorGenerator.grid`)."""
        scores, deltas = [], []
        for x in feats:
            b, _, h, w = x.shape
            x = F.relu(self.conv(x))
            a = self.anchors.num_anchors
            scores.append(self.cls(x).permute(0, 2, 3, 1).reshape(b, h * w * a))
            # reg channels are anchor-major (a * 6 + k): [B, A, 6, H, W] -> [B, H, W, A, 6]
            deltas.append(self.reg(x).view(b, a, 6, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 6))
        return scores, deltas

    def level_anchors(self, feats: Sequence[Tensor]) -> List[Tensor]:
        """Anchors ``[H*W*A, 4]`` of each level for these feature maps."""
        return [self.anchors.grid(lvl, x.shape[-2], x.shape[-1], x.device)
                for lvl, x in enumerate(feats)]

    def loss(self, scores: List[Tensor], deltas: List[Tensor], anchors: List[Tensor],
             feat_hw: List[Tuple[int, int]], image_sizes: Sequence[Tuple[int, int]],
             gt_boxes: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(loss_rpn_cls, loss_rpn_bbox)`` for a batch.

        Args:
            scores, deltas: :meth:`forward`'s output.
            anchors: :meth:`level_anchors`' output.
            feat_hw: ``(H, W)`` of each level.
            image_sizes: ``(h, w)`` of each image without batch padding.
            gt_boxes: per image ``[G_i, 5]`` rotated ground truth (le90).
        """
        all_anchors = torch.cat(anchors)
        all_scores = torch.cat(scores, dim=1).float()  # [B, N]
        all_deltas = torch.cat(deltas, dim=1).float()  # [B, N, 6]
        logits, labels, pred, target = [], [], [], []
        for i, (hw, gts) in enumerate(zip(image_sizes, gt_boxes)):
            valid = torch.cat([self.anchors.valid(lvl, h, w, hw, a, self.cfg.allowed_border)
                               for lvl, ((h, w), a) in enumerate(zip(feat_hw, anchors))])
            valid_idx = torch.nonzero(valid).squeeze(1)
            gts = gts.float()
            ious = box_iou(rotated_box_bounds(gts), all_anchors[valid_idx])  # [G, Nv]
            assigned, _ = max_iou_assign(ious, self.cfg.pos_iou, self.cfg.neg_iou, self.cfg.min_pos_iou,
                                         match_low_quality=True)
            pos, neg = random_sample(assigned, self.cfg.num_samples, self.cfg.pos_fraction)
            pos_anchor, neg_anchor = valid_idx[pos], valid_idx[neg]
            logits.append(all_scores[i, torch.cat([pos_anchor, neg_anchor])])
            labels.append(torch.cat([all_scores.new_ones(pos.numel()),
                                     all_scores.new_zeros(neg.numel())]))
            pred.append(all_deltas[i, pos_anchor])
            target.append(self.coder.encode(all_anchors[pos_anchor], gts[assigned[pos] - 1]))
        logits, labels = torch.cat(logits), torch.cat(labels)
        num_samples = max(logits.numel(), 1)
        loss_cls = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / num_samples
        loss_bbox = F.smooth_l1_loss(torch.cat(pred), torch.cat(target).to(all_deltas.dtype),
                                     beta=self.cfg.smooth_l1_beta, reduction="sum") / num_samples
        return loss_cls, loss_bbox

    @torch.no_grad()
    def proposals(self, scores: List[Tensor], deltas: List[Tensor], anchors: List[Tensor]
                  ) -> List[Tuple[Tensor, Tensor]]:
        """Per image ``(boxes [P, 5] le90 float32, objectness [P])``, best first (module docstring).

        Uses the training or test limits according to ``self.training``.
        """
        top_k = self.cfg.pre_nms_top_k_train if self.training else self.cfg.pre_nms_top_k_test
        max_keep = self.cfg.max_proposals_train if self.training else self.cfg.max_proposals_test
        out = []
        for i in range(scores[0].shape[0]):
            boxes, probs, levels = [], [], []
            for lvl, (s, d, a) in enumerate(zip(scores, deltas, anchors)):
                s = s[i].float().sigmoid()
                k = min(top_k, s.numel())
                s, idx = s.topk(k)
                boxes.append(self.coder.decode(a[idx], d[i, idx].float()).float())
                probs.append(s)
                levels.append(torch.full((k,), lvl, dtype=torch.long, device=s.device))
            boxes, probs, levels = torch.cat(boxes), torch.cat(probs), torch.cat(levels)
            keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
            boxes, probs, levels = boxes[keep], probs[keep], levels[keep]
            if self.cfg.nms_type == "hbox":
                keep = batched_nms(rotated_box_bounds(boxes), probs, levels, self.cfg.nms_iou)
            else:
                keep = batched_nms_rotated(boxes, probs, levels, self.cfg.nms_iou)
            keep = keep[:max_keep]
            out.append((boxes[keep], probs[keep]))
        return out


__all__ = ["OrientedRPNConfig", "AnchorGenerator", "OrientedRPNHead", "rotated_box_bounds"]
