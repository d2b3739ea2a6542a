"""``rsfm models``: the backbone preset registry."""
from __future__ import annotations

import argparse
import json

from .common import verb


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list backbone presets: sizes, parameters, GFLOPs")
    p.add_argument("--img-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--mask-ratio", type=float, default=0.75,
                   help="MAE masking ratio for the encoder-FLOPs column (default 0.75)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    verb(p, run)


def run(args: argparse.Namespace) -> int:
    from ..models.presets import format_preset_table, preset_table

    rows = preset_table(img_size=args.img_size, mask_ratio=args.mask_ratio)
    print(json.dumps(rows, indent=2) if args.json else format_preset_table(rows))
    return 0
