"""Rotated-op speed: our vectorised torch ops against a shapely loop, measured in the same run.

For two layouts of ``--n`` random boxes:

  sparse  DOTA-like: centres over a 1024 px patch, sides 8-128 px, so few pairs overlap and most
          of the matrix is settled by the bounding-box test;
  dense   every box within a few pixels of one point, so every pair overlaps: the worst case for
          the clipping kernel.

it times

  * the ``N x N`` IoU matrix (``box_iou_rotated``) against a plain shapely loop over pairs. The
    loop is timed on the pairs of the first ``--baseline-n`` boxes and extrapolated per pair to
    ``N x N`` (stated in the output); it is also priced with the same pruning as ours, over
    only the pairs whose bounding boxes overlap, at the per-pair cost measured on such pairs;
  * greedy NMS (``nms_rotated``) on the ``N`` boxes against sequential greedy NMS in Python that
    compares each box with the kept ones through shapely (bounding-box prefilter in numpy), run
    in full; the two kept lists must match.

Figures are the best of ``--repeats`` runs; nothing about time is asserted.

    python bench/rotated_ops.py --n 2000 --device cpu
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Callable, List

import numpy as np
import shapely
import torch

from rsfm_ds.ops import box_iou_rotated, box_to_polygon, nms_rotated


def make_boxes(layout: str, n: int, gen: torch.Generator) -> torch.Tensor:
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    theta = uniform(-math.pi / 2, math.pi / 2)
    if layout == "sparse":
        return torch.stack([uniform(0, 1024), uniform(0, 1024), uniform(8, 128), uniform(8, 128),
                            theta], 1)
    return torch.stack([uniform(-4, 4), uniform(-4, 4), uniform(20, 60), uniform(20, 60), theta], 1)


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def shapely_polygons(boxes: torch.Tensor) -> np.ndarray:
    return shapely.polygons(box_to_polygon(boxes.double()).view(-1, 4, 2).numpy())


def aabb_overlap(polys: np.ndarray) -> np.ndarray:
    """``[N, N]`` bool: closed bounding boxes intersect."""
    b = shapely.bounds(polys)
    return ((b[:, None, 0] <= b[None, :, 2]) & (b[None, :, 0] <= b[:, None, 2])
            & (b[:, None, 1] <= b[None, :, 3]) & (b[None, :, 1] <= b[:, None, 3]))


def shapely_loop_per_pair(polys: np.ndarray, m: int, only_overlapping: bool) -> float:
    """Seconds per pair of a plain loop computing IoU over pairs of the first ``m`` polygons:
    every pair, or only those whose bounding boxes overlap."""
    subset = polys[:m]
    if only_overlapping:
        pairs = np.argwhere(aabb_overlap(subset)).tolist()
    else:
        pairs = [(i, j) for i in range(m) for j in range(m)]
    start = time.perf_counter()
    for i, j in pairs:
        p, q = subset[i], subset[j]
        inter = p.intersection(q).area
        union = p.area + q.area - inter
        _ = inter / union if union > 0 else 0.0
    return (time.perf_counter() - start) / len(pairs)


def shapely_greedy_nms(polys: np.ndarray, scores: np.ndarray, threshold: float) -> List[int]:
    bounds = shapely.bounds(polys)
    areas = shapely.area(polys)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: List[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            b = bounds[k]
            near = k[(bounds[i, 0] <= b[:, 2]) & (b[:, 0] <= bounds[i, 2])
                     & (bounds[i, 1] <= b[:, 3]) & (b[:, 1] <= bounds[i, 3])]
            if near.size:
                inter = shapely.area(shapely.intersection(polys[i], polys[near]))
                iou = inter / (areas[i] + areas[near] - inter)
                if (iou > threshold).any():
                    continue
        kept.append(i)
    return kept


def fmt_rate(pairs: float, seconds: float) -> str:
    return f"{pairs / seconds / 1e6:8.2f} M pairs/s"


def run_layout(layout: str, args: argparse.Namespace, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    boxes = make_boxes(layout, args.n, gen)
    scores = torch.rand(args.n, generator=gen)
    polys = shapely_polygons(boxes)
    boxes_dev, scores_dev = boxes.to(device), scores.to(device)
    n_pairs = args.n * args.n
    candidates = int(aabb_overlap(polys).sum())

    box_iou_rotated(boxes_dev[:64], boxes_dev[:64])  # warm-up
    t_iou = best_time(lambda: box_iou_rotated(boxes_dev, boxes_dev, chunk_size=args.chunk_size),
                      args.repeats, device)
    per_pair = shapely_loop_per_pair(polys, args.baseline_n, only_overlapping=False)
    per_candidate = shapely_loop_per_pair(polys, args.baseline_n, only_overlapping=True)
    t_loop_all = per_pair * n_pairs
    t_loop_pruned = per_candidate * candidates

    t_nms = best_time(lambda: nms_rotated(boxes_dev, scores_dev, args.iou_threshold,
                                          chunk_size=args.chunk_size), args.repeats, device)
    kept = nms_rotated(boxes_dev, scores_dev, args.iou_threshold).cpu().tolist()
    start = time.perf_counter()
    kept_ref = shapely_greedy_nms(polys, scores.numpy(), args.iou_threshold)
    t_nms_ref = time.perf_counter() - start

    print(f"\n[{layout}] {args.n} boxes, {candidates} of {n_pairs} pairs have overlapping bounds "
          f"({100 * candidates / n_pairs:.1f}%)")
    print(f"  IoU matrix  ours                {t_iou * 1e3:10.1f} ms  {fmt_rate(n_pairs, t_iou)}")
    print(f"              shapely loop, all   {t_loop_all * 1e3:10.1f} ms  "
          f"{fmt_rate(n_pairs, t_loop_all)}  (extrapolated from {args.baseline_n}x"
          f"{args.baseline_n} pairs: {per_pair * 1e6:.2f} us/pair)")
    print(f"              shapely loop, pruned{t_loop_pruned * 1e3:10.1f} ms  "
          f"(only the {candidates} overlapping-bounds pairs, at the {per_candidate * 1e6:.2f} "
          f"us/pair measured on those of the subset)")
    print(f"              speed-up            {t_loop_all / t_iou:10.1f} x all pairs, "
          f"{t_loop_pruned / t_iou:.1f} x pruned")
    print(f"  NMS @ {args.iou_threshold:.2f}  ours                {t_nms * 1e3:10.1f} ms  "
          f"({len(kept)} kept)")
    print(f"              shapely greedy loop {t_nms_ref * 1e3:10.1f} ms  (run in full; "
          f"same kept list: {kept == kept_ref})")
    print(f"              speed-up            {t_nms_ref / t_nms:10.1f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="boxes per set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline-n", type=int, default=200,
                        help="the shapely IoU loop is timed on this many x this many pairs")
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--chunk-size", type=int, default=8192, help="pairs clipped at once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--layouts", nargs="+", default=["sparse", "dense"],
                        choices=["sparse", "dense"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, shapely {shapely.__version__}, device {device}, "
          f"{torch.get_num_threads()} CPU threads, chunk_size {args.chunk_size}")
    for layout in args.layouts:
        run_layout(layout, args, device)


if __name__ == "__main__":
    main()
