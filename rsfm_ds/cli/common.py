"""What several verb groups share: registering a verb, run-config arguments."""
from __future__ import annotations

import argparse
from typing import Callable, List

Run = Callable[[argparse.Namespace], int]


def verb(parser: argparse.ArgumentParser, run: Run) -> None:
    """Make ``run`` the function of ``parser``'s verb; errors are reported under its name."""
    parser.set_defaults(func=run, prog=parser.prog)


def add_run_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config``, ``--resume`` and ``section.field=value`` overrides of a training verb."""
    parser.add_argument("--config", required=True, help=f"run config YAML ({example})")
    parser.add_argument("--resume", default=None,
                        help="'auto' (newest complete checkpoint in run_dir), a checkpoint directory, or 'none'")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")


def run_config_overrides(args: argparse.Namespace) -> List[str]:
    """The overrides of a training verb, ``--resume`` included as ``checkpoint.resume``."""
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={'null' if args.resume == 'none' else args.resume}")
    return overrides
