"""``rsfm shards <verb>``: WebDataset shards with a manifest for pretraining; their verification."""
from __future__ import annotations

import argparse

from .common import band_list, verb


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="write WebDataset shards with a manifest, or verify them")
    verbs = p.add_subparsers(dest="shards_verb", required=True, metavar="VERB")
    _millionaid(verbs)
    _images(verbs)
    _verify(verbs)


def _millionaid(sub: argparse._SubParsersAction) -> None:
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
        from ..data.pretrain.shards import write_millionaid_shards

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

    verb(p, run)


def _images(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("images", help="any tree of JPEG / PNG / TIFF / GeoTIFF files -> WebDataset shards of "
                                      "raw windows + manifest.json with per-band statistics (docs/shards.md)")
    p.add_argument("--root", required=True, help="folder searched recursively for raster files")
    p.add_argument("--out", required=True, help="folder for images-%%06d.tar and manifest.json")
    p.add_argument("--tile", type=int, default=None,
                   help="cut scenes into TILE x TILE windows (default: one sample per file)")
    p.add_argument("--stride", type=int, default=None,
                   help="step between windows (default TILE); the last window is clamped to the border")
    p.add_argument("--nodata", type=float, default=None,
                   help="nodata value of every file (default: each file's declared one, else none)")
    p.add_argument("--min-valid", type=float, default=0.0,
                   help="fraction of valid (not nodata) pixels a window needs; others are left out and "
                        "counted (default 0)")
    p.add_argument("--bands", type=band_list, default=None,
                   help="1-based bands to keep, in this order, e.g. 4,3,2,8 (default: all)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most (default 1000)")
    p.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard at most, of raw pixels (default 1e9)")
    p.add_argument("--workers", type=int, default=1, help="shards written in parallel (default 1)")
    p.add_argument("--shuffle-seed", type=int, default=0, help="seed of the window order across shards (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the sorted scan order in the shards")

    def run(args: argparse.Namespace) -> int:
        from ..data.pretrain.scenes import write_image_shards

        report = write_image_shards(
            args.root, args.out, tile=args.tile, stride=args.stride, nodata=args.nodata,
            min_valid=args.min_valid, bands=args.bands, maxcount=args.maxcount, maxsize=int(args.maxsize),
            workers=args.workers, shuffle_seed=None if args.no_shuffle else args.shuffle_seed, log=print)
        m = report.manifest
        norm = m.normalization()
        print(f"{report.manifest_path}: {m.num_samples} samples in {len(m.shards)} shards "
              f"({m.num_bytes / 1e9:.2f} GB), {m.bands} bands ({', '.join(m.band_names)}) of {m.dtype}; "
              f"{len(report.written)} written, {len(report.kept)} kept, {m.num_windows_low_valid} windows "
              f"below --min-valid, {len(m.skipped)} files skipped")
        print(f"normalisation ({m.normalization_stats['source']}): mean "
              f"{[round(v, 3) for v in norm.mean]}, std {[round(v, 3) for v in norm.std]}")
        for s in m.skipped[:20]:
            print(f"  skipped {s.path}: {s.reason}")
        return 0

    verb(p, run)


def _verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check shards against their manifest (existence, size, sha256)")
    p.add_argument("manifest", help="manifest.json; its shards are looked up next to it")
    p.add_argument("--quick", action="store_true", help="sizes only, without reading the shards")

    def run(args: argparse.Namespace) -> int:
        from ..data.pretrain.manifest import verify_manifest

        problems = verify_manifest(args.manifest, "size" if args.quick else "sha256")
        for problem in problems:
            print(f"{problem.url}: {problem.reason}")
        print(f"{args.manifest}: {'FAILED, ' + str(len(problems)) + ' bad shards' if problems else 'OK'}")
        return 1 if problems else 0

    verb(p, run)
