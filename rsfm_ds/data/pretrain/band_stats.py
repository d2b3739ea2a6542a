"""Per-band statistics of raster samples, accumulated while shards are written and merged exactly.

Each shard writer keeps, per band, the count of valid pixels, their mean, the sum of squared
deviations from the mean (``m2``), the minimum and the maximum, in float64. Shards are written in
parallel and a re-run keeps finished shards, so the statistics of a whole manifest are merged from
the per-shard records (stored in the manifest's shard entries) with Chan et al.'s pairwise update
of mean and ``m2``, which is exact up to float64 rounding whatever the grouping. The standard
deviation reported is the population one (``sqrt(m2 / count)``), as ``numpy.std`` computes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np


@dataclass
class BandMoments:
    """Running per-band moments of valid pixels (and windows left out), mergeable across shards."""

    bands: int
    count: np.ndarray = field(default=None)  # type: ignore[assignment]
    """``float64 [C]`` valid pixels seen."""
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    """``float64 [C]`` mean of the valid pixels."""
    m2: np.ndarray = field(default=None)  # type: ignore[assignment]
    """``float64 [C]`` sum of squared deviations from ``mean``."""
    min: np.ndarray = field(default=None)  # type: ignore[assignment]
    max: np.ndarray = field(default=None)  # type: ignore[assignment]
    low_valid: int = 0
    """Windows left out for too few valid pixels."""

    def __post_init__(self) -> None:
        zeros = np.zeros(self.bands, np.float64)
        for name, init in (("count", zeros), ("mean", zeros), ("m2", zeros),
                           ("min", np.full(self.bands, np.inf)), ("max", np.full(self.bands, -np.inf))):
            if getattr(self, name) is None:
                setattr(self, name, init.copy())

    def add_pixels(self, values: np.ndarray) -> None:
        """Add the valid pixels ``values [C, N]`` (any numeric dtype). Non-finite values (NaN, inf
        of a float raster) are left out of their band alone, so one NaN does not poison the band's
        statistics; band counts may then differ."""
        if values.shape[1] == 0:
            return
        v = values.astype(np.float64)
        if values.dtype.kind != "f" or np.isfinite(v).all():
            n = np.full(self.bands, float(v.shape[1]))
            mean = v.mean(axis=1)
            m2 = ((v - mean[:, None]) ** 2).sum(axis=1)
            self._merge(n, mean, m2, v.min(axis=1), v.max(axis=1))
            return
        finite = np.isfinite(v)
        n = finite.sum(axis=1).astype(np.float64)
        mean = np.where(finite, v, 0.0).sum(axis=1) / np.maximum(n, 1.0)
        m2 = np.where(finite, (v - mean[:, None]) ** 2, 0.0).sum(axis=1)
        lo = np.where(finite, v, np.inf).min(axis=1)
        hi = np.where(finite, v, -np.inf).max(axis=1)
        self._merge(n, mean, m2, lo, hi)

    def merge(self, other: "BandMoments") -> None:
        """Fold ``other`` into this (Chan et al.'s parallel update)."""
        self._merge(other.count, other.mean, other.m2, other.min, other.max)
        self.low_valid += other.low_valid

    def _merge(self, n: np.ndarray, mean: np.ndarray, m2: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        total = self.count + n
        safe = np.where(total > 0, total, 1.0)
        delta = mean - self.mean
        self.mean = self.mean + delta * n / safe
        self.m2 = self.m2 + m2 + delta ** 2 * self.count * n / safe
        self.count = total
        self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.where(self.count > 0, self.count, 1.0))

    def to_json(self) -> Dict[str, Any]:
        """Plain JSON (the per-shard ``stats`` of a manifest); bands without pixels get null min/max."""
        def finite(a: np.ndarray) -> List[Optional[float]]:
            return [float(x) if math.isfinite(x) else None for x in a]

        return {"count": [int(c) for c in self.count], "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "min": finite(self.min), "max": finite(self.max), "low_valid": self.low_valid}

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "BandMoments":
        def arr(key: str, missing: float) -> np.ndarray:
            return np.array([missing if x is None else float(x) for x in data[key]], np.float64)

        bands = len(data["count"])
        return BandMoments(bands, arr("count", 0), arr("mean", 0), arr("m2", 0), arr("min", np.inf),
                           arr("max", -np.inf), int(data.get("low_valid", 0)))

    def summary(self) -> Dict[str, List[Optional[float]]]:
        """The manifest's ``band_stats``: per-band ``count``, ``mean``, ``std``, ``min``, ``max``."""
        j = self.to_json()
        return {"count": j["count"], "mean": j["mean"], "std": self.std.tolist(), "min": j["min"], "max": j["max"]}


__all__ = ["BandMoments"]
