"""What a verification finds: problems, counts, and the release's own counts to compare with."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Problem:
    """One finding: ``path[:line]: message``; ``level`` is ``"error"`` or ``"warning"``."""

    path: str
    message: str
    line: Optional[int] = None
    level: str = "error"

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{'warning: ' if self.level == 'warning' else ''}{where}: {self.message}"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class OfficialCount:
    """A file count of the official release and where it comes from."""

    key: str
    """What is counted, as in :attr:`VerifyReport.counts` (e.g. ``train/images``)."""
    value: int
    confirmed: bool
    """True: from a confirmed source (a mismatch is an error); False: reported by a paper or by
    users of the release and not confirmed here (a mismatch is a warning)."""
    source: str


@dataclass
class VerifyReport:
    """What a verifier found: counts and problems."""

    dataset: str
    root: Path
    counts: Dict[str, int] = field(default_factory=dict)
    """Files found, by key (``train/images``, ``annotations``, ...)."""
    problems: List[Problem] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    """Information that is not a problem (e.g. how a folder will be used)."""

    def error(self, path: PathLike, message: str, line: Optional[int] = None) -> None:
        self.problems.append(Problem(str(path), message, line, "error"))

    def warning(self, path: PathLike, message: str, line: Optional[int] = None) -> None:
        self.problems.append(Problem(str(path), message, line, "warning"))

    def add_exception(self, path: PathLike, exc: BaseException) -> None:
        """An error from a reader's exception, split into file, line and message when the message
        starts with ``<path>:<line>:`` (the readers' convention)."""
        text, path = str(exc), str(path)
        if text.startswith(path + ":"):
            rest = text[len(path) + 1:].lstrip()
            match = re.match(r"(\d+): (.*)", rest, re.S)
            if match:
                self.error(path, match.group(2), int(match.group(1)))
            else:
                self.error(path, rest)
        else:
            self.error(path, text)

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> List[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        status = "OK" if self.ok else f"FAILED, {plural(len(self.errors), 'error')}"
        if self.warnings:
            status += f", {plural(len(self.warnings), 'warning')}"
        return f"{self.dataset} at {self.root}: {counts or 'nothing found'}; {status}"


# Sources in short; datasets/<name>/README.md says what each count rests on.
_DOTA_SOURCE = "the DOTA v2.0 paper's split table"
_DIOR_SOURCE = "the DIOR paper's split"
_LOVEDA_SOURCE = "the LoveDA paper's split table"
_MAID_SOURCE = "users' reports of the Million-AID release"
_REFERENCE = "the release (docs/datasets.md)"

OFFICIAL_COUNTS: Dict[str, Tuple[OfficialCount, ...]] = {
    "millionaid": (
        OfficialCount("train/images", 10_000, False, _MAID_SOURCE),
        OfficialCount("train/leaf_classes", 51, True, _REFERENCE),
        OfficialCount("train/second_level_classes", 28, True, _REFERENCE),
        OfficialCount("train/top_level_classes", 8, True, _REFERENCE),
        OfficialCount("test/images", 990_848, False, _MAID_SOURCE),
        OfficialCount("images", 1_000_848, False, "the Million-AID paper's total"),
    ),
    "dota_v2": (
        OfficialCount("train/images", 1_830, False, _DOTA_SOURCE),
        OfficialCount("train/labels", 1_830, False, _DOTA_SOURCE),
        OfficialCount("val/images", 593, False, _DOTA_SOURCE),
        OfficialCount("val/labels", 593, False, _DOTA_SOURCE),
        OfficialCount("test/images", 2_792, False, _DOTA_SOURCE),
    ),
    "dior_r": (
        OfficialCount("annotations", 23_463, True, _REFERENCE),
        OfficialCount("train/ids", 5_862, False, _DIOR_SOURCE),
        OfficialCount("val/ids", 5_863, False, _DIOR_SOURCE),
        OfficialCount("trainval/ids", 11_725, False, _DIOR_SOURCE),
        OfficialCount("test/ids", 11_738, False, _DIOR_SOURCE),
        OfficialCount("JPEGImages-trainval", 11_725, False, _DIOR_SOURCE),
        OfficialCount("JPEGImages-test", 11_738, False, _DIOR_SOURCE),
    ),
    "potsdam": (
        *(OfficialCount(f"{folder}/tiles", 38, True, _REFERENCE)
          for folder in ("2_Ortho_RGB", "3_Ortho_IRRG", "5_Labels_all", "5_Labels_all_noBoundary")),
    ),
    "loveda": (
        OfficialCount("Train/Urban", 1_156, False, _LOVEDA_SOURCE),
        OfficialCount("Train/Rural", 1_366, False, _LOVEDA_SOURCE),
        OfficialCount("Val/Urban", 677, False, _LOVEDA_SOURCE),
        OfficialCount("Val/Rural", 992, False, _LOVEDA_SOURCE),
        OfficialCount("Test/Urban", 820, False, _LOVEDA_SOURCE),
        OfficialCount("Test/Rural", 976, False, _LOVEDA_SOURCE),
        OfficialCount("images", 5_987, True, "the LoveDA paper's total"),
    ),
}
"""The release's counts per dataset; a key is checked only when the verifier counted it."""

OFFICIAL_SIZES: Dict[str, Tuple[int, int]] = {"dior_r": (800, 800), "potsdam": (6000, 6000),
                                              "loveda": (1024, 1024)}
"""Image size (width, height) of every image of the release (docs/datasets.md)."""


def check_counts(report: VerifyReport) -> None:
    differ = False
    for expected in OFFICIAL_COUNTS[report.dataset]:
        found = report.counts.get(expected.key)
        if found is None or found == expected.value:
            continue
        differ = True
        message = (f"{expected.key}: found {found:,}, the release has {expected.value:,} according to "
                   f"{expected.source}{'' if expected.confirmed else ' (unconfirmed)'}")
        (report.error if expected.confirmed else report.warning)(report.root, message)
    if differ:
        report.notes.append("counts differ from the release's: for a partial or synthetic copy "
                            "pass --expect-counts none")


__all__ = ["Problem", "OfficialCount", "VerifyReport", "OFFICIAL_COUNTS", "OFFICIAL_SIZES", "check_counts",
           "plural", "PathLike"]
