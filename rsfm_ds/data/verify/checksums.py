"""Checksum manifests of a dataset copy: record every file's sha256 and size, check another copy.

No dataset publishes checksums of its files, so none can be shipped. Instead :func:`write_manifest`
records the sha256 and size of every file of *your* copy, and :func:`check_manifest` checks another
copy (another node, a restored backup) against it; the file format is in docs/datasets.md.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ...errors import DataError
from .files import IO_THREADS
from .report import PathLike, Problem

MANIFEST_FORMAT = "rsfm-ds/dataset-checksums"
MANIFEST_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path, exclude: Optional[Path]) -> List[str]:
    """Relative '/'-separated paths of every file under ``root`` (links followed), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            if exclude is not None and path.resolve() == exclude:
                continue
            out.append(path.relative_to(root).as_posix())
    return sorted(out)


def write_manifest(root: PathLike, out: PathLike, dataset: Optional[str] = None,
                   workers: int = IO_THREADS) -> Dict[str, object]:
    """Write the sha256 and size of every file under ``root`` to ``out`` (JSON, one file a line).

    Returns the manifest as written. The output file itself is left out when it lies under ``root``.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    paths = _walk(root, out.resolve())

    def entry(rel: str) -> Dict[str, object]:
        path = root / rel
        return {"path": rel, "size": path.stat().st_size, "sha256": _sha256(path)}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        files = list(pool.map(entry, paths))
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "dataset": dataset,
                "root": str(root.resolve()), "num_files": len(files),
                "num_bytes": sum(int(f["size"]) for f in files), "files": files}
    head = {k: v for k, v in manifest.items() if k != "files"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + ['  "files": [']
    lines += [f"    {json.dumps(f)}{',' if i < len(files) - 1 else ''}" for i, f in enumerate(files)]
    lines += ["  ]", "}"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return manifest


def load_checksum_manifest(path: PathLike) -> Tuple[Dict[str, object], Dict[str, int]]:
    """The manifest and, per file entry, its line in the file (for messages).

    Raises:
        DataError: not JSON, another format, or a version this code does not read (named).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: not an {MANIFEST_FORMAT} manifest (written by rsfm datasets manifest)")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise DataError(f"{path}: format_version {manifest.get('format_version')!r}, this version of "
                        f"rsfm-ds reads {MANIFEST_VERSION}; write it again with rsfm datasets manifest")
    lines = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip().rstrip(",")
        if stripped.startswith('{"path"'):
            lines[json.loads(stripped)["path"]] = number
    return manifest, lines


def check_manifest(root: PathLike, manifest: PathLike, quick: bool = False,
                   workers: int = IO_THREADS) -> List[Problem]:
    """Check the files under ``root`` against a manifest of :func:`write_manifest`.

    Errors: a listed file is missing, or its size or (unless ``quick``) sha256 differs; each
    names the file and the manifest line listing it. Warnings: files under ``root`` the manifest
    does not list. An unreadable manifest is one error naming it.
    """
    root, manifest = Path(root), Path(manifest)
    try:
        data, lines = load_checksum_manifest(manifest)
    except (OSError, ValueError) as e:
        return [Problem(str(manifest), str(e).removeprefix(f"{manifest}: "))]
    listed = {f["path"]: f for f in data["files"]}

    def check(rel: str) -> Optional[Problem]:
        entry, path = listed[rel], root / rel
        where = f"(listed at {manifest}:{lines.get(rel, '?')})"
        if not path.is_file():
            return Problem(str(path), f"missing {where}")
        size = path.stat().st_size
        if size != entry["size"]:
            return Problem(str(path), f"size {size:,} bytes, the manifest has {entry['size']:,} {where}")
        if not quick and _sha256(path) != entry["sha256"]:
            return Problem(str(path), f"checksum mismatch: sha256 differs from the manifest's {where}")
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = [p for p in pool.map(check, sorted(listed)) if p is not None]
    for rel in _walk(root, manifest.resolve()):
        if rel not in listed:
            problems.append(Problem(str(root / rel), f"not in the manifest {manifest}", level="warning"))
    return problems
