"""Rotated-op speed: our fused and plain paths against shapely 2, measured in the same run.

For two layouts of ``--n`` random boxes:

  sparse  DOTA-like: centres over a 1024 px patch, sides 8-128 px, so few pairs overlap and most
          of the matrix is settled by the bounding-box test;
  dense   every box within a few pixels of one point, so every pair overlaps: the worst case for
          the clipping kernel.

it times

  * the ``N x N`` IoU matrix (``box_iou_rotated``) on the fused CPU kernel and on the plain torch
    path (``RSFM_ROTATED_OPS=fused`` / ``plain``), against what a user reaches for today: shapely
    2's vectorised ``intersection`` / ``area`` over the candidate pairs of an ``STRtree`` query
    (tree build and scatter into the dense matrix included);
  * greedy NMS (``nms_rotated``) on both paths against sequential greedy NMS in Python that
    compares each box with the kept ones through vectorised shapely (bounding-box prefilter in
    numpy). All three kept lists must match.

The largest differences between the matrices are printed as well. Figures are the best of
``--repeats`` runs (``--slow-repeats`` for the plain path and shapely, which take minutes on the
dense set); the machine load is printed because other processes change every figure. Nothing
about time is asserted.

    python bench/rotated_ops.py --n 2000
"""
from __future__ import annotations

import argparse
import math
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Tuple

import numpy as np
import shapely
import torch

from rsfm_ds.ops import box_iou_rotated, box_to_polygon, nms_rotated
from rsfm_ds.ops import rotated_iou_fused


def make_boxes(layout: str, n: int, gen: torch.Generator) -> torch.Tensor:
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    theta = uniform(-math.pi / 2, math.pi / 2)
    if layout == "sparse":
        return torch.stack([uniform(0, 1024), uniform(0, 1024), uniform(8, 128), uniform(8, 128),
                            theta], 1)
    return torch.stack([uniform(-4, 4), uniform(-4, 4), uniform(20, 60), uniform(20, 60), theta], 1)


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the block with ``RSFM_ROTATED_OPS=name``."""
    old = os.environ.get(rotated_iou_fused.ENV_VAR)
    os.environ[rotated_iou_fused.ENV_VAR] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ[rotated_iou_fused.ENV_VAR]
        else:
            os.environ[rotated_iou_fused.ENV_VAR] = old


def timed(fn: Callable[[], object], repeats: int) -> Tuple[float, object]:
    """Best wall time over ``repeats`` calls, and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def shapely_polygons(boxes: torch.Tensor) -> np.ndarray:
    return shapely.polygons(box_to_polygon(boxes.double()).view(-1, 4, 2).numpy())


def shapely_iou_matrix(polys: np.ndarray) -> np.ndarray:
    """Dense IoU the way a shapely 2 user computes it: STRtree candidates, vectorised overlay."""
    tree = shapely.STRtree(polys)
    i, j = tree.query(polys)  # pairs whose bounding boxes intersect
    area = shapely.area(polys)
    inter = shapely.area(shapely.intersection(polys[i], polys[j]))
    union = area[i] + area[j] - inter
    out = np.zeros((len(polys), len(polys)))
    out[i, j] = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return out


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


def row(label: str, seconds: float, pairs: int) -> str:
    return f"  {label:<34}{seconds * 1e3:11.1f} ms  {pairs / seconds / 1e6:8.2f} M pairs/s"


def run_layout(layout: str, args: argparse.Namespace) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    boxes = make_boxes(layout, args.n, gen).double()
    scores = torch.rand(args.n, generator=gen)
    polys = shapely_polygons(boxes)
    n_pairs = args.n * args.n

    with backend("fused"):
        t_fused, iou_fused = timed(lambda: box_iou_rotated(boxes, boxes), args.repeats)
    with backend("plain"):
        t_plain, iou_plain = timed(lambda: box_iou_rotated(boxes, boxes), args.slow_repeats)
    t_shapely, iou_shapely = timed(lambda: shapely_iou_matrix(polys), args.slow_repeats)
    overlapping = int((iou_fused > 0).sum())

    print(f"\n[{layout}] {args.n} x {args.n} boxes, {overlapping} pairs overlap "
          f"({100 * overlapping / n_pairs:.1f}%)")
    print(row("IoU matrix  fused kernel", t_fused, n_pairs))
    print(row("            plain torch", t_plain, n_pairs))
    print(row("            shapely 2 + STRtree", t_shapely, n_pairs))
    print(f"  fused vs shapely {t_shapely / t_fused:8.1f} x   "
          f"fused vs plain {t_plain / t_fused:8.1f} x   plain vs shapely {t_shapely / t_plain:6.2f} x")
    print(f"  max |fused - plain| {(iou_fused - iou_plain).abs().max().item():.1e}   "
          f"max |fused - shapely| {np.abs(iou_fused.numpy() - iou_shapely).max():.1e}")

    with backend("fused"):
        t_nms_fused, kept_fused = timed(
            lambda: nms_rotated(boxes, scores, args.iou_threshold).tolist(), args.repeats)
    with backend("plain"):
        t_nms_plain, kept_plain = timed(
            lambda: nms_rotated(boxes, scores, args.iou_threshold).tolist(), args.slow_repeats)
    t_nms_shapely, kept_shapely = timed(
        lambda: shapely_greedy_nms(polys, scores.numpy(), args.iou_threshold), args.slow_repeats)
    same = kept_fused == kept_plain == kept_shapely
    print(f"  NMS @ {args.iou_threshold:.2f}  fused kernel          {t_nms_fused * 1e3:11.1f} ms  "
          f"({len(kept_fused)} kept)")
    print(f"              plain torch           {t_nms_plain * 1e3:11.1f} ms")
    print(f"              shapely greedy loop   {t_nms_shapely * 1e3:11.1f} ms  "
          f"(same kept lists: {same})")
    print(f"  fused vs shapely {t_nms_shapely / t_nms_fused:8.1f} x   "
          f"fused vs plain {t_nms_plain / t_nms_fused:8.1f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="boxes per set")
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fused path")
    parser.add_argument("--slow-repeats", type=int, default=1,
                        help="runs of the plain path and of shapely")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--layouts", nargs="+", default=["sparse", "dense"],
                        choices=["sparse", "dense"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rotated_iou_fused.load_kernel()
    print(f"torch {torch.__version__}, shapely {shapely.__version__} (GEOS "
          f"{shapely.geos_version_string}), {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; fused kernel built or "
          f"loaded in {rotated_iou_fused.build_seconds:.1f} s")
    for layout in args.layouts:
        run_layout(layout, args)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
