"""``rsfm synth <dataset>``: small synthetic datasets in the real releases' on-disk formats."""
from __future__ import annotations

import argparse

from .common import verb


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write small synthetic datasets in the real on-disk formats")
    datasets = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for add_dataset in (_millionaid, _potsdam, _loveda, _dota, _dior):
        add_dataset(datasets)


def _millionaid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("millionaid", help="remote-sensing-like JPEGs in MillionAID's layout "
                                          "train/<L1>/<L2>/[<L3>]/*.jpg (51 leaf classes)")
    p.add_argument("--out", required=True, help="dataset root to create (train/ goes inside)")
    p.add_argument("--images", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--min-size", type=int, default=256, help="smallest image side, px (default 256)")
    p.add_argument("--max-size", type=int, default=1024, help="largest image side, px (default 1024)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")

    def run(args: argparse.Namespace) -> int:
        from ..data.synth.millionaid import synth_millionaid

        report = synth_millionaid(args.out, images=args.images, seed=args.seed, min_size=args.min_size,
                                  max_size=args.max_size, quality=args.quality)
        print(f"wrote {report.images} images ({report.bytes / 1e6:.1f} MB) in {report.classes} classes "
              f"under {report.root / 'train'}")
        return 0

    verb(p, run)


def _potsdam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("potsdam", help="Potsdam-like tiles in the ISPRS release layout (2_Ortho_RGB, "
                                       "3_Ortho_IRRG, 5_Labels_all, 5_Labels_all_noBoundary)")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--tiles", type=int, default=4, help="number of tiles, real train/test ids (default 4, max 38)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=6000,
                   help="tile side in px at 5 cm (default 6000 as the release; 1024 for quick CPU runs)")

    def run(args: argparse.Namespace) -> int:
        from ..data.synth.segmentation import synth_potsdam

        report = synth_potsdam(args.out, tiles=args.tiles, seed=args.seed, size=args.size)
        print(f"wrote {len(report.items)} tiles ({report.bytes / 1e6:.1f} MB) under {report.root}: "
              f"{' '.join(report.items)}")
        return 0

    verb(p, run)


def _loveda(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loveda", help="LoveDA-like scenes in the release layout "
                                      "{Train,Val,Test}/{Urban,Rural}/{images_png,masks_png}")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--images", type=int, default=4, help="images per split, alternately Urban/Rural (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=1024, help="image side in px (default 1024 as the release)")

    def run(args: argparse.Namespace) -> int:
        from ..data.synth.segmentation import synth_loveda

        report = synth_loveda(args.out, images=args.images, seed=args.seed, size=args.size)
        print(f"wrote {len(report.items)} images ({report.bytes / 1e6:.1f} MB) under {report.root}")
        return 0

    verb(p, run)


def _dota(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dota", help="DOTA-format images/*.png + labelTxt/*.txt with learnable oriented "
                                    "objects (plane, ship, storage-tank, small-vehicle, tennis-court)")
    p.add_argument("--out", required=True, help="dataset folder to create (images/ and labelTxt/ go inside)")
    p.add_argument("--images", type=int, default=50, help="number of images (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=1024, help="image side in px, >= 128 (default 1024)")
    p.add_argument("--first-id", type=int, default=0,
                   help="ids are P<first-id + i>: give a second split distinct ids (default 0)")

    def run(args: argparse.Namespace) -> int:
        from ..data.synth.detection import synth_dota

        report = synth_dota(args.out, images=args.images, seed=args.seed, size=args.size,
                            first_id=args.first_id)
        print(f"wrote {report.images} images, {report.objects} objects ({report.difficult} difficult) "
              f"under {report.root}: {report.per_class}")
        return 0

    verb(p, run)


def _dior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dior", help="DIOR-R-format 800 px JPEGs, oriented-box XMLs and image sets with "
                                    "learnable objects (airplane, ship, storagetank, vehicle, tenniscourt)")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--images", type=int, default=50, help="number of images over all splits (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=800, help="image side in px (default 800 as the release)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of images in test (default 0.2)")

    def run(args: argparse.Namespace) -> int:
        from ..data.synth.detection import synth_dior

        report = synth_dior(args.out, images=args.images, seed=args.seed, size=args.size,
                            val_fraction=args.val_fraction, test_fraction=args.test_fraction)
        print(f"wrote {report.images} images, {report.objects} objects ({report.difficult} difficult) "
              f"under {report.root}: {report.per_class}")
        return 0

    verb(p, run)
