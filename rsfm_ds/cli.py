"""``rsfm``: one command, one verb per stage. Thin: parse, validate, call into the library.

Each verb group is added by an ``add_<group>(subparsers)`` function below and dispatches to a
library function a user can import as well; errors a user can fix (bad config, missing file) are
printed as one line naming the field or file, with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, List, Optional

from .config import ConfigError
from .data.verify_cli import add_datasets
from .planning.cli import add_plan


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list backbone presets: sizes, parameters, GFLOPs")
    p.add_argument("--img-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--mask-ratio", type=float, default=0.75,
                   help="MAE masking ratio for the encoder-FLOPs column (default 0.75)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")

    def run(args: argparse.Namespace) -> int:
        from .models.presets import format_preset_table, preset_table

        rows = preset_table(img_size=args.img_size, mask_ratio=args.mask_ratio)
        print(json.dumps(rows, indent=2) if args.json else format_preset_table(rows))
        return 0

    p.set_defaults(func=run)


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="MAE pretraining on DeepSpeed (run under the deepspeed launcher)",
                       description="MAE pretraining. Run one process per device, e.g. "
                                   "`deepspeed --num_gpus 8 $(which rsfm) pretrain --config configs/pretrain/vit_l12x4.yaml` "
                                   "or launch/pretrain.sh.")
    p.add_argument("--config", required=True, help="run config YAML (configs/pretrain/<preset>.yaml)")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest complete checkpoint in run_dir), a checkpoint directory, or 'none'")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")

    def run(args: argparse.Namespace) -> int:
        from .config import load_config
        from .engine.config import PretrainConfig
        from .engine.pretrain import pretrain

        overrides = list(args.overrides)
        if args.resume is not None:
            overrides.append(f"checkpoint.resume={'null' if args.resume == 'none' else args.resume}")
        pretrain(load_config(PretrainConfig, args.config, overrides))
        return 0

    p.set_defaults(func=run)


def _synth_millionaid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("millionaid", help="remote-sensing-like JPEGs in MillionAID's layout "
                                          "train/<L1>/<L2>/[<L3>]/*.jpg (51 leaf classes)")
    p.add_argument("--out", required=True, help="dataset root to create (train/ goes inside)")
    p.add_argument("--images", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--min-size", type=int, default=256, help="smallest image side, px (default 256)")
    p.add_argument("--max-size", type=int, default=1024, help="largest image side, px (default 1024)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")

    def run(args: argparse.Namespace) -> int:
        from .data.synth_millionaid import synth_millionaid

        report = synth_millionaid(args.out, images=args.images, seed=args.seed, min_size=args.min_size,
                                  max_size=args.max_size, quality=args.quality)
        print(f"wrote {report.images} images ({report.bytes / 1e6:.1f} MB) in {report.classes} classes "
              f"under {report.root / 'train'}")
        return 0

    p.set_defaults(func=run)


def _synth_potsdam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("potsdam", help="Potsdam-like tiles in the ISPRS release layout (2_Ortho_RGB, "
                                       "3_Ortho_IRRG, 5_Labels_all, 5_Labels_all_noBoundary)")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--tiles", type=int, default=4, help="number of tiles, real train/test ids (default 4, max 38)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=6000,
                   help="tile side in px at 5 cm (default 6000 as the release; 1024 for quick CPU runs)")

    def run(args: argparse.Namespace) -> int:
        from .data.synth_seg import synth_potsdam

        try:
            report = synth_potsdam(args.out, tiles=args.tiles, seed=args.seed, size=args.size)
        except ValueError as e:
            print(f"rsfm synth potsdam: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {len(report.items)} tiles ({report.bytes / 1e6:.1f} MB) under {report.root}: "
              f"{' '.join(report.items)}")
        return 0

    p.set_defaults(func=run)


def _synth_loveda(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loveda", help="LoveDA-like scenes in the release layout "
                                      "{Train,Val,Test}/{Urban,Rural}/{images_png,masks_png}")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--images", type=int, default=4, help="images per split, alternately Urban/Rural (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=1024, help="image side in px (default 1024 as the release)")

    def run(args: argparse.Namespace) -> int:
        from .data.synth_seg import synth_loveda

        try:
            report = synth_loveda(args.out, images=args.images, seed=args.seed, size=args.size)
        except ValueError as e:
            print(f"rsfm synth loveda: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {len(report.items)} images ({report.bytes / 1e6:.1f} MB) under {report.root}")
        return 0

    p.set_defaults(func=run)


def _synth_dota(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dota", help="DOTA-format images/*.png + labelTxt/*.txt with learnable oriented "
                                    "objects (plane, ship, storage-tank, small-vehicle, tennis-court)")
    p.add_argument("--out", required=True, help="dataset folder to create (images/ and labelTxt/ go inside)")
    p.add_argument("--images", type=int, default=50, help="number of images (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=1024, help="image side in px (default 1024)")
    p.add_argument("--first-id", type=int, default=0,
                   help="ids are P<first-id + i>: give a second split distinct ids (default 0)")

    def run(args: argparse.Namespace) -> int:
        from .data.synth_dota import synth_dota

        try:
            report = synth_dota(args.out, images=args.images, seed=args.seed, size=args.size,
                                first_id=args.first_id)
        except ValueError as e:
            print(f"rsfm synth dota: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {report.images} images, {report.objects} objects ({report.difficult} difficult) "
              f"under {report.root}: {report.per_class}")
        return 0

    p.set_defaults(func=run)


def _synth_dior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dior", help="DIOR-R-format 800 px JPEGs, oriented-box XMLs and image sets with "
                                    "learnable objects (airplane, ship, storagetank, vehicle, tenniscourt)")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--images", type=int, default=50, help="number of images over all splits (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=800, help="image side in px (default 800 as the release)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of images in test (default 0.2)")

    def run(args: argparse.Namespace) -> int:
        from .data.synth_dota import synth_dior

        try:
            report = synth_dior(args.out, images=args.images, seed=args.seed, size=args.size,
                                val_fraction=args.val_fraction, test_fraction=args.test_fraction)
        except ValueError as e:
            print(f"rsfm synth dior: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {report.images} images, {report.objects} objects ({report.difficult} difficult) "
              f"under {report.root}: {report.per_class}")
        return 0

    p.set_defaults(func=run)


# `rsfm synth <dataset>` sub-verbs; each dataset adds its generator here.
SYNTH_DATASETS: List[Callable[[argparse._SubParsersAction], None]] = [_synth_millionaid, _synth_potsdam,
                                                                      _synth_loveda, _synth_dota, _synth_dior]


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write small synthetic datasets in the real on-disk formats")
    datasets = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for add in SYNTH_DATASETS:
        add(datasets)


def _shards_millionaid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("millionaid", help="MillionAID tree -> WebDataset shards + manifest.json "
                                          "(parallel; a re-run keeps the shards that verify)")
    p.add_argument("--root", required=True, help="MillionAID root (holds train/)")
    p.add_argument("--out", required=True, help="folder for millionaid-<split>-%%06d.tar and manifest.json")
    p.add_argument("--split", default="train", help="split folder under --root (default train)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most (default 1000)")
    p.add_argument("--maxsize", type=float, default=1e9,
                   help="bytes per shard at most, of source files (default 1e9)")
    p.add_argument("--workers", type=int, default=1, help="shards written in parallel (default 1)")
    p.add_argument("--max-side", type=int, default=None,
                   help="re-encode images whose longer side exceeds this many pixels (default: keep bytes)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="quality of re-encoded JPEGs (default 95)")
    p.add_argument("--shuffle-seed", type=int, default=0,
                   help="seed of the sample order across shards (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the sorted scan order in the shards")
    p.add_argument("--no-validate", action="store_true",
                   help="do not decode each image while writing (faster; corrupt files then reach the loader)")

    def run(args: argparse.Namespace) -> int:
        from .data.shards import write_millionaid_shards

        report = write_millionaid_shards(
            args.root, args.out, split=args.split, maxcount=args.maxcount, maxsize=int(args.maxsize),
            workers=args.workers, max_side=args.max_side, jpeg_quality=args.jpeg_quality,
            shuffle_seed=None if args.no_shuffle else args.shuffle_seed, validate=not args.no_validate,
            log=print)
        m = report.manifest
        print(f"{report.manifest_path}: {m.num_samples} samples in {len(m.shards)} shards "
              f"({m.num_bytes / 1e9:.2f} GB), {len(m.classes)} classes; {len(report.written)} written, "
              f"{len(report.kept)} kept, {len(m.skipped)} files skipped")
        for s in m.skipped[:20]:
            print(f"  skipped {s.path}: {s.reason}")
        return 0

    p.set_defaults(func=run)


def _shards_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check shards against their manifest (existence, size, sha256)")
    p.add_argument("manifest", help="manifest.json; its shards are looked up next to it")
    p.add_argument("--quick", action="store_true", help="sizes only, without reading the shards")

    def run(args: argparse.Namespace) -> int:
        from .data.manifest import ManifestError, verify_manifest

        try:
            problems = verify_manifest(args.manifest, "size" if args.quick else "sha256")
        except ManifestError as e:
            print(f"rsfm shards verify: error: {e}", file=sys.stderr)
            return 2
        for problem in problems:
            print(f"{problem.url}: {problem.reason}")
        print(f"{args.manifest}: {'FAILED, ' + str(len(problems)) + ' bad shards' if problems else 'OK'}")
        return 1 if problems else 0

    p.set_defaults(func=run)


# `rsfm shards <verb>` sub-verbs: one writer per dataset, plus verify.
SHARD_VERBS: List[Callable[[argparse._SubParsersAction], None]] = [_shards_millionaid, _shards_verify]


def add_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="write WebDataset shards with a manifest, or verify them")
    verbs = p.add_subparsers(dest="shards_verb", required=True, metavar="VERB")
    for add in SHARD_VERBS:
        add(verbs)


def _potsdam_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="Potsdam tiles -> crops in mmseg's layout (img_dir, ann_dir; train, val)")
    p.add_argument("--root", required=True, help="Potsdam release root (2_Ortho_RGB, 5_Labels_all, ...)")
    p.add_argument("--out", required=True, help="output root for img_dir/, ann_dir/ and prepare.json")
    p.add_argument("--protocol", type=int, choices=(5, 6), default=5,
                   help="5: clutter ignored, as RVSA (default); 6: clutter is class 5")
    p.add_argument("--crop", type=int, default=512, help="crop side in px (default 512)")
    p.add_argument("--stride", type=int, default=256, help="crop step in px; the last crop is clamped (default 256)")
    p.add_argument("--eroded", action="store_true",
                   help="use the eroded labels of 5_Labels_all_noBoundary (boundaries ignored; as RVSA/mmseg)")
    p.add_argument("--modality", choices=("rgb", "irrg"), default="rgb",
                   help="input images: 2_Ortho_RGB (default) or 3_Ortho_IRRG")
    p.add_argument("--unknown-to-ignore", action="store_true",
                   help="map label colours outside the palette to 255 (counted) instead of failing")

    def run(args: argparse.Namespace) -> int:
        from .data.potsdam import prepare_potsdam

        try:
            report = prepare_potsdam(args.root, args.out, protocol=args.protocol, crop=args.crop,
                                     stride=args.stride, eroded=args.eroded, modality=args.modality,
                                     unknown_to_ignore=args.unknown_to_ignore)
        except ValueError as e:
            print(f"rsfm potsdam prepare: error: {e}", file=sys.stderr)
            return 2
        for split in ("train", "val"):
            print(f"{split}: {len(report.tiles[split])} tiles -> {report.crops[split]} crops")
        for name, n in report.unknown_pixels.items():
            print(f"  {name}: {n} pixels of unknown colours mapped to {report.ignore_index}")
        print(f"wrote {args.out}/prepare.json ({report.protocol} classes: {', '.join(report.classes)})")
        return 0

    p.set_defaults(func=run)


def add_potsdam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("potsdam", help="ISPRS Potsdam: prepare crops from the release tiles")
    verbs = p.add_subparsers(dest="potsdam_verb", required=True, metavar="VERB")
    _potsdam_prepare(verbs)


def _dota_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="cut DOTA images (and labels) into overlapping patches, "
                                     "named <id>__<rate>__<x>___<y>")
    p.add_argument("--src", required=True, help="DOTA folder with images/ and, if labelled, labelTxt/")
    p.add_argument("--out", required=True, help="output folder (images/ and labelTxt/ go inside)")
    p.add_argument("--size", type=int, default=1024, help="patch side in px (default 1024)")
    p.add_argument("--gap", type=int, default=200, help="overlap of neighbouring patches in px (default 200)")
    p.add_argument("--rates", type=float, nargs="+", default=[1.0],
                   help="resize factors, e.g. 0.5 1.0 1.5 for multi-scale (default 1.0)")
    p.add_argument("--iof-thr", type=float, default=0.7,
                   help="keep an object in a patch when area inside / area >= this (default 0.7)")
    p.add_argument("--pad-value", type=int, nargs=3, default=[104, 116, 124], metavar=("B", "G", "R"),
                   help="colour of the padding past the image border (default 104 116 124)")
    p.add_argument("--ext", default=".png", choices=[".png", ".jpg", ".bmp", ".tif"],
                   help="patch image format (default .png)")
    p.add_argument("--dataset", default="dota2", choices=["dota2", "dota1.5", "dota1"],
                   help="class list the labels are checked against (default dota2)")
    p.add_argument("--workers", type=int, default=1, help="images split in parallel (default 1)")

    def run(args: argparse.Namespace) -> int:
        from .data.dota import dota_classes
        from .data.dota_split import SplitConfig, split_dota

        try:
            config = SplitConfig(size=args.size, gap=args.gap, rates=tuple(args.rates), iof_thr=args.iof_thr,
                                 pad_value=tuple(args.pad_value), ext=args.ext)
            report = split_dota(args.src, args.out, config, dota_classes(args.dataset), workers=args.workers)
        except ValueError as e:
            print(f"rsfm dota split: error: {e}", file=sys.stderr)
            return 2
        print(f"{report.images} images -> {report.patches} patches under {args.out}; {report.objects} objects "
              f"-> {report.patch_objects} patch objects, {report.dropped} in no patch")
        return 0

    p.set_defaults(func=run)


def _dota_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="patch detections (Task1_<class>.txt) -> image detections: map back, "
                                     "per-class rotated NMS")
    p.add_argument("--dets", required=True, help="folder of patch-level Task1_<class>.txt files")
    p.add_argument("--out", required=True, help="folder for the merged Task1_<class>.txt files")
    p.add_argument("--iou", type=float, default=0.1, help="NMS IoU threshold (default 0.1, the devkit's)")
    p.add_argument("--dataset", default="dota2", choices=["dota2", "dota1.5", "dota1"],
                   help="write one file per class of this dataset, empty where nothing was found "
                        "(default dota2)")

    def run(args: argparse.Namespace) -> int:
        from .data.dota import dota_classes
        from .data.dota_merge import merge_dota

        try:
            report = merge_dota(args.dets, args.out, iou_thr=args.iou, classes=dota_classes(args.dataset))
        except ValueError as e:
            print(f"rsfm dota merge: error: {e}", file=sys.stderr)
            return 2
        print(f"{report.files} files: {report.patch_detections} patch detections -> "
              f"{report.image_detections} image detections in {args.out}")
        return 0

    p.set_defaults(func=run)


def add_dota(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dota", help="DOTA: split images into patches, merge patch detections")
    verbs = p.add_subparsers(dest="dota_verb", required=True, metavar="VERB")
    _dota_split(verbs)
    _dota_merge(verbs)


def _add_eval_det(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("det", help="rotated-box mAP of Task1_<class>.txt detections (DOTA devkit "
                                     "semantics by default)")
    p.add_argument("--dets", required=True, help="folder of Task1_<class>.txt files (image score x1 y1 ... y4)")
    p.add_argument("--labels", required=True,
                   help="DOTA labelTxt folder, or a DIOR-R root / Annotations folder with XMLs (--dataset dior)")
    p.add_argument("--dataset", default="dota2", choices=["dota2", "dota1.5", "dota1", "dior"],
                   help="class list and label format (default dota2)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold of a true positive (default 0.5)")
    p.add_argument("--metric", default="voc07", choices=["voc07", "area"],
                   help="AP: VOC07 11-point or area under the curve (default voc07)")
    p.add_argument("--mmrotate", action="store_true",
                   help="mmrotate's matching: IoU >= threshold and difficult objects counted "
                        "(default: devkit, IoU > threshold, difficult ignored)")
    p.add_argument("--images", default=None,
                   help="file listing the image ids to evaluate, one per line (e.g. DIOR-R's "
                        "ImageSets/Main/test.txt); default every label file")
    p.add_argument("--json", default=None, help="also write {\"mAP\": ..., \"AP\": {class: ...}} here")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .evaluation.rotated_map import MapProtocol, evaluate_task1, format_map_table

        try:
            protocol = MapProtocol(iou_thr=args.iou, inclusive=args.mmrotate,
                                   ignore_difficult=not args.mmrotate, metric=args.metric)
            image_ids = None
            if args.images is not None:
                text = Path(args.images).read_text(encoding="utf-8")
                image_ids = [line.strip() for line in text.splitlines() if line.strip()]
            result = evaluate_task1(args.dets, args.labels, args.dataset, protocol, image_ids)
        except ValueError as e:
            print(f"rsfm eval det: error: {e}", file=sys.stderr)
            return 2
        print(format_map_table(result))
        if args.json is not None:
            Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        return 0

    p.set_defaults(func=run)


def _add_eval_seg(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("seg", help="segmentation OA / IoU / F1 of index PNGs against same-named label PNGs "
                                     "(mmseg IoUMetric semantics)")
    p.add_argument("--pred", required=True, help="folder of predicted index PNGs")
    p.add_argument("--label", required=True, help="folder of label index PNGs; every one needs a prediction")
    p.add_argument("--num-classes", type=int, required=True, help="number of classes K (Potsdam 5 or 6, LoveDA 7)")
    p.add_argument("--ignore-index", type=int, default=255, help="label value not scored (default 255)")
    p.add_argument("--reduce-zero-label", action="store_true",
                   help="labels are raw with 0 = no-data (LoveDA masks): 0 -> ignored, v -> v - 1")
    p.add_argument("--class-names", default=None, help="comma-separated names of the K classes (default 0..K-1)")
    p.add_argument("--json", default=None,
                   help="also write {\"aAcc\", \"mIoU\", \"mF1\", \"IoU\": {...}, \"F1\": {...}} in percent here")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .evaluation.seg_metrics import evaluate_dirs, format_result

        names = None if args.class_names is None else [n.strip() for n in args.class_names.split(",")]
        try:
            result = evaluate_dirs(args.pred, args.label, args.num_classes, args.ignore_index,
                                   args.reduce_zero_label, names)
        except (ValueError, FileNotFoundError) as e:
            print(f"rsfm eval seg: error: {e}", file=sys.stderr)
            return 2
        print(format_result(result))
        if args.json is not None:
            Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        return 0

    p.set_defaults(func=run)


# `rsfm eval <task>` sub-verbs; each task adds its evaluator here.
EVAL_TASKS: List[Callable[[argparse._SubParsersAction], None]] = [_add_eval_det, _add_eval_seg]


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate predictions against ground truth")
    group = p.add_subparsers(dest="eval_task", required=True, metavar="TASK")
    for add in EVAL_TASKS:
        add(group)


def _add_finetune_task(group: argparse._SubParsersAction, name: str, summary: str, example: str,
                       module: str, config_class: str, task_class: str) -> None:
    """One `rsfm finetune <name>` sub-verb: load the run config, build the task, run the engine."""
    p = group.add_parser(name, help=f"{summary} (run under the deepspeed launcher for several devices)",
                         description=f"{summary}, e.g. `deepspeed --num_gpus 8 $(which rsfm) finetune "
                                     f"{name} --config {example}`; a plain `rsfm finetune {name}` runs one "
                                     "process.")
    p.add_argument("--config", required=True, help=f"run config YAML ({example})")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest complete checkpoint in run_dir), a checkpoint directory, or 'none'")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")

    def run(args: argparse.Namespace) -> int:
        import importlib

        from .config import load_config
        from .engine.finetune import finetune

        mod = importlib.import_module(f"rsfm_ds.engine.{module}")
        overrides = list(args.overrides)
        if args.resume is not None:
            overrides.append(f"checkpoint.resume={'null' if args.resume == 'none' else args.resume}")
        cfg = load_config(getattr(mod, config_class), args.config, overrides)
        finetune(cfg, getattr(mod, task_class)(cfg))
        return 0

    p.set_defaults(func=run)


def _add_finetune_det(group: argparse._SubParsersAction) -> None:
    _add_finetune_task(group, "det", "Oriented R-CNN on DOTA / DIOR-R", "configs/det/dota2_vit_l12x4.yaml",
                       "detection", "DetFinetuneConfig", "DetectionTask")


def _add_finetune_seg(group: argparse._SubParsersAction) -> None:
    _add_finetune_task(group, "seg", "UperNet on Potsdam / LoveDA", "configs/seg/potsdam_vit_l12x4.yaml",
                       "segmentation", "SegFinetuneConfig", "SegmentationTask")


# `rsfm finetune <task>` sub-verbs; each downstream task adds its trainer here.
FINETUNE_TASKS: List[Callable[[argparse._SubParsersAction], None]] = [_add_finetune_det, _add_finetune_seg]


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained backbone on a downstream task (DeepSpeed)")
    group = p.add_subparsers(dest="finetune_task", required=True, metavar="TASK")
    for add in FINETUNE_TASKS:
        add(group)


def _convert_zero_to_fp32(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("zero-to-fp32", help="ZeRO checkpoint -> consolidated fp32 safetensors (sharded, streamed)")
    p.add_argument("ckpt_dir", help="tag directory (.../checkpoints/step_00000020) or checkpoints folder")
    p.add_argument("out", help="output folder: model.safetensors, or shards + model.safetensors.index.json")
    p.add_argument("--tag", default=None, help="tag in a checkpoints folder (default: newest complete)")
    p.add_argument("--max-shard-size", default="5GB", help="bytes per file at most, e.g. 5GB, 500MB, 2GiB (default 5GB)")

    def run(args: argparse.Namespace) -> int:
        from .checkpoint import zero_to_fp32

        result = zero_to_fp32(args.ckpt_dir, args.out, tag=args.tag, max_shard_size=args.max_shard_size)
        print(f"{result.num_tensors} tensors, {result.num_params:,} parameters (step {result.metadata.get('step')}) "
              f"-> {', '.join(str(f) for f in result.files)}")
        return 0

    p.set_defaults(func=run)


def _convert_mae_to_backbone(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("mae-to-backbone", help="MAE checkpoint -> backbone safetensors + json sidecar")
    p.add_argument("src", metavar="IN", help="ZeRO tag dir / checkpoints folder, or zero-to-fp32 output (folder, "
                                             ".safetensors or index json)")
    p.add_argument("out", metavar="OUT", help="output .safetensors (the sidecar is OUT with .json)")
    p.add_argument("--tag", default=None, help="tag in a checkpoints folder (default: newest complete)")
    p.add_argument("--img-size", type=int, default=None,
                   help="resolution the backbone is meant for, e.g. 512, 800, 1024 (default: pretraining's)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="weights dtype (default fp32)")
    p.add_argument("--with-pos-embed", action="store_true",
                   help="also store the sin-cos pos_embed for the --img-size grid (our backbones recompute it)")

    def run(args: argparse.Namespace) -> int:
        from .checkpoint import mae_to_backbone

        result = mae_to_backbone(args.src, args.out, img_size=args.img_size, dtype=args.dtype,
                                 with_pos_embed=args.with_pos_embed, tag=args.tag)
        m = result.metadata
        print(f"backbone {m['preset']} (step {m.get('step')}, {m['img_size']} px, {m['dtype']}): "
              f"{result.num_params:,} parameters -> {', '.join(str(f) for f in result.files)}")
        return 0

    p.set_defaults(func=run)


def _convert_to_timm(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("to-timm", help="weights for timm.create_model('rsfm_<preset>', pretrained=True, "
                                         "pretrained_cfg_overlay=dict(file=OUT))")
    p.add_argument("src", metavar="IN", help="as for mae-to-backbone")
    p.add_argument("out", metavar="OUT", help="output .safetensors")
    p.add_argument("--tag", default=None, help="tag in a checkpoints folder (default: newest complete)")

    def run(args: argparse.Namespace) -> int:
        from .checkpoint import to_timm

        result = to_timm(args.src, args.out, tag=args.tag)
        print(f"wrote {args.out}; load it with timm.create_model({result.metadata['timm_model']!r}, pretrained=True, "
              f"pretrained_cfg_overlay=dict(file={str(args.out)!r})) after importing rsfm_ds.models.presets")
        return 0

    p.set_defaults(func=run)


def _convert_reshard(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("reshard", help="ZeRO checkpoint -> DeepSpeed universal checkpoint (resume on any "
                                         "number of ranks)")
    p.add_argument("ckpt_dir", help="tag directory or checkpoints folder")
    p.add_argument("out", help="output tag directory (step_XXXXXXXX) or a folder to write the tag into, e.g. "
                               "the new run's checkpoints/")
    p.add_argument("--tag", default=None, help="tag in a checkpoints folder (default: newest complete)")
    p.add_argument("--workers", type=int, default=1, help="DeepSpeed extract/merge processes (default 1)")

    def run(args: argparse.Namespace) -> int:
        from .checkpoint import reshard

        out = reshard(args.ckpt_dir, args.out, tag=args.tag, workers=args.workers)
        print(f"universal checkpoint {out}; resume with `rsfm pretrain ... --resume {out}`")
        return 0

    p.set_defaults(func=run)


def _convert_inspect(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("inspect", help="preset, step, samples seen, world size, dtype, parameters, files")
    p.add_argument("path", help="tag dir, checkpoints folder, safetensors file / index / folder, or timm file")
    p.add_argument("--tag", default=None, help="tag in a checkpoints folder (default: newest complete)")
    p.add_argument("--json", action="store_true", help="print JSON")

    def run(args: argparse.Namespace) -> int:
        from .checkpoint import inspect_checkpoint

        info = inspect_checkpoint(args.path, tag=args.tag)
        print(json.dumps(info.to_json(), indent=2) if args.json else info.format())
        return 0

    p.set_defaults(func=run)


# `rsfm convert <verb>` sub-verbs, in the order a checkpoint usually goes through them.
CONVERT_VERBS: List[Callable[[argparse._SubParsersAction], None]] = [
    _convert_zero_to_fp32, _convert_mae_to_backbone, _convert_to_timm, _convert_reshard, _convert_inspect]


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="checkpoint conversion: zero-to-fp32, mae-to-backbone, to-timm, reshard, "
                                       "inspect (docs/checkpoints.md)")
    verbs = p.add_subparsers(dest="convert_verb", required=True, metavar="VERB")
    for add in CONVERT_VERBS:
        add(verbs)

    # Every verb reports a checkpoint that does not fit (ValueError) or an output in the way as one line.
    def guarded(run_verb: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            try:
                return run_verb(args)
            except (ValueError, FileExistsError) as e:
                print(f"rsfm convert {args.convert_verb}: error: {e}", file=sys.stderr)
                return 2
        return run

    for verb in verbs.choices.values():
        verb.set_defaults(func=guarded(verb.get_default("func")))


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="markdown report with plots from pretraining and fine-tuning runs")
    p.add_argument("--out", required=True, help="report file (plots are written beside it)")
    p.add_argument("--pretrain", default=None, help="pretraining run_dir")
    p.add_argument("--finetune", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="a fine-tuning run_dir under a name (repeatable)")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=JSON",
                   help="the --json of an `rsfm eval` of NAME's saved predictions, shown beside the run's "
                        "own metrics (repeatable)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .report import write_report

        def named(items: List[str], flag: str, value: str) -> dict:
            out = {}
            for item in items:
                if "=" not in item:
                    raise ConfigError(f"{flag} {item!r}: expected NAME={value}")
                name, path = item.split("=", 1)
                out[name] = Path(path)
            return out

        finetunes = named(args.finetune, "--finetune", "RUN_DIR")
        independent = named(args.eval, "--eval", "JSON")
        unknown = sorted(set(independent) - set(finetunes))
        if unknown:
            raise ConfigError(f"--eval {unknown[0]}=...: no --finetune of that name")
        path = write_report(Path(args.out), Path(args.pretrain) if args.pretrain else None, finetunes,
                            independent)
        print(f"report: {path}")
        return 0

    p.set_defaults(func=run)


def add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="scaling study: fine-tune a grid of presets x datasets x train fractions, "
                       "tabulate and plot", description="Without --cell/--count/--list/--prepare/--collect: "
                       "prepare the data, run every unfinished cell locally, collect. On a cluster: "
                       "launch/slurm/submit_study.sh runs one cell per array task (--cell).")
    p.add_argument("--config", required=True, help="study config YAML (configs/study/scaling.yaml)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cell", type=int, default=None, metavar="I",
                      help="run cell I in the ranks of this job (under deepspeed / srun, or one process)")
    mode.add_argument("--count", action="store_true", help="print the number of cells")
    mode.add_argument("--list", action="store_true", help="list the cells with their index and status")
    mode.add_argument("--prepare", action="store_true", help="only prepare the datasets' data")
    mode.add_argument("--collect", action="store_true", help="only gather finished cells: CSV, table, plots")
    p.add_argument("overrides", nargs="*", metavar="field=value", help="study config overrides")

    def run(args: argparse.Namespace) -> int:
        from . import study

        cfg = study.load_study(args.config, args.overrides)
        if args.count:
            print(len(study.cells(cfg)))
        elif args.list:
            for cell in study.cells(cfg):
                status = "complete" if cell.result_path(cfg).is_file() else "pending"
                print(f"{cell.index}\t{cell.name}\t{status}")
        elif args.prepare:
            study.check_cells(cfg)
            study.prepare(cfg)
        elif args.collect:
            study.collect(cfg)
        elif args.cell is not None:
            study.run_cell(cfg, args.cell)
        else:
            failed = study.run_local(cfg, args.config, args.overrides)
            if failed:
                print(f"rsfm study: {len(failed)} cell(s) failed: {failed}", file=sys.stderr)
                return 1
        return 0

    p.set_defaults(func=run)


# Verb groups in the order `rsfm --help` lists them.
COMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [add_models, add_pretrain, add_synth,
                                                                add_shards, add_datasets, add_potsdam, add_dota, add_finetune,
                                                                add_eval, add_convert, add_report,
                                                                add_study, add_plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsfm", description="Pretrain and fine-tune billion-scale remote-sensing foundation models.")
    # The deepspeed launcher passes --local_rank before the verb; LOCAL_RANK carries it too.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as e:
        print(f"rsfm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
