"""``rsfm report``: a markdown report with plots from pretraining and fine-tuning runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError
from .common import verb


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="markdown report with plots from pretraining and fine-tuning runs")
    p.add_argument("--out", required=True, help="report file (plots are written beside it)")
    p.add_argument("--pretrain", default=None, help="pretraining run_dir")
    p.add_argument("--finetune", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="a fine-tuning run_dir under a name (repeatable)")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=JSON",
                   help="the --json of an `rsfm eval` of NAME's saved predictions, shown beside the run's "
                        "own metrics (repeatable)")
    p.add_argument("--overlay-images", type=int, default=3, metavar="N",
                   help="held-out images drawn per fine-tuning run, ground truth beside prediction, from the "
                        "run's config.yaml and last evaluation (0: none; default 3)")
    p.add_argument("--overlay-score-thr", type=float, default=0.3, metavar="S",
                   help="draw detections scoring above S (default 0.3, mmrotate's show_result)")
    p.add_argument("--overlay-rgb", default=None, metavar="R,G,B",
                   help="0-based bands of the image files shown as red, green, blue (default: the bands the "
                        "file describes as red, green, blue, else the first three)")
    verb(p, run)


def _bands(text: Optional[str]) -> Optional[Tuple[int, int, int]]:
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--overlay-rgb {text!r}: expected three 0-based band indices such as 2,1,0")
    return tuple(int(p) for p in parts)


def _named(items: List[str], flag: str, value: str) -> Dict[str, Path]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected NAME={value}")
        name, path = item.split("=", 1)
        out[name] = Path(path)
    return out


def run(args: argparse.Namespace) -> int:
    from ..report import OverlayOptions, write_report

    finetunes = _named(args.finetune, "--finetune", "RUN_DIR")
    independent = _named(args.eval, "--eval", "JSON")
    unknown = sorted(set(independent) - set(finetunes))
    if unknown:
        raise ConfigError(f"--eval {unknown[0]}=...: no --finetune of that name")
    rgb = _bands(args.overlay_rgb)
    try:
        overlays = OverlayOptions(images=args.overlay_images, score_thr=args.overlay_score_thr, rgb=rgb)
    except ConfigError as e:  # name the flag, not the field
        raise ConfigError(f"--overlay-{e}".replace("score_thr", "score-thr")) from None
    path = write_report(Path(args.out), Path(args.pretrain) if args.pretrain else None, finetunes, independent,
                        overlays)
    print(f"report: {path}")
    return 0
