"""Max-IoU assignment and random sampling of training examples (mmdet's ``MaxIoUAssigner`` and
``RandomSampler``), vectorised over boxes.

Why our own: mmdet's versions import mmcv, whose compiled ops do not build against torch 2.14
(docs/rotated_ops.md); both are short. Both the RPN (anchors vs. the horizontal bounds of the rotated ground
truth) and the RoI head (rotated proposals vs. rotated ground truth) use them with their own
thresholds; the caller computes the IoU matrix.

Assignment codes follow mmdet: ``-1`` ignored (neither positive nor negative), ``0`` negative,
``k + 1`` positive for ground truth ``k``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ...config import check

IGNORED = -1
NEGATIVE = 0


def check_sampling(pos_iou: float, neg_iou: float, num_samples: int, pos_fraction: float) -> None:
    """Validate a head config's assignment thresholds and sampling, naming the field."""
    check(0.0 < pos_iou <= 1.0, "pos_iou", f"must be in (0, 1], got {pos_iou}")
    check(0.0 <= neg_iou <= pos_iou, "neg_iou", f"must be in [0, pos_iou={pos_iou}], got {neg_iou}")
    check(num_samples > 0, "num_samples", f"must be positive, got {num_samples}")
    check(0.0 < pos_fraction <= 1.0, "pos_fraction", f"must be in (0, 1], got {pos_fraction}")


def max_iou_assign(ious: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float,
                   match_low_quality: bool) -> Tuple[Tensor, Tensor]:
    """Assign each candidate to a ground truth by IoU (mmdet ``MaxIoUAssigner``).

    1. every candidate starts ignored;
    2. a candidate whose best IoU is in ``[0, neg_iou)`` is negative;
    3. a candidate whose best IoU is ``>= pos_iou`` is positive for its best ground truth (the
       first one on equal IoU);
    4. ``match_low_quality``: every ground truth whose best IoU is ``>= min_pos_iou`` also takes
       every candidate that reaches that best IoU (mmdet's ``gt_max_assign_all``), so small or
       odd-shaped objects get at least one positive; when several ground truths claim the same
       candidate the last one wins, as in mmdet's loop over ground truths.

    Args:
        ious: ``[G, N]`` IoU of G ground truths with N candidates.
        pos_iou, neg_iou, min_pos_iou: thresholds as above.
        match_low_quality: apply step 4.

    Returns:
        ``assigned`` int64 ``[N]`` (module codes) and ``max_iou`` ``[N]`` (0 without ground truth).
    """
    num_gts, num = ious.shape
    if num_gts == 0:
        return (torch.full((num,), NEGATIVE, dtype=torch.long, device=ious.device),
                ious.new_zeros(num))
    max_iou, best_gt = ious.max(dim=0)
    assigned = torch.full((num,), IGNORED, dtype=torch.long, device=ious.device)
    assigned[(max_iou >= 0) & (max_iou < neg_iou)] = NEGATIVE
    positive = max_iou >= pos_iou
    assigned[positive] = best_gt[positive] + 1
    if match_low_quality and num:
        gt_max = ious.max(dim=1).values  # [G]
        claims = (ious == gt_max[:, None]) & (gt_max[:, None] >= min_pos_iou)  # [G, N]
        # The last claiming ground truth (largest index) wins: 0 means none claims.
        order = torch.arange(1, num_gts + 1, device=ious.device)[:, None]
        last = (claims.long() * order).max(dim=0).values
        assigned = torch.where(last > 0, last, assigned)
    return assigned, max_iou


def random_sample(assigned: Tensor, num: int, pos_fraction: float,
                  generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Draw training examples at random (mmdet ``RandomSampler`` with ``neg_pos_ub=-1``).

    Up to ``int(num * pos_fraction)`` positives, then negatives fill the batch to ``num`` (fewer
    when there are not enough); ignored candidates are never drawn.

    Args:
        assigned: ``[N]`` codes from :func:`max_iou_assign`.
        num: examples per image.
        pos_fraction: target share of positives.
        generator: RNG for the draws (default: torch's global one).

    Returns:
        ``(pos_index, neg_index)``: int64 indices into ``assigned``, in random order.
    """
    pos = torch.nonzero(assigned > 0).squeeze(1)
    neg = torch.nonzero(assigned == NEGATIVE).squeeze(1)
    num_pos = min(int(num * pos_fraction), pos.numel())
    pos = pos[torch.randperm(pos.numel(), generator=generator, device="cpu")[:num_pos].to(pos.device)]
    num_neg = min(num - num_pos, neg.numel())
    neg = neg[torch.randperm(neg.numel(), generator=generator, device="cpu")[:num_neg].to(neg.device)]
    return pos, neg


__all__ = ["IGNORED", "NEGATIVE", "max_iou_assign", "random_sample"]
