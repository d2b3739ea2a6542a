"""What several verb groups share: registering a verb, run-config arguments."""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional, Tuple

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


def add_classes_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--classes a,b,c``: an own class list of DOTA-format labels, replacing ``--dataset``'s."""
    parser.add_argument("--classes", default=None, metavar="NAME,NAME,...",
                        help=f"comma-separated own class list of DOTA-format labels ({what}); "
                             "replaces --dataset's list")


def own_classes(args: argparse.Namespace) -> Optional[Tuple[str, ...]]:
    """The ``--classes`` list, or None when not given.

    Raises:
        ConfigError: an empty or repeated name.
    """
    from ..errors import ConfigError

    if args.classes is None:
        return None
    names = tuple(n.strip() for n in args.classes.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise ConfigError(f"--classes: expected distinct, non-empty comma-separated names, got {args.classes!r}")
    return names


def band_list(text: str) -> Tuple[int, ...]:
    """argparse ``type`` of ``--bands``: ``"4,3,2,8"`` -> ``(4, 3, 2, 8)`` (1-based band numbers)."""
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        bands = ()
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated 1-based band numbers, e.g. 4,3,2,8; "
                                         f"got {text!r}")
    return bands
