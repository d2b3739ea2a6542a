"""``rsfm submit dota|loveda``: a fine-tuned checkpoint -> the benchmark server's archive."""
from __future__ import annotations

import argparse

from .common import verb


def add_inference_arguments(p: argparse.ArgumentParser, example: str) -> None:
    """``--config``, ``--checkpoint``, ``--tag``, the device options and config overrides: what every
    verb that runs a fine-tuned checkpoint takes."""
    p.add_argument("--config", required=True, help=f"the fine-tuning run config ({example})")
    p.add_argument("--checkpoint", required=True,
                   help="a training checkpoint (tag directory, or the run's checkpoints/ folder: newest complete "
                        "tag), or a consolidated .safetensors / model.safetensors folder / .pth state dict")
    p.add_argument("--tag", default=None, help="tag within a checkpoints folder, e.g. best_step_00012000")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: a GPU if there is one)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                   help="default: the config's train.precision on a GPU, fp32 on the CPU")
    p.add_argument("--batch-size", type=int, default=2,
                   help="detection: images per pass; segmentation: sliding windows per pass (default 2)")
    p.add_argument("--workers", type=int, default=2, help="image-reading worker processes (default 2)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")


def inference_options(args: argparse.Namespace):
    from ..engine.inference import InferenceOptions

    return InferenceOptions(device=args.device, precision=args.precision, batch_size=args.batch_size,
                            workers=args.workers)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run a fine-tuned checkpoint on a benchmark's test images and write the "
                                      "archive its evaluation server takes")
    group = p.add_subparsers(dest="submit_task", required=True, metavar="BENCHMARK")
    _dota(group)
    _loveda(group)


def _dota(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("dota", help="DOTA Task 1: one Task1_<class>.txt per class, whole-image coordinates, "
                                      "zipped flat")
    add_inference_arguments(p, "configs/det/dota2_vit_l12x4.yaml")
    p.add_argument("--images", required=True,
                   help="the test images: `rsfm dota split` output (images/ of patches, merged back to whole "
                        "images) or a folder of whole images")
    p.add_argument("--out", required=True, help="the archive to write (.zip)")
    p.add_argument("--patch-dets", default=None,
                   help="also write the patch-level Task1_<class>.txt files (before merging) to this folder")

    def run(args: argparse.Namespace) -> int:
        from ..engine.benchmarks import submit_dota

        report = submit_dota(args.config, args.checkpoint, args.images, args.out, args.overrides, args.tag,
                             inference_options(args), args.patch_dets)
        total = sum(report.counts.values())
        print(f"{report.path}: {len(report.files)} Task1 files, {total} detections "
              f"({', '.join(f'{c} {n}' for c, n in report.counts.items() if n)})")
        return 0

    verb(p, run)


def _loveda(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("loveda", help="LoveDA: one class-index PNG per test image, named as the image, "
                                        "zipped flat")
    add_inference_arguments(p, "configs/seg/loveda_vit_l12x4.yaml")
    p.add_argument("--images", required=True,
                   help="the LoveDA root (Test/{Urban,Rural}/images_png), its Test folder, or a folder of PNGs")
    p.add_argument("--out", required=True, help="the archive to write (.zip)")
    p.add_argument("--encoding", default="index", choices=["index", "mask"],
                   help="index: class indices 0..6, what the LoveDA server scores (default); mask: the release "
                        "masks' values 1..7")

    def run(args: argparse.Namespace) -> int:
        from ..engine.benchmarks import submit_loveda

        report = submit_loveda(args.config, args.checkpoint, args.images, args.out, args.overrides, args.tag,
                               inference_options(args), args.encoding)
        domains = ", ".join(f"{d} {n}" for d, n in report.counts.items() if n)
        print(f"{report.path}: {len(report.files)} PNGs{f' ({domains})' if domains else ''}, "
              f"encoding {args.encoding}")
        return 0

    verb(p, run)
