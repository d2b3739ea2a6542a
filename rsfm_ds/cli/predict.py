"""``rsfm predict det|seg``: a fine-tuned model over images and scenes of any size (docs/predict.md)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import List, Tuple

from .common import band_list, verb

# `section.field=value`: what an override looks like (argparse hands those after --inputs to it).
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a fine-tuned model over images or georeferenced scenes of any size "
                                       "(tiled, merged; DOTA-style text, GeoJSON, GeoTIFF masks)")
    group = p.add_subparsers(dest="predict_task", required=True, metavar="TASK")
    _task(group, "det", "rotated boxes: <stem>.txt (x1 y1 ... y4 class score) and <stem>.geojson",
          "configs/det/dota2_vit_l12x4.yaml")
    _task(group, "seg", "class masks: <stem>.tif (georeferenced) or <stem>.png",
          "configs/seg/potsdam_vit_l12x4.yaml")


def _split_inputs(inputs: List[str], overrides: List[str]) -> Tuple[List[str], List[str]]:
    """Overrides written after ``--inputs`` land in it: move them back (a path that exists stays)."""
    paths = [i for i in inputs if not _OVERRIDE.match(i) or Path(i).exists()]
    moved = [i for i in inputs if i not in paths]
    return paths, list(overrides) + moved


def _task(group: argparse._SubParsersAction, task: str, help_text: str, example: str) -> None:
    p = group.add_parser(task, help=help_text)
    p.add_argument("--weights", required=True,
                   help="a training checkpoint (tag directory, or the run's checkpoints/ folder: newest complete "
                        "tag), or a consolidated .safetensors / model.safetensors folder / .pth state dict")
    p.add_argument("--tag", default=None, help="tag within a checkpoints folder, e.g. best_step_00012000")
    p.add_argument("--config", required=True, help=f"the fine-tuning run config ({example})")
    p.add_argument("--inputs", required=True, nargs="+", metavar="PATH",
                   help="raster files (GeoTIFF, TIFF, JPEG, PNG) or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in px (default: backbone.img_size for det, data.crop_size for seg)")
    p.add_argument("--overlap", type=int, default=None,
                   help="px shared by neighbouring tiles (default: det round(tile*200/1024), the DOTA split's "
                        "gap; seg data.crop_size - data.eval_stride)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: a GPU if there is one)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                   help="default: the config's train.precision on a GPU, fp32 on the CPU")
    p.add_argument("--bands", type=band_list, default=None,
                   help="comma-separated 1-based bands to read, in the model's order (default: data.bands of the "
                        "config, else every band)")
    if task == "det":
        p.add_argument("--score-thr", type=float, default=None,
                       help="keep detections scoring above this (default: the config's model.roi.score_thr)")
        p.add_argument("--iou-thr", type=float, default=0.1,
                       help="rotated IoU of the per-class NMS that merges tiles (default 0.1, the DOTA devkit's)")
    else:
        p.add_argument("--probabilities", action="store_true",
                       help="also write <stem>_probs.tif, the class probabilities x255 (uint8)")
    p.add_argument("--no-overlay", action="store_true", help="do not write <stem>_overlay.png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: keep them; an input whose outputs all exist is skipped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")

    def run(args: argparse.Namespace) -> int:
        from ..engine.predict import PredictOptions, predict_files

        inputs, overrides = _split_inputs(args.inputs, args.overrides)
        options = PredictOptions(
            tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
            precision=args.precision, bands=args.bands, overwrite=args.overwrite,
            overlay=not args.no_overlay, progress=not args.no_progress,
            score_thr=getattr(args, "score_thr", None), iou_thr=getattr(args, "iou_thr", 0.1),
            probabilities=getattr(args, "probabilities", False))
        report = predict_files(task, args.config, args.weights, inputs, args.out, overrides, args.tag, options)
        if report.rank != 0:  # one rank (of several) tells what was done
            return 0
        for record in report.summary["inputs"]:
            if record.get("skipped"):
                print(f"{record['input']}: skipped, {record['note']}")
                continue
            counts = ", ".join(f"{c} {n}" for c, n in record["counts"].items() if n) or "nothing"
            print(f"{record['input']}: {record['tiles']} tiles, {record['megapixels_per_s']} Mpx/s; {counts}")
        print(f"wrote {report.out_dir} ({report.predicted} predicted, {report.skipped} skipped; "
              f"summary {report.out_dir / 'predictions.json'})")
        return 0

    verb(p, run)
