"""Pretraining data throughput, images/s on the same synthetic MillionAID images:

  (a) OpenCV full-resolution decode only (the bound a decode-then-crop pipeline cannot beat), in
      1 and 2 processes;
  (b) our loader, full pipeline (tar shards -> RandomResizedCrop(224, 0.2-1) + flip + normalise ->
      float batches), 1 and 2 DataLoader workers; and the same up to uint8 batches, i.e. with the
      normalisation left to the device (``PretrainBatch.normalized(device)``), as a GPU run does;
  (c) the pipeline MAE users run today: torchvision ImageFolder + PIL + RandomResizedCrop(224,
      scale=(0.2, 1)) + RandomHorizontalFlip + ToTensor + Normalize, DataLoader with the same workers.

Prints figures and ratios; asserts nothing about time. Each figure is one full pass over the
images, the median of ``--repeats`` (the pass of median images/s, with its CPU cost), timed end to end (worker start-up included, identically for (b) and
(c); it is small against a pass of 2000 images). Next to images/s it prints the CPU time spent per
image by all processes of the run (the caller, its DataLoader workers or decode processes): on a
shared machine the wall-clock figures move with the load of other users, the CPU cost per image
much less. DataLoader workers are started with ``fork`` here for both (b) and (c) so that their CPU
time is accounted to this process; the start method does not change the steady-state rate.

    python bench/data_throughput.py --images 2000 --workdir /tmp/rsfm_bench
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np


def _decode_all(paths: List[str]) -> int:
    cv2.setNumThreads(1)
    n = 0
    for p in paths:
        data = Path(p).read_bytes()
        n += cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    return n


def _cpu_seconds() -> float:
    """User + system time of this process and of its children that have been waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(run: Callable[[], int]) -> Tuple[float, float]:
    """(images/s, CPU ms per image) of ``run``, which returns the number of images it made."""
    gc.collect()
    cpu, t = _cpu_seconds(), time.perf_counter()
    n = run()
    wall, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
    return n / wall, 1e3 * cpu / n


def decode_only(paths: List[str], processes: int) -> int:
    """Full-resolution decode of every file, split over ``processes`` processes (page cache warm)."""
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        return sum(pool.map(_decode_all, [paths[i::processes] for i in range(processes)]))


def ours(manifest: Path, workers: int, batch_size: int, float_images: bool) -> int:
    from rsfm_ds.data.pretrain.loader import PretrainDataConfig, build_pretrain_loader

    cfg = PretrainDataConfig(shards=str(manifest), num_workers=workers, worker_start="fork")
    n = 0
    for batch in build_pretrain_loader(cfg, batch_size, rank=0, world_size=1):
        n += (batch.images if float_images else batch.pixels).shape[0]
    return n


def imagefolder_pil(root: Path, workers: int, batch_size: int) -> int:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.2, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    dataset = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, multiprocessing_context="fork")
    return sum(images.shape[0] for images, _ in loader)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="synthetic images (default 2000)")
    ap.add_argument("--min-size", type=int, default=256, help="smallest image side, px (default 256)")
    ap.add_argument("--max-size", type=int, default=1024, help="largest image side, px (default 1024)")
    ap.add_argument("--workdir", default="/tmp/rsfm_bench_data", help="tree and shards go here (reused)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="passes per figure; the median is kept")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ap.add_argument("--no-imagefolder", action="store_true",
                    help="leave out (c), e.g. to compare two versions of the loader against decode-only")
    args = ap.parse_args()

    import torch

    from rsfm_ds.data.pretrain.shards import write_millionaid_shards
    from rsfm_ds.data.synth.millionaid import synth_millionaid

    torch.set_num_threads(1)
    work = Path(args.workdir)
    name = f"{args.images}" + ("" if (args.min_size, args.max_size) == (256, 1024)
                                 else f"_{args.min_size}-{args.max_size}px")
    tree, shards = work / f"millionaid_{name}", work / f"shards_{name}"
    if not (tree / "train").is_dir():
        print(f"generating {args.images} images in {tree} ...", flush=True)
        synth_millionaid(tree, images=args.images, seed=0, min_size=args.min_size, max_size=args.max_size)
    if not (shards / "manifest.json").is_file():
        write_millionaid_shards(tree, shards, maxcount=256, workers=2)
    paths = sorted(str(p) for p in (tree / "train").rglob("*.jpg"))
    mean_px = np.mean([w * h for w, h in (_size(p) for p in paths[:200])])
    print(f"{len(paths)} JPEGs, {sum(Path(p).stat().st_size for p in paths) / len(paths) / 1e3:.0f} kB "
          f"and {mean_px / 1e6:.2f} Mpx on average; batch {args.batch_size}; "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}", flush=True)
    _decode_all(paths)  # warm the page cache (and run the decoder once) before measuring

    runs = {"decode-only cv2, 1 proc": lambda: decode_only(paths, 1),
            "decode-only cv2, 2 procs": lambda: decode_only(paths, 2)}
    for w in (1, 2):
        label = f"{w} worker{'s' * (w > 1)}"
        runs[f"ours, {label}"] = lambda w=w: ours(shards / "manifest.json", w, args.batch_size, True)
        runs[f"ours uint8, {label}"] = lambda w=w: ours(shards / "manifest.json", w, args.batch_size, False)
        if not args.no_imagefolder:
            runs[f"ImageFolder+PIL, {label}"] = lambda w=w: imagefolder_pil(tree / "train", w, args.batch_size)
    results: Dict[str, List[Tuple[float, float]]] = {name: [] for name in runs}
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for _ in range(args.repeats):  # interleaved, so that a burst of load hits every pipeline
        for name, run in runs.items():
            results[name].append(_measure(run))
    # The median pass (by images/s, with its own CPU cost): robust to a burst of load either way.
    figures = {name: sorted(r)[len(r) // 2] for name, r in results.items()}
    print(f"load average before / after: {load0} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'pipeline':30s} {'img/s':>8s} {'CPU ms/img':>11s}")
    for name, (rate, cpu) in figures.items():
        print(f"{name:30s} {rate:8.1f} {cpu:11.2f}")

    print("ratios (img/s; in brackets the same ratio from CPU cost per image):")
    for w, procs in (("1 worker", "1 proc"), ("2 workers", "2 procs")):
        for ours_name in (f"ours, {w}", f"ours uint8, {w}"):
            for base, target in ((f"ImageFolder+PIL, {w}", 1.5), (f"decode-only cv2, {procs}", 0.8)):
                if base not in figures:
                    continue
                mine, theirs = figures[ours_name], figures[base]
                print(f"  {ours_name:20s} / {base:28s} {mine[0] / theirs[0]:5.2f}x  "
                      f"({theirs[1] / mine[1]:.2f}x)   target >= {target}x")
    if args.json:
        print(json.dumps({k: {"images_per_s": v[0], "cpu_ms_per_image": v[1]} for k, v in figures.items()},
                         indent=1))


def _size(path: str):
    from rsfm_ds.data.jpeg import jpeg_size

    with open(path, "rb") as f:
        return jpeg_size(f.read(1 << 16))


if __name__ == "__main__":
    main()
