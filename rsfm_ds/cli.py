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


# Verb groups in the order `rsfm --help` lists them.
COMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [add_models]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsfm", description="Pretrain and fine-tune billion-scale remote-sensing foundation models.")
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
