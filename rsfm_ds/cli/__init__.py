"""``rsfm``: one command, one verb group per module, each verb a call into the library.

Every module here adds its verb group with ``add(subparsers)``; each verb's function parses,
calls a library function a user can import as well, and prints. Errors are handled once, in
:func:`main`: a :class:`~rsfm_ds.errors.UserError` (a bad config value, input file or
checkpoint) and an operating-system error about a named file (missing, not allowed, disk full)
become one line on stderr, ``rsfm <verb>: error: <message>``, and exit status 2, without a
traceback; a :class:`~rsfm_ds.errors.RunError` (a rank lost, a non-finite loss) one line and
exit status 1. Anything else is a programming error and keeps its traceback. Options and
``section.field=value`` overrides may come in any order.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..errors import RunError, UserError
from . import (convert, datasets, dota, evaluate, finetune, models, plan, potsdam, pretrain, report, shards, study,
               submit, synth)
from . import predict

# Verb groups in the order `rsfm --help` lists them.
GROUPS = (models, pretrain, synth, shards, datasets, potsdam, dota, finetune, evaluate, predict, submit,
          convert, report, study, plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsfm", description="Pretrain and fine-tune billion-scale remote-sensing foundation models.")
    # The deepspeed launcher passes --local_rank before the verb; LOCAL_RANK carries it too.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for group in GROUPS:
        group.add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``rsfm`` with ``argv`` (default: the command line); returns the exit status."""
    args = parse(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        return _fail(args, _one_line(e), 2)
    except RunError as e:
        return _fail(args, _one_line(e), 1)
    except OSError as e:
        if e.filename is None:  # not about a file the user named: a programming error
            raise
        return _fail(args, f"{e.filename}: {e.strerror or e}", 2)


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse ``argv``; ``section.field=value`` overrides may also come after options (argparse
    alone takes the positional overrides only where they first appear)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def _one_line(error: BaseException) -> str:
    """The error's own message. An error raised in a DataLoader worker reaches us re-raised with
    the worker's traceback in its text; its message is the last line, after the class name."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def _fail(args: argparse.Namespace, message: str, status: int) -> int:
    print(f"{getattr(args, 'prog', 'rsfm')}: error: {message}", file=sys.stderr)
    return status


__all__ = ["build_parser", "parse", "main"]
