"""``rsfm datasets <verb>``: verify a real dataset copy, record and check its checksums."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import verb

MAX_PROBLEMS = 50


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="real datasets: verify a copy (layout, annotations, counts), "
                                        "record and check checksums")
    verbs = p.add_subparsers(dest="datasets_verb", required=True, metavar="VERB")
    _verify(verbs)
    _manifest(verbs)


def _verify(sub: argparse._SubParsersAction) -> None:
    from ..data.verify import EXPECT_COUNTS, VERIFIERS

    p = sub.add_parser("verify", help="check a dataset copy: layout, annotations, file counts, checksums",
                       description="Check a dataset copy before preparing it (datasets/<NAME>/README.md). "
                                   "Exit status 1 when an error is found.")
    p.add_argument("name", metavar="NAME", choices=list(VERIFIERS), help=f"dataset: {', '.join(VERIFIERS)}")
    p.add_argument("--root", required=True, help="the dataset root, laid out as datasets/<NAME>/README.md says")
    p.add_argument("--expect-counts", choices=EXPECT_COUNTS, default="official",
                   help="official: compare file counts and image sizes with the release's (default); "
                        "none: skip them (partial or synthetic copies); layout and annotations are always checked")
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to check (default: the dataset's required splits and the optional ones present)")
    p.add_argument("--manifest", default=None,
                   help="also check every file against this checksum manifest (rsfm datasets manifest)")
    p.add_argument("--quick", action="store_true", help="with --manifest: compare sizes only, no sha256")
    p.add_argument("--max-problems", type=int, default=MAX_PROBLEMS,
                   help=f"problems printed at most (default {MAX_PROBLEMS}; all are counted)")
    p.add_argument("--json", default=None, help="also write the counts and every problem to this JSON file")

    def run(args: argparse.Namespace) -> int:
        from ..data.verify import verify_dataset

        report = verify_dataset(args.name, args.root, args.expect_counts, args.splits, args.manifest, args.quick)
        for problem in report.problems[:args.max_problems]:
            print(problem)
        if len(report.problems) > args.max_problems:
            print(f"... and {len(report.problems) - args.max_problems} more problems")
        for note in report.notes:
            print(f"note: {note}")
        print(report.summary())
        if args.json is not None:
            Path(args.json).write_text(json.dumps(
                {"dataset": report.dataset, "root": str(report.root), "ok": report.ok, "counts": report.counts,
                 "problems": [dict(path=p.path, line=p.line, level=p.level, message=p.message)
                              for p in report.problems], "notes": report.notes}, indent=2) + "\n")
        return 0 if report.ok else 1

    verb(p, run)


def _manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="record the sha256 and size of every file of a dataset copy",
                       description="Write a checksum manifest of every file under --root; check another copy "
                                   "with `rsfm datasets verify NAME --root COPY --manifest M`.")
    p.add_argument("--root", required=True, help="the dataset root")
    p.add_argument("--out", required=True, help="manifest file to write (JSON)")
    p.add_argument("--dataset", default=None, help="dataset name recorded in the manifest (provenance only)")
    p.add_argument("--workers", type=int, default=16, help="files hashed in parallel (default 16)")

    def run(args: argparse.Namespace) -> int:
        from ..data.verify import write_manifest

        manifest = write_manifest(args.root, args.out, dataset=args.dataset, workers=args.workers)
        print(f"{args.out}: {manifest['num_files']:,} files, {int(manifest['num_bytes']) / 1e9:.2f} GB "
              f"under {manifest['root']}")
        return 0

    verb(p, run)
