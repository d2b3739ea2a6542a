"""``rsfm report``: a markdown report with plots from pretraining and fine-tuning runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

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
    verb(p, run)


def _named(items: List[str], flag: str, value: str) -> Dict[str, Path]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected NAME={value}")
        name, path = item.split("=", 1)
        out[name] = Path(path)
    return out


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    finetunes = _named(args.finetune, "--finetune", "RUN_DIR")
    independent = _named(args.eval, "--eval", "JSON")
    unknown = sorted(set(independent) - set(finetunes))
    if unknown:
        raise ConfigError(f"--eval {unknown[0]}=...: no --finetune of that name")
    path = write_report(Path(args.out), Path(args.pretrain) if args.pretrain else None, finetunes, independent)
    print(f"report: {path}")
    return 0
