"""Verify a real dataset copy before preparing it: layout, file counts, annotations, checksums.

``rsfm datasets verify NAME --root R`` runs one verifier per dataset (``VERIFIERS``); each checks

- the **layout** the readers and ``datasets/<name>/prepare.sh`` expect (folders, file naming,
  image <-> annotation pairing), always;
- that **every annotation parses** with the project's readers (DOTA ``labelTxt``, DIOR-R XML,
  Potsdam colour labels, LoveDA masks; for MillionAID the class tree and the JPEG signature of
  every file), always; parse errors name the file and, where the format has lines, the line;
- the **file counts** (and image sizes) of the official release, unless ``expect_counts="none"``
  (synthetic or partial copies). Counts taken from a confirmed source (the release itself, or a
  published total) are errors when they differ; counts that are only reported by papers or users
  and not confirmed here are warnings (``OfficialCount.confirmed``).

No dataset publishes checksums of its files, so none can be shipped. Instead
:func:`write_manifest` records the sha256 and size of every file of *your* copy, and
:func:`check_manifest` checks another copy (another node, a restored backup) against it; the file
format is in docs/datasets.md.

Each problem is a :class:`Problem`: ``path[:line]: message``, level error or warning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from ...errors import ConfigError
from .checksums import check_manifest, load_checksum_manifest, write_manifest
from .detection import verify_dior_r, verify_dota_v2
from .pretraining import verify_millionaid
from .report import OFFICIAL_COUNTS, OFFICIAL_SIZES, OfficialCount, PathLike, Problem, VerifyReport
from .segmentation import verify_loveda, verify_potsdam

EXPECT_COUNTS = ("official", "none")


VERIFIERS: Dict[str, Callable[..., VerifyReport]] = {
    "millionaid": verify_millionaid, "dota_v2": verify_dota_v2, "dior_r": verify_dior_r,
    "potsdam": verify_potsdam, "loveda": verify_loveda}
"""Dataset name (the folder under datasets/) -> verifier."""


def verify_dataset(name: str, root: PathLike, expect_counts: str = "official",
                   splits: Optional[Sequence[str]] = None, manifest: Optional[PathLike] = None,
                   quick: bool = False) -> VerifyReport:
    """Run the verifier of ``name`` on ``root``, then, with ``manifest``, :func:`check_manifest`
    (sizes only when ``quick``).

    Raises:
        ConfigError: unknown dataset, ``expect_counts`` or split name.
    """
    if name not in VERIFIERS:
        raise ConfigError(f"dataset: expected one of {', '.join(VERIFIERS)}, got {name!r}")
    if expect_counts not in EXPECT_COUNTS:
        raise ConfigError(f"expect_counts: expected one of {', '.join(EXPECT_COUNTS)}, got {expect_counts!r}")
    root = Path(root)
    if not root.is_dir():
        report = VerifyReport(name, root)
        report.error(root, "missing folder (the dataset root)")
        return report
    report = VERIFIERS[name](root, expect_counts, splits)
    if manifest is not None:
        report.problems.extend(check_manifest(root, manifest, quick=quick))
    return report


__all__ = ["VERIFIERS", "EXPECT_COUNTS", "verify_dataset", "verify_millionaid", "verify_dota_v2", "verify_dior_r",
           "verify_potsdam", "verify_loveda", "write_manifest", "check_manifest", "load_checksum_manifest",
           "Problem", "VerifyReport", "OfficialCount", "OFFICIAL_COUNTS", "OFFICIAL_SIZES"]
