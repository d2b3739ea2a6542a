"""The mistakes a user can fix, as one small hierarchy.

The CLI (:mod:`rsfm_ds.cli`) turns every :class:`UserError` into one line on stderr naming the
field, file or line, and exit status 2, with no traceback; a :class:`RunError` (the run could not
go on: a rank lost, a non-finite loss) into one line and exit status 1. Anything else is a
programming error and keeps its traceback. Each user error also derives from :class:`ValueError`,
so library callers that catch ``ValueError`` keep working.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union


class UserError(Exception):
    """Something the user gave (a config value, an input file, a checkpoint) is wrong or missing."""


class ConfigError(UserError, ValueError):
    """A config value is missing, unknown, of the wrong type or inconsistent."""


class DataError(UserError, ValueError):
    """An input dataset, annotation, image or shard is missing, unreadable or malformed."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file is missing, incomplete, damaged or does not fit the model."""


class RunError(RuntimeError):
    """A run cannot go on for a reason outside the code: a rank was lost or stopped, the loss
    became non-finite. The CLI prints it as one line, with exit status 1."""


def few(items: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` of ``items`` for a message, and how many there are when that is not all:
    ``"a, b, c ... (12 in all)"``; ``"none"`` for no items."""
    items = [str(i) for i in items]
    if not items:
        return "none"
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def check_output_is_not_input(output: Union[str, Path], inputs: Iterable[Union[str, Path]]) -> None:
    """Refuse, before anything is written, an ``output`` (file or folder) that is one of the
    ``inputs`` (the files a command reads, or the folder it reads them from): no command writes
    over what it reads.

    Raises:
        ConfigError: naming both paths.
    """
    out = Path(output).resolve()
    for item in inputs:
        if out == Path(item).resolve():
            raise ConfigError(f"{output}: the output would overwrite the input {item}; choose another output")


@contextmanager
def writing(path: Union[str, Path]) -> Iterator[None]:
    """Name ``path`` in an ``OSError`` raised while writing it: a write to a full disk fails with
    ``ENOSPC`` and no file name, which would leave the user guessing which file system is full."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        code = e.errno or errno.EIO
        raise OSError(code, e.strerror or os.strerror(code), str(path)) from e


__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "RunError", "few",
           "check_output_is_not_input", "writing"]
