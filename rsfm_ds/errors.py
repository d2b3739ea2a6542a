"""The mistakes a user can fix, as one small hierarchy.

The CLI (:mod:`rsfm_ds.cli`) turns every :class:`UserError` into one line on stderr naming the
field, file or line, and exit status 2, with no traceback. Anything else is a programming error and
keeps its traceback. Each class also derives from :class:`ValueError`, so library callers that
catch ``ValueError`` keep working.
"""
from __future__ import annotations

from typing import Sequence


class UserError(Exception):
    """Something the user gave (a config value, an input file, a checkpoint) is wrong or missing."""


class ConfigError(UserError, ValueError):
    """A config value is missing, unknown, of the wrong type or inconsistent."""


class DataError(UserError, ValueError):
    """An input dataset, annotation, image or shard is missing, unreadable or malformed."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file is missing, incomplete, damaged or does not fit the model."""


def few(items: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` of ``items`` for a message, and how many there are when that is not all:
    ``"a, b, c ... (12 in all)"``; ``"none"`` for no items."""
    items = [str(i) for i in items]
    if not items:
        return "none"
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "few"]
