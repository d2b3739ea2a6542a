"""Greedy non-maximum suppression of rotated boxes, exact and vectorised.

Why our own: mmcv's compiled ``nms_rotated`` does not build against torch 2.14
(docs/rotated_ops.md) and torchvision's NMS is horizontal only.

Greedy NMS visits boxes by decreasing score (equal scores by original index) and keeps a box
unless an already kept box overlaps it with IoU > ``iou_threshold``. Here the boxes are sorted
once (stably) and processed in blocks of ``_BLOCK`` in that order:

1. boxes of the block that a box kept in an earlier block suppresses are dropped (exact IoU
   against the kept boxes only);
2. among the rest, the suppression edges ``(i, j)``, ``i`` before ``j`` with IoU > threshold,
   are listed from the exact IoU of candidate pairs (``polygon_iou.iou_blocks`` skips pairs
   with disjoint bounds, so memory is O(edges));
3. the greedy recursion ``keep_j = no kept i before j with an edge (i, j)`` is solved by
   monotone propagation: a box is suppressed once an earlier neighbour is kept and kept once
   all its earlier neighbours are suppressed. A round is one scatter-add over the edges and one
   host sync (the "all decided" check), not one per box; the earliest undecided box is always
   decided, so a block takes at most ``_BLOCK`` rounds and in practice a handful. The recursion
   has exactly one solution, so the result is exactly greedy NMS.

IoU is thus computed between a box and the kept boxes before it plus its own block, not for all
overlapping pairs: clusters of many overlapping detections, where few boxes survive, stay cheap.

On CPU, when the fused rotated-IoU kernel applies (``rotated_iou_fused``: it built and
``RSFM_ROTATED_OPS`` is not ``plain``), the sequential loop itself runs in that kernel instead:
each kept box is compared with the later, still undecided boxes (bounding-box and label filters
first), which is greedy NMS by definition and, compiled, cheaper than the block recursion's
bookkeeping. The block recursion above remains the path on CUDA and the reference.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .polygon_iou import (DEFAULT_CHUNK_SIZE, ConvexSet, PairFilter, box_vertices, iou_blocks,
                          kernel_for, tolerance)

# Boxes resolved together; trades IoU work inside a block (quadratic) against sequential steps.
_BLOCK = 512


def _greedy_keep(num: int, src: Tensor, dst: Tensor) -> Tensor:
    """Greedy NMS decisions ``[num]`` bool from suppression edges, ``src[k]`` before ``dst[k]``."""
    kept = torch.zeros(num, dtype=torch.bool, device=src.device)
    suppressed = torch.zeros_like(kept)
    while not bool((kept | suppressed).all()):
        # Per box: earlier neighbours that are kept, and earlier neighbours not yet suppressed.
        state = torch.stack([kept, ~suppressed], dim=1).long()
        tally = torch.zeros(num, 2, dtype=torch.long, device=src.device)
        tally.index_add_(0, dst, state[src])
        suppressed = suppressed | (tally[:, 0] > 0)
        kept = ~suppressed & (tally[:, 1] == 0)
    return kept


def _edges(a: ConvexSet, b: ConvexSet, iou_threshold: float, chunk_size: int,
           pair_filter: Optional[PairFilter]) -> Tuple[Tensor, Tensor]:
    """``(rows, cols)`` of the pairs with IoU > threshold."""
    rows_out = [torch.empty(0, dtype=torch.long, device=a.subject.device)]
    cols_out = [rows_out[0]]
    # A negative threshold makes even disjoint boxes (IoU 0) suppress, so nothing is pruned.
    for rows, cols, iou in iou_blocks(a, b, chunk_size, pair_filter, prune=iou_threshold >= 0):
        hit = iou > iou_threshold
        rows_out.append(rows[hit])
        cols_out.append(cols[hit])
    return torch.cat(rows_out), torch.cat(cols_out)


def _nms(boxes: Tensor, scores: Tensor, labels: Optional[Tensor], iou_threshold: float,
         chunk_size: int) -> Tensor:
    device = boxes.device
    order = torch.sort(scores, descending=True, stable=True).indices
    polys = ConvexSet.from_vertices(box_vertices(boxes[order]))
    sorted_labels = labels[order] if labels is not None else None
    kernel = kernel_for(polys, polys)
    if kernel is not None:
        flat_labels = (sorted_labels.long() if sorted_labels is not None
                       else torch.empty(0, dtype=torch.long))
        tol = float(tolerance(polys, polys).detach())
        keep = kernel.nms_sorted(polys.subject, polys.clip, polys.aabbs.t().contiguous(),
                                 flat_labels, float(iou_threshold), tol)
        return order[keep]

    def suppressors(rows: Tensor, cols: Tensor, later: bool) -> Optional[PairFilter]:
        """Filter of pairs ``(rows[r], cols[c])`` that may suppress: same label, and (when
        ``later``, for a set paired with itself) ``c`` after ``r``."""
        if sorted_labels is None and not later:
            return None

        def mask(r0: int, r1: int) -> Tensor:
            m = torch.ones(r1 - r0, cols.numel(), dtype=torch.bool, device=device)
            if later:
                col_pos = torch.arange(cols.numel(), device=device)
                m &= col_pos > torch.arange(r0, r1, device=device)[:, None]
            if sorted_labels is not None:
                m &= sorted_labels[rows[r0:r1], None] == sorted_labels[cols]
            return m
        return mask

    kept = torch.empty(0, dtype=torch.long, device=device)
    for b0 in range(0, boxes.shape[0], _BLOCK):
        block = torch.arange(b0, min(boxes.shape[0], b0 + _BLOCK), device=device)
        if kept.numel():
            hit, _ = _edges(polys.take(block), polys.take(kept), iou_threshold, chunk_size,
                            suppressors(block, kept, later=False))
            alive = torch.ones(block.numel(), dtype=torch.bool, device=device)
            alive[hit] = False
            block = block[alive]
        local = polys.take(block)
        src, dst = _edges(local, local, iou_threshold, chunk_size,
                          suppressors(block, block, later=True))
        kept = torch.cat([kept, block[_greedy_keep(block.numel(), src, dst)]])
    return order[kept]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Greedy NMS of rotated boxes.

    Args:
        boxes: ``[N, 5]`` ``(cx, cy, w, h, theta)``.
        scores: ``[N]``.
        iou_threshold: a kept box suppresses later boxes with IoU strictly greater than this.
        chunk_size: pairs clipped at once (see ``polygon_iou``).

    Returns:
        ``[K]`` int64 indices into ``boxes`` of the kept boxes, by decreasing score (equal scores
        by index): exactly what sequential greedy NMS keeps.
    """
    return _nms(boxes, scores, None, iou_threshold, chunk_size)


def batched_nms_rotated(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float,
                        chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Greedy NMS of rotated boxes within each label: boxes with different labels never
    suppress each other (pairs are masked by label equality, which, unlike offsetting centres
    per class, costs no precision).

    Args:
        boxes: ``[N, 5]``; scores: ``[N]``; labels: ``[N]`` integer class ids.
        iou_threshold, chunk_size: as ``nms_rotated``.

    Returns:
        ``[K]`` int64 indices of the kept boxes over all labels, by decreasing score.
    """
    return _nms(boxes, scores, labels, iou_threshold, chunk_size)
