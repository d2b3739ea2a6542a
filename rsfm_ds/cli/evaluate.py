"""``rsfm eval det|seg``: the benchmarks' metrics over prediction files; ``rsfm eval dior|potsdam``: a
fine-tuned checkpoint run on a benchmark's public test set and scored the same way."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_classes_argument, own_classes, verb
from .submit import add_inference_arguments, inference_options


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate predictions against ground truth")
    group = p.add_subparsers(dest="eval_task", required=True, metavar="TASK")
    _det(group)
    _seg(group)
    _dior(group)
    _potsdam(group)


def _write_json(path: str, payload: dict) -> None:
    from ..evaluation.scene_outputs import write_json_atomic

    write_json_atomic(path, payload)


def _det(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("det", help="rotated-box mAP of Task1_<class>.txt detections (DOTA devkit "
                                     "semantics by default)")
    p.add_argument("--dets", required=True, help="folder of Task1_<class>.txt files (image score x1 y1 ... y4)")
    p.add_argument("--labels", required=True,
                   help="DOTA labelTxt folder, or a DIOR-R root / Annotations folder with XMLs (--dataset dior)")
    p.add_argument("--dataset", default="dota2", choices=["dota2", "dota1.5", "dota1", "dior"],
                   help="class list and label format (default dota2)")
    add_classes_argument(p, "the Task1_<name>.txt files read and the label names")
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
        from ..evaluation.rotated_map import MapProtocol, evaluate_task1, format_map_table

        protocol = MapProtocol(iou_thr=args.iou, inclusive=args.mmrotate, ignore_difficult=not args.mmrotate,
                               metric=args.metric)
        image_ids = None
        if args.images is not None:
            text = Path(args.images).read_text(encoding="utf-8-sig")
            image_ids = [line.strip() for line in text.splitlines() if line.strip()]
        result = evaluate_task1(args.dets, args.labels, args.dataset, protocol, image_ids, own_classes(args))
        print(format_map_table(result))
        if args.json is not None:
            _write_json(args.json, result.to_json())
        return 0

    verb(p, run)


def _seg(group: argparse._SubParsersAction) -> None:
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
        from ..evaluation.seg_metrics import evaluate_dirs, format_result

        names = None if args.class_names is None else [n.strip() for n in args.class_names.split(",")]
        result = evaluate_dirs(args.pred, args.label, args.num_classes, args.ignore_index,
                               args.reduce_zero_label, names)
        print(format_result(result))
        if args.json is not None:
            _write_json(args.json, result.to_json())
        return 0

    verb(p, run)


def _dior(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("dior", help="run a fine-tuned checkpoint on the DIOR-R test set and score it (DOTA "
                                      "devkit protocol); writes Task1 files and metrics.json")
    add_inference_arguments(p, "configs/det/dior_vit_l12x4.yaml")
    p.add_argument("--out", required=True, help="folder for task1/Task1_<class>.txt and metrics.json")
    p.add_argument("--root", default=None, help="the DIOR-R root (default: the config's data.root)")
    p.add_argument("--split", default=None, help="image set to score (default: the config's data.val_split, test)")

    def run(args: argparse.Namespace) -> int:
        from ..engine.benchmarks import evaluate_dior
        from ..evaluation.rotated_map import format_map_table

        done = evaluate_dior(args.config, args.checkpoint, args.out, args.overrides, args.tag,
                             inference_options(args), args.root, args.split)
        print(format_map_table(done.result))
        print(f"wrote {done.out_dir / 'task1'} and {done.out_dir / 'metrics.json'}")
        return 0

    verb(p, run)


def _potsdam(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("potsdam", help="run a fine-tuned checkpoint on the Potsdam test tiles (eroded labels) "
                                         "and score OA / mIoU / mF1; writes index PNGs and metrics.json")
    add_inference_arguments(p, "configs/seg/potsdam_vit_l12x4.yaml")
    p.add_argument("--out", required=True, help="folder for pred/<name>.png and metrics.json")
    p.add_argument("--root", default=None,
                   help="`rsfm potsdam prepare --eroded` output (default: the config's data.root); its val split "
                        "holds the 14 test tiles")
    p.add_argument("--full-labels", action="store_true",
                   help="accept a root prepared from the full-reference labels (not the benchmark's protocol)")

    def run(args: argparse.Namespace) -> int:
        from ..engine.benchmarks import evaluate_potsdam
        from ..evaluation.seg_metrics import format_result

        done = evaluate_potsdam(args.config, args.checkpoint, args.out, args.overrides, args.tag,
                                inference_options(args), args.root, args.full_labels)
        print(format_result(done.result))
        print(f"wrote {done.out_dir / 'pred'} and {done.out_dir / 'metrics.json'}")
        return 0

    verb(p, run)
