"""``rsfm``: one command, one verb group per module, each verb a call into the library.

Every module here adds its verb group with ``add(subparsers)``; each verb's function parses,
calls a library function a user can import as well, and prints. Errors are handled once, in
:func:`main`: a :class:`~rsfm_ds.errors.UserError` (a bad config value, input file or
checkpoint) and an operating-system error about a named file (missing, not allowed, disk full)
become one line on stderr, ``rsfm <verb>: error: <message>``, and exit status 2, without a
traceback. Anything else is a programming error and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..errors import UserError
from . import (convert, datasets, dota, evaluate, finetune, models, plan, potsdam, pretrain, report, shards, study,
               synth)

# Verb groups in the order `rsfm --help` lists them.
GROUPS = (models, pretrain, synth, shards, datasets, potsdam, dota, finetune, evaluate,
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
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        return _fail(args, str(e))
    except OSError as e:
        if e.filename is None:  # not about a file the user named: a programming error
            raise
        return _fail(args, f"{e.filename}: {e.strerror or e}")


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"{getattr(args, 'prog', 'rsfm')}: error: {message}", file=sys.stderr)
    return 2


__all__ = ["build_parser", "main"]
