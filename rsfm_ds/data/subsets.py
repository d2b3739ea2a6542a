"""Data-efficiency subsets: the same seeded, nested training subsets for every task.

The names are ordered by ``sha256(f"{seed}:{name}")`` and the first ``ceil(fraction * N)`` (at
least one) are kept. The subset is a deterministic function of (names, fraction, seed), independent
of listing order, and nested: for one seed the 1% subset is inside the 5% subset, which is inside
the 10% subset, so a data-efficiency curve compares models on growing supersets.
"""
from __future__ import annotations

import hashlib
import math
from typing import List, Sequence

from ..errors import ConfigError, DataError


def select_fraction(names: Sequence[str], fraction: float, seed: int = 0) -> List[int]:
    """Indices (ascending) into ``names`` of the seeded ``fraction`` subset (module doc: nested).

    Raises:
        ConfigError: ``fraction`` not in ``(0, 1]``; DataError: no names, or duplicate names.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction: must be in (0, 1], got {fraction}")
    if not names:
        raise DataError("select_fraction: empty file list")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"fraction subsets are keyed by file name, which must be unique; repeated: {dupes[:5]}")
    keep = max(1, math.ceil(fraction * len(names) - 1e-9))  # tolerance: 0.05 * 100 is 5.000000000000001
    order = sorted(range(len(names)), key=lambda i: hashlib.sha256(f"{seed}:{names[i]}".encode()).digest())
    return sorted(order[:keep])
