"""``rsfm potsdam prepare``: ISPRS Potsdam release tiles -> crops in mmseg's layout."""
from __future__ import annotations

import argparse

from .common import verb


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("potsdam", help="ISPRS Potsdam: prepare crops from the release tiles")
    verbs = p.add_subparsers(dest="potsdam_verb", required=True, metavar="VERB")
    _prepare(verbs)


def _prepare(sub: argparse._SubParsersAction) -> None:
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
        from ..data.seg.potsdam import prepare_potsdam

        report = prepare_potsdam(args.root, args.out, protocol=args.protocol, crop=args.crop, stride=args.stride,
                                 eroded=args.eroded, modality=args.modality,
                                 unknown_to_ignore=args.unknown_to_ignore)
        for split in ("train", "val"):
            print(f"{split}: {len(report.tiles[split])} tiles -> {report.crops[split]} crops")
        for name, n in report.unknown_pixels.items():
            print(f"  {name}: {n} pixels of unknown colours mapped to {report.ignore_index}")
        print(f"wrote {args.out}/prepare.json ({report.protocol} classes: {', '.join(report.classes)})")
        return 0

    verb(p, run)
