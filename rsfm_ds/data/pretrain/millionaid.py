"""MillionAID on disk: scan ``root/<split>/<L1>/<L2>/[<L3>]/*.jpg`` into a class tree and file list.

Layout (docs/shards.md): the folder holding an image is its class (the *leaf*); leaves sit two or
three levels below the split folder, giving 51 leaves under 28 second-level and 8 top-level nodes in
the real release. The scan is deterministic: files are ordered by their '/'-separated relative path
(byte order), classes by their folder path, whatever the file system returns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

from ...errors import DataError
from .manifest import ClassRecord, SkippedFile

IMAGE_EXTENSIONS = (".jpg", ".jpeg")
LEAF_DEPTHS = (2, 3)


@dataclass(frozen=True)
class SourceImage:
    """One image file of the scan."""

    relpath: str
    """Path relative to the dataset root, '/'-separated (``train/<L1>/<L2>/[<L3>]/<file>``)."""
    class_index: int
    """Index into :attr:`MillionAIDScan.classes`."""
    size: int
    """File size in bytes."""
    mtime_ns: int
    """Modification time: part of a shard's plan fingerprint, so edited files are re-sharded."""


@dataclass
class MillionAIDScan:
    """Result of :func:`scan_millionaid`."""

    root: Path
    split: str
    classes: List[ClassRecord]
    """Leaf classes sorted by folder path; ``index`` is the position in this list."""
    images: List[SourceImage]
    """Images sorted by relative path."""
    skipped: List[SkippedFile]
    """Files under the split folder that are not images of the class tree."""

    def level_counts(self) -> Tuple[int, int, int]:
        """Number of distinct (top-level, second-level, leaf) nodes."""
        l1 = {c.path[:1] for c in self.classes}
        l2 = {c.path[:2] for c in self.classes}
        return len(l1), len(l2), len(self.classes)


def scan_millionaid(root: Union[str, Path], split: str = "train") -> MillionAIDScan:
    """List the images of ``root/<split>`` with their leaf classes.

    Files that are not ``.jpg``/``.jpeg`` or that sit at a depth other than 2 or 3 folders below the
    split folder are returned in ``skipped`` with the reason. Contents are not opened here (the
    shard writer validates them).

    Raises:
        DataError: ``root/<split>`` is not a folder.
    """
    root = Path(root)
    top = root / split
    if not top.is_dir():
        raise DataError(f"{top}: no such folder (expected MillionAID's {split}/ folder)")
    found: List[Tuple[str, Tuple[str, ...], int, int]] = []
    skipped: List[SkippedFile] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames.sort()
        folders = tuple(Path(dirpath).relative_to(top).parts)
        for name in sorted(filenames):
            relpath = "/".join((split, *folders, name))
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append(SkippedFile(relpath, "not a .jpg/.jpeg file"))
            elif len(folders) not in LEAF_DEPTHS:
                skipped.append(SkippedFile(relpath, f"outside the class tree: {len(folders)} folders "
                                                    f"below {split}/, expected 2 or 3"))
            else:
                st = os.stat(os.path.join(dirpath, name))
                found.append((relpath, folders, st.st_size, st.st_mtime_ns))
    found.sort()
    skipped.sort(key=lambda s: s.path)
    paths = sorted({folders for _, folders, _, _ in found})
    index = {p: i for i, p in enumerate(paths)}
    classes = [ClassRecord(index=i, path=p) for i, p in enumerate(paths)]
    images = [SourceImage(relpath, index[folders], size, mtime)
              for relpath, folders, size, mtime in found]
    return MillionAIDScan(root=root, split=split, classes=classes, images=images, skipped=skipped)
