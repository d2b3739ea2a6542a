"""The second stage of Oriented R-CNN: rotated RoI features, box head, targets, loss, inference.

As mmrotate's ``OrientedStandardRoIHead`` with ``RotatedSingleRoIExtractor`` and
``RotatedShared2FCBBoxHead`` in the ``oriented-rcnn-le90`` config:

- **RoI extractor**: RoIAlignRotated (7x7 bins, 2x2 samples per bin, ``aligned=True``,
  ``clockwise=True`` for this package's box convention) on one pyramid level per RoI, chosen by
  the RoI's scale ``s = sqrt(w * h)`` as mmdet: ``level = clamp(floor(log2(s / 56 + 1e-6)), 0,
  L - 1)`` over the strides 4, 8, 16, 32 (the stride-64 level feeds the RPN only).
- **Box head**: flatten, two shared FC-1024 + ReLU, then class scores (``num_classes + 1``,
  background last as mmdet 2.x) and 5 class-agnostic deltas
  (:class:`~rsfm_ds.ops.rotated.DeltaXYWHTCoder`, le90, target stds (0.1, 0.1, 0.2, 0.2, 0.1)).
- **Training targets**: the ground truth is added to each image's proposals; proposals are
  matched by exact rotated IoU (pos >= 0.5, neg < 0.5, no low-quality matches) and 512 per image
  are sampled, a quarter positives at most.
- **Losses** (mmdet's normalisation): cross-entropy averaged over the sampled RoIs; smooth L1
  (beta 1) summed over the positives' deltas and divided by the number of sampled RoIs.
- **Inference**: softmax scores, class-agnostic decoding (centres clamped to the image), every
  (RoI, class) pair scoring above 0.05 is a candidate, all candidates go through per-class
  rotated NMS at IoU 0.1, and the best 2000 (``max_per_img``) survive: mmrotate's
  ``multiclass_nms_rotated`` as ``RotatedBBoxHead.get_bboxes`` calls it (the ``nms_pre`` and
  ``min_bbox_size`` of the config's ``test_cfg.rcnn`` are not read there). ``nms_pre`` optionally
  caps the candidates entering NMS at the best ``nms_pre``: an untrained model's near-uniform
  scores put every (RoI, class) pair above the threshold, and the cap bounds that NMS's cost in
  quick debug runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...config import check
from ...ops.rotated import DeltaXYWHTCoder, batched_nms_rotated, box_iou_rotated, roi_align_rotated
from .assign_sample import check_sampling, max_iou_assign, random_sample


@dataclass
class RotatedRoIConfig:
    """Rotated RoI head (defaults: mmrotate's oriented-rcnn-le90)."""

    output_size: int = 7
    """RoIAlignRotated bins per side."""
    sampling_ratio: int = 2
    """RoIAlignRotated samples per bin per axis."""
    finest_scale: float = 56.0
    """RoIs of scale sqrt(w*h) < 2 x this are pooled from p2, then one level per doubling."""
    fc_dim: int = 1024
    """Width of the two shared FC layers."""
    pos_iou: float = 0.5
    """Proposals with rotated IoU >= this are positive."""
    neg_iou: float = 0.5
    """Proposals with rotated IoU < this to every object are negative (background)."""
    num_samples: int = 512
    """RoIs sampled per image for the loss."""
    pos_fraction: float = 0.25
    """Largest share of positives among the sampled RoIs."""
    add_gt_as_proposals: bool = True
    """Add the ground truth to the proposals in training."""
    score_thr: float = 0.05
    """Inference: (RoI, class) pairs scoring above this are candidates."""
    nms_iou: float = 0.1
    """Inference: per-class rotated NMS threshold."""
    nms_pre: Optional[int] = None
    """Inference: best candidates per image entering NMS; null: all (mmrotate's behaviour)."""
    max_per_img: int = 2000
    """Inference: detections kept per image."""
    smooth_l1_beta: float = 1.0
    """Beta of the smooth-L1 regression loss (mmrotate's 1.0)."""

    def __post_init__(self):
        check(self.output_size > 0, "output_size", f"must be positive, got {self.output_size}")
        check(self.sampling_ratio > 0, "sampling_ratio", f"must be positive, got {self.sampling_ratio}")
        check(self.finest_scale > 0, "finest_scale", f"must be positive, got {self.finest_scale}")
        check(self.fc_dim > 0, "fc_dim", f"must be positive, got {self.fc_dim}")
        check_sampling(self.pos_iou, self.neg_iou, self.num_samples, self.pos_fraction)
        check(0.0 <= self.score_thr < 1.0, "score_thr", f"must be in [0, 1), got {self.score_thr}")
        check(0.0 <= self.nms_iou <= 1.0, "nms_iou", f"must be in [0, 1], got {self.nms_iou}")
        check(self.nms_pre is None or self.nms_pre > 0, "nms_pre",
              f"must be positive or null (no cap), got {self.nms_pre}")
        check(self.max_per_img > 0, "max_per_img", f"must be positive, got {self.max_per_img}")
        check(self.smooth_l1_beta > 0, "smooth_l1_beta", f"must be positive, got {self.smooth_l1_beta}")


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """Pyramid level ``[K]`` of RoIs ``[K, 6]`` ``(batch_idx, cx, cy, w, h, theta)`` (mmdet's
    rule: scale < 112 -> 0, < 224 -> 1, < 448 -> 2, else 3, for ``finest_scale`` 56)."""
    scale = torch.sqrt(rois[:, 3] * rois[:, 4])
    level = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return level.clamp(0, num_levels - 1).long()


class RotatedRoIExtractor(nn.Module):
    """RoIAlignRotated on each RoI's pyramid level (no parameters).

    Args:
        strides: strides of the levels it reads (4, 8, 16, 32).
        output_size: bins per side (7).
        sampling_ratio: samples per bin per axis (2).
        finest_scale: see :func:`map_roi_levels` (56).
    """

    def __init__(self, strides: Sequence[int] = (4, 8, 16, 32), output_size: int = 7,
                 sampling_ratio: int = 2, finest_scale: float = 56.0):
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.finest_scale = finest_scale

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``feats``: one ``[B, C, H_l, W_l]`` per stride; ``rois`` ``[K, 6]`` in input pixels ->
        ``[K, C, output_size, output_size]`` in the features' dtype."""
        k, c = rois.shape[0], feats[0].shape[1]
        out = feats[0].new_zeros(k, c, self.output_size, self.output_size)
        if k == 0:
            return out
        levels = map_roi_levels(rois, len(self.strides), self.finest_scale)
        for lvl, (x, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.nonzero(levels == lvl).squeeze(1)
            if idx.numel():
                pooled = roi_align_rotated(x, rois[idx], self.output_size, 1.0 / stride,
                                           self.sampling_ratio, aligned=True, clockwise=True)
                out = out.index_copy(0, idx, pooled)
        return out


class RotatedBBoxHead(nn.Module):
    """Two shared FC layers, then class scores and class-agnostic rotated-box deltas.

    Args:
        in_channels: RoI feature channels C.
        roi_size: RoI feature side (7).
        fc_dim: width of the two FC layers (1024).
        num_classes: object classes (background is an extra, last, score).
    """

    def __init__(self, in_channels: int, roi_size: int, fc_dim: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * roi_size * roi_size, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls = nn.Linear(fc_dim, num_classes + 1)
        self.reg = nn.Linear(fc_dim, 5)
        self.apply(self.init_module)

    def init_module(self, m: nn.Module) -> None:
        """mmdet's ``Shared2FCBBoxHead`` initialisation: shared FCs xavier-uniform, classifier
        normal(0, 0.01), regressor normal(0, 0.001), zero biases."""
        if m is self.fc1 or m is self.fc2:
            nn.init.xavier_uniform_(m.weight)
        elif m is self.cls:
            nn.init.normal_(m.weight, std=0.01)
        elif m is self.reg:
            nn.init.normal_(m.weight, std=0.001)
        else:
            return
        nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``[K, C, s, s]`` -> class logits ``[K, num_classes + 1]`` and deltas ``[K, 5]``."""
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.cls(x), self.reg(x)


class RoITargets(NamedTuple):
    """Sampled RoIs of a batch and what they should predict.

    Attributes:
        rois: ``[K, 6]`` ``(batch_idx, cx, cy, w, h, theta)``.
        labels: ``int64 [K]`` class, ``num_classes`` for background.
        deltas: ``[P, 5]`` regression targets of the positives.
        positive: ``bool [K]``, P of them true.
    """

    rois: Tensor
    labels: Tensor
    deltas: Tensor
    positive: Tensor


class RotatedRoIHead(nn.Module):
    """Oriented R-CNN's second stage (see the module docstring).

    Args:
        num_classes: object classes.
        in_channels: pyramid width.
        strides: strides of the levels RoIs are pooled from (4, 8, 16, 32).
        cfg: RoI pooling, box head width, assignment, sampling, inference and loss
            (:class:`RotatedRoIConfig`).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, strides: Sequence[int] = (4, 8, 16, 32),
                 cfg: Optional[RotatedRoIConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or RotatedRoIConfig()
        self.num_classes = num_classes
        self.extractor = RotatedRoIExtractor(strides, cfg.output_size, cfg.sampling_ratio, cfg.finest_scale)
        self.bbox_head = RotatedBBoxHead(in_channels, cfg.output_size, cfg.fc_dim, num_classes)
        self.coder = DeltaXYWHTCoder()

    def init_module(self, m: nn.Module) -> None:
        """Initialise ``m`` if this head owns it directly (see :class:`RotatedBBoxHead`)."""
        self.bbox_head.init_module(m)

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tuple[Tensor, Tensor]:
        """``rois`` ``[K, 6]`` -> class logits ``[K, num_classes + 1]``, deltas ``[K, 5]``."""
        return self.bbox_head(self.extractor(feats, rois))

    @torch.no_grad()
    def sample(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
               gt_labels: Sequence[Tensor]) -> RoITargets:
        """Assign and sample training RoIs.

        Args:
            proposals: per image ``[P_i, 5]`` le90 boxes.
            gt_boxes: per image ``[G_i, 5]`` le90 boxes; gt_labels: per image ``int64 [G_i]``.
        """
        rois, labels, deltas, positive = [], [], [], []
        for i, (props, gts, gt_cls) in enumerate(zip(proposals, gt_boxes, gt_labels)):
            gts = gts.float()
            if self.cfg.add_gt_as_proposals:
                props = torch.cat([gts, props.float()])
            assigned, _ = max_iou_assign(box_iou_rotated(gts, props), self.cfg.pos_iou,
                                         self.cfg.neg_iou, self.cfg.pos_iou, match_low_quality=False)
            pos, neg = random_sample(assigned, self.cfg.num_samples, self.cfg.pos_fraction)
            matched = assigned[pos] - 1
            chosen = props[torch.cat([pos, neg])]
            rois.append(torch.cat([chosen.new_full((chosen.shape[0], 1), i), chosen], dim=1))
            labels.append(torch.cat([gt_cls[matched],
                                     gt_cls.new_full((neg.numel(),), self.num_classes)]))
            deltas.append(self.coder.encode(props[pos], gts[matched]).float())
            positive.append(torch.arange(chosen.shape[0], device=chosen.device) < pos.numel())
        return RoITargets(torch.cat(rois), torch.cat(labels), torch.cat(deltas),
                          torch.cat(positive))

    def loss(self, logits: Tensor, deltas: Tensor, targets: RoITargets) -> Tuple[Tensor, Tensor]:
        """``(loss_cls, loss_bbox)`` of the sampled RoIs (module docstring)."""
        logits, deltas = logits.float(), deltas.float()
        if logits.shape[0] == 0:
            # No RoI at all: zero losses that still reach every output (every rank must produce
            # gradients for the same parameters).
            zero = logits.sum() * 0 + deltas.sum() * 0
            return zero, zero
        loss_cls = F.cross_entropy(logits, targets.labels)
        loss_bbox = F.smooth_l1_loss(deltas[targets.positive], targets.deltas,
                                     beta=self.cfg.smooth_l1_beta, reduction="sum") / logits.shape[0]
        return loss_cls, loss_bbox

    @torch.no_grad()
    def predict(self, logits: Tensor, deltas: Tensor, rois: Tensor,
                image_sizes: Sequence[Tuple[int, int]]) -> List[Tuple[Tensor, Tensor, Tensor]]:
        """Detections per image: ``(boxes [D, 5] le90, scores [D], labels int64 [D])``, best first.

        Args:
            logits, deltas: :meth:`forward`'s output for ``rois``.
            rois: ``[K, 6]`` with the image index in column 0.
            image_sizes: ``(h, w)`` per image, to clamp decoded centres.
        """
        scores = F.softmax(logits.float(), dim=1)[:, :self.num_classes]  # [K, C]
        out = []
        for i, hw in enumerate(image_sizes):
            mine = rois[:, 0] == i
            boxes = self.coder.decode(rois[mine, 1:], deltas[mine].float(), max_shape=hw).float()
            s = scores[mine]
            roi_idx, cls_idx = torch.nonzero(s > self.cfg.score_thr, as_tuple=True)
            cand_scores = s[roi_idx, cls_idx]
            if self.cfg.nms_pre is not None and cand_scores.numel() > self.cfg.nms_pre:
                top = cand_scores.topk(self.cfg.nms_pre).indices
                roi_idx, cls_idx, cand_scores = roi_idx[top], cls_idx[top], cand_scores[top]
            cand_boxes = boxes[roi_idx]
            keep = batched_nms_rotated(cand_boxes, cand_scores, cls_idx, self.cfg.nms_iou)
            keep = keep[:self.cfg.max_per_img]
            out.append((cand_boxes[keep], cand_scores[keep], cls_idx[keep]))
        return out


__all__ = ["RotatedRoIConfig", "RotatedRoIExtractor", "RotatedBBoxHead", "RotatedRoIHead", "RoITargets",
           "map_roi_levels"]
