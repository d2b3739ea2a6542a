"""``rsfm dota split|merge``: DOTA images into overlapping patches, patch detections back."""
from __future__ import annotations

import argparse

from .common import add_classes_argument, own_classes, verb

DOTA_VERSIONS = ["dota2", "dota1.5", "dota1"]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dota", help="DOTA: split images into patches, merge patch detections")
    verbs = p.add_subparsers(dest="dota_verb", required=True, metavar="VERB")
    _split(verbs)
    _merge(verbs)


def _split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="cut DOTA images (and labels) into overlapping patches as the DOTA "
                                     "devkit (<id>__<rate>__<x>___<y>) or mmrotate (<id>__<side>__<x>___<y>)")
    p.add_argument("--src", required=True, help="DOTA folder with images/ and, if labelled, labelTxt/")
    p.add_argument("--out", required=True, help="output folder (images/ and labelTxt/ go inside)")
    p.add_argument("--rule", default="devkit", choices=["devkit", "mmrotate"],
                   help="whose labels to reproduce: devkit (ImgSplit_multi_process.py: cut objects clipped, "
                        "resized patches, pad 0) or mmrotate (img_split.py: cut objects whole, windows of "
                        "size/rate px, pad 104 116 124) (default devkit)")
    p.add_argument("--size", type=int, default=1024, help="patch side in px (default 1024)")
    p.add_argument("--gap", type=int, default=200, help="overlap of neighbouring patches in px (default 200)")
    p.add_argument("--rates", type=float, nargs="+", default=[1.0],
                   help="resize factors, e.g. 0.5 1.0 1.5 for multi-scale (default 1.0)")
    p.add_argument("--iof-thr", type=float, default=0.7,
                   help="IoF = area inside the patch / area; devkit: a cut object keeps its difficulty when "
                        "IoF > this, else it is written as 2; mmrotate: an object is written when IoF >= this "
                        "(default 0.7)")
    p.add_argument("--pad-value", type=int, nargs=3, default=None, metavar=("B", "G", "R"),
                   help="colour of the padding past the border of 8-bit images (default: the rule's, devkit "
                        "0 0 0, mmrotate 104 116 124); raster scenes are padded with their nodata value or 0")
    p.add_argument("--img-rate-thr", type=float, default=0.6,
                   help="mmrotate: drop windows with no more than this share inside the image (default 0.6)")
    p.add_argument("--ext", default=".png", choices=[".png", ".jpg", ".bmp", ".tif"],
                   help="patch format of 8-bit images (default .png); raster scenes (GeoTIFF that is "
                        "georeferenced, multi-band or not uint8) give GeoTIFF patches with their bands, "
                        "data type and georeference")
    p.add_argument("--dataset", default="dota2", choices=DOTA_VERSIONS,
                   help="class list the labels are checked against (default dota2)")
    add_classes_argument(p, "the names the labels are checked against")
    p.add_argument("--workers", type=int, default=1, help="images split in parallel (default 1)")

    def run(args: argparse.Namespace) -> int:
        from ..data.det.dota import dota_classes
        from ..data.det.split import SplitConfig, split_dota

        pad = None if args.pad_value is None else tuple(args.pad_value)
        config = SplitConfig(rule=args.rule, size=args.size, gap=args.gap, rates=tuple(args.rates),
                             iof_thr=args.iof_thr, pad_value=pad, img_rate_thr=args.img_rate_thr, ext=args.ext)
        classes = own_classes(args) or dota_classes(args.dataset)
        report = split_dota(args.src, args.out, config, classes, workers=args.workers)
        print(f"{report.images} images -> {report.patches} patches under {args.out}; {report.objects} objects "
              f"-> {report.patch_objects} patch objects, {report.dropped} in no patch "
              f"({report.self_intersecting} self-intersecting)")
        return 0

    verb(p, run)


def _merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="patch detections (Task1_<class>.txt) -> image detections: map back, "
                                     "per-class rotated NMS")
    p.add_argument("--dets", required=True, help="folder of patch-level Task1_<class>.txt files")
    p.add_argument("--out", required=True, help="folder for the merged Task1_<class>.txt files")
    p.add_argument("--iou", type=float, default=0.1, help="NMS IoU threshold (default 0.1, the devkit's)")
    p.add_argument("--names", default="auto", choices=["auto", "rate", "size"],
                   help="the patch names' middle field: rate (devkit: divide by it), size (mmrotate window "
                        "side: offsets only) or auto (a decimal or an integer below 16 is a rate) (default auto)")
    p.add_argument("--dataset", default="dota2", choices=DOTA_VERSIONS,
                   help="write one file per class of this dataset, empty where nothing was found (default dota2)")
    add_classes_argument(p, "one file per name")

    def run(args: argparse.Namespace) -> int:
        from ..data.det.dota import dota_classes
        from ..data.det.merge import merge_dota

        report = merge_dota(args.dets, args.out, iou_thr=args.iou, classes=own_classes(args) or dota_classes(args.dataset),
                            naming=args.names)
        print(f"{report.files} files: {report.patch_detections} patch detections -> "
              f"{report.image_detections} image detections in {args.out}")
        return 0

    verb(p, run)
