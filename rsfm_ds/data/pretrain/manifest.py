"""The shard manifest (``manifest.json``): schema, atomic save, load with checks, verification.

A manifest describes one split of one dataset written as WebDataset tar shards: every shard with its
sample count, byte size and sha256, the class list, totals, the source files that were skipped (and
why), and the options the shards were written with. The loader plans exact epochs from the sample
counts; :func:`verify_shards` checks shards against sizes and checksums. Format: docs/shards.md.

Format versions: 1 (MillionAID shards: ``.jpg`` samples) and 2, which adds the optional fields of
own-imagery shards (``rsfm shards images``: ``.npy`` samples): ``samples`` (what a sample holds:
member kind, bands, band names, data type, nodata), ``band_stats`` (per-band statistics over the
valid pixels), ``normalization`` (the per-band mean / std the loader applies, raw units),
``num_windows_low_valid`` and a per-shard ``stats``. Version 2 is a superset of version 1, so both
are read; a version-1 manifest describes ``.jpg`` samples normalised with ImageNet's statistics.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse
from urllib.request import url2pathname

from ...errors import DataError
from ..raster import BandNormalization

FORMAT = "rsfm-ds/webdataset-shards"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
VERIFY_LEVELS = ("none", "size", "sha256")


class ManifestError(DataError):
    """A manifest file is missing a field, has the wrong format version or is not JSON."""


class ShardIntegrityError(DataError):
    """Shards on disk do not match their manifest (missing, wrong size or wrong sha256)."""


@dataclass(frozen=True)
class SkippedFile:
    """A source file that is not in any shard."""

    path: str
    """Path relative to the dataset root, '/'-separated."""
    reason: str
    """Why, in words (see docs/shards.md for the list)."""
    shard: Optional[str] = None
    """The shard it was planned for when it failed while writing; None when the scan rejected it."""


@dataclass(frozen=True)
class ShardRecord:
    """One finished shard."""

    name: str
    """File name, relative to the manifest's folder."""
    samples: int
    """Samples it holds."""
    bytes: int
    """File size."""
    sha256: str
    """Hex sha256 of the file."""
    plan_sha256: str
    """Fingerprint of what was planned into it (source paths, sizes, mtimes, options): a re-run
    keeps the shard only if the plan is unchanged and the file still matches ``sha256``."""
    stats: Optional[Dict[str, Any]] = None
    """Own-imagery shards: per-band moments of the valid pixels of its samples and the count of
    windows left out for too few valid pixels (:mod:`.band_stats`); None for MillionAID shards."""


@dataclass(frozen=True)
class ClassRecord:
    """One leaf class."""

    index: int
    """The label stored in each sample's ``.cls``."""
    path: Tuple[str, ...]
    """Folder names from the top level down to the leaf (2 or 3 levels for MillionAID)."""

    @property
    def name(self) -> str:
        return self.path[-1]


@dataclass
class Manifest:
    """Everything ``manifest.json`` holds (see docs/shards.md for the JSON layout)."""

    dataset: str
    split: str
    shards: List[ShardRecord]
    classes: List[ClassRecord]
    skipped: List[SkippedFile] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)
    root: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    samples: Optional[Dict[str, Any]] = None
    """What a sample holds (own imagery): ``{"member": "npy", "bands", "band_names", "dtype",
    "nodata"}``; None means MillionAID's ``.jpg`` RGB samples."""
    band_stats: Optional[Dict[str, List[Optional[float]]]] = None
    """Per-band ``count``, ``mean``, ``std``, ``min``, ``max`` over the valid pixels of every sample."""
    normalization_stats: Optional[Dict[str, Any]] = None
    """``{"mean": [...], "std": [...], "source": "measured" | "imagenet"}`` in raw units: what the
    loader (and a backbone converted from a run on these shards) normalises with."""

    @property
    def is_raster(self) -> bool:
        """True for ``.npy`` samples of ``rsfm shards images``; False for MillionAID ``.jpg`` samples."""
        return self.samples is not None

    @property
    def bands(self) -> int:
        """Bands of every sample (3 for MillionAID)."""
        return int(self.samples["bands"]) if self.samples is not None else 3

    @property
    def band_names(self) -> Tuple[str, ...]:
        """Band names of the samples, in stored order (red, green, blue for MillionAID)."""
        if self.samples is None:
            return ("red", "green", "blue")
        return tuple(str(n) for n in self.samples["band_names"])

    @property
    def dtype(self) -> str:
        """numpy name of the stored pixel type (uint8 for MillionAID)."""
        return str(self.samples["dtype"]) if self.samples is not None else "uint8"

    @property
    def num_windows_low_valid(self) -> int:
        """Windows left out because they had fewer valid pixels than ``--min-valid`` asked."""
        return sum(int((s.stats or {}).get("low_valid", 0)) for s in self.shards)

    def normalization(self) -> Optional[BandNormalization]:
        """The per-band normalisation of these samples in raw units; None for a MillionAID manifest
        (its 8-bit RGB JPEGs take :data:`~rsfm_ds.data.raster.IMAGENET_RAW`)."""
        if self.normalization_stats is None:
            return None
        return BandNormalization(tuple(float(v) for v in self.normalization_stats["mean"]),
                                 tuple(float(v) for v in self.normalization_stats["std"]))

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def counts(self) -> List[int]:
        """Samples per shard, in manifest order."""
        return [s.samples for s in self.shards]

    def to_json(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "dataset": self.dataset,
            "split": self.split,
            "root": self.root,
            "options": self.options,
            "num_shards": len(self.shards),
            "num_samples": self.num_samples,
            "num_bytes": self.num_bytes,
            "num_skipped": len(self.skipped),
            "classes": [{"index": c.index, "name": c.name, "path": list(c.path)} for c in self.classes],
            "shards": [{k: v for k, v in dataclasses.asdict(s).items() if k != "stats" or v is not None}
                       for s in self.shards],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            **({"samples": self.samples, "band_stats": self.band_stats,
                "normalization": self.normalization_stats,
                "num_windows_low_valid": self.num_windows_low_valid} if self.samples is not None else {}),
        }

    @classmethod
    def from_json(cls, tree: Dict[str, Any], where: str = "manifest") -> "Manifest":
        """Parse ``tree``; errors name ``where`` and the field."""
        def need(node: Dict[str, Any], key: str, ctx: str) -> Any:
            if not isinstance(node, dict) or key not in node:
                raise ManifestError(f"{where}: {ctx}{key}: required field is missing")
            return node[key]

        if need(tree, "format", "") != FORMAT:
            raise ManifestError(f"{where}: format: expected {FORMAT!r}, got {tree['format']!r}")
        version = need(tree, "format_version", "")
        if version not in READ_VERSIONS:
            raise ManifestError(f"{where}: format_version: this rsfm-ds reads versions "
                                f"{', '.join(map(str, READ_VERSIONS))}, the file is version {version}; "
                                f"rewrite the shards")
        try:
            shards = []
            for i, s in enumerate(need(tree, "shards", "")):
                ctx = f"shards[{i}]."
                shards.append(ShardRecord(
                    name=str(need(s, "name", ctx)), samples=int(need(s, "samples", ctx)),
                    bytes=int(need(s, "bytes", ctx)), sha256=str(need(s, "sha256", ctx)),
                    plan_sha256=str(s.get("plan_sha256", "")), stats=s.get("stats")))
            classes = [ClassRecord(index=int(need(c, "index", f"classes[{i}].")),
                                   path=tuple(need(c, "path", f"classes[{i}].")))
                       for i, c in enumerate(need(tree, "classes", ""))]
            skipped = [SkippedFile(path=str(s["path"]), reason=str(s["reason"]), shard=s.get("shard"))
                       for s in tree.get("skipped", [])]
            samples = tree.get("samples")
            norm = tree.get("normalization")
            if samples is not None:
                for key in ("member", "bands", "band_names", "dtype"):
                    need(samples, key, "samples.")
                if len(samples["band_names"]) != int(samples["bands"]):
                    raise ManifestError(f"{where}: samples.band_names: {len(samples['band_names'])} names "
                                        f"for {samples['bands']} bands")
                for key in ("mean", "std"):
                    if len(need(norm, key, "normalization.")) != int(samples["bands"]):
                        raise ManifestError(f"{where}: normalization.{key}: {len(norm[key])} values for "
                                            f"{samples['bands']} bands")
        except (TypeError, ValueError, KeyError) as e:
            if isinstance(e, ManifestError):
                raise
            raise ManifestError(f"{where}: malformed entry: {e!r}") from None
        return cls(dataset=str(need(tree, "dataset", "")), split=str(need(tree, "split", "")),
                   shards=shards, classes=classes, skipped=skipped,
                   options=dict(tree.get("options", {})), root=str(tree.get("root", "")),
                   format_version=int(version), samples=samples, band_stats=tree.get("band_stats"),
                   normalization_stats=norm)


def load_manifest(path: Union[str, Path]) -> Manifest:
    """Read and check ``path``.

    Raises:
        DataError: no such file.
        ManifestError: not JSON, wrong format or version, or a missing field (message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        tree = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from None
    return Manifest.from_json(tree, where=str(path))


def save_manifest(manifest: Manifest, path: Union[str, Path]) -> None:
    """Write ``path`` atomically (temp file + rename), so a reader never sees half a manifest."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    # One JSON object per line for list entries: readable, diffable, and still plain JSON.
    lines = []
    for key, value in manifest.to_json().items():
        if isinstance(value, list) and value:
            items = ",\n  ".join(json.dumps(v) for v in value)
            lines.append(f"{json.dumps(key)}: [\n  {items}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    tmp.write_text("{\n " + ",\n ".join(lines) + "\n}\n")
    os.replace(tmp, path)


def sha256_stream(chunks: Iterable[bytes]) -> Tuple[str, int]:
    """Hex sha256 and length of a byte stream."""
    h, n = hashlib.sha256(), 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _read_chunks(stream: Any, size: int = 1 << 20) -> Iterable[bytes]:
    while chunk := stream.read(size):
        yield chunk


def sha256_file(path: Union[str, Path]) -> str:
    with open(path, "rb") as f:
        return sha256_stream(_read_chunks(f))[0]


def local_path(url: str) -> Optional[Path]:
    """The file behind a plain path or ``file:`` URL; None for anything else (``pipe:``, http)."""
    parsed = urlparse(url)
    if parsed.scheme == "":
        return Path(url)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return None


def shard_urls(manifest_path: Union[str, Path], manifest: Manifest) -> List[str]:
    """Paths of the manifest's shards: its ``name`` fields resolved against its folder."""
    folder = Path(manifest_path).parent
    return [str(folder / s.name) for s in manifest.shards]


@dataclass(frozen=True)
class ShardProblem:
    """A shard that failed verification."""

    name: str
    url: str
    reason: str


def verify_shards(manifest: Manifest, urls: Sequence[str], level: str = "sha256",
                  indices: Optional[Iterable[int]] = None) -> List[ShardProblem]:
    """Check shards against the manifest; returns the problems (empty when all is well).

    Args:
        manifest: the expected sizes and checksums.
        urls: where each manifest shard is read from (same order as ``manifest.shards``).
        level: "size" checks existence and byte size of local files (no reading; remote URLs are
            not checked); "sha256" also reads every shard (remote ones through WebDataset's
            ``gopen``) and compares checksums; "none" checks nothing.
        indices: only these shards (default: all).
    """
    if level not in VERIFY_LEVELS:
        raise ValueError(f"verify level must be one of {VERIFY_LEVELS}, got {level!r}")
    if len(urls) != len(manifest.shards):
        raise ValueError(f"{len(urls)} shard URLs for {len(manifest.shards)} manifest shards")
    problems: List[ShardProblem] = []
    if level == "none":
        return problems
    for i in (range(len(urls)) if indices is None else indices):
        record, url = manifest.shards[i], urls[i]
        path = local_path(url)
        if path is not None:
            if not path.is_file():
                problems.append(ShardProblem(record.name, url, "missing"))
                continue
            size = path.stat().st_size
            if size != record.bytes:
                problems.append(ShardProblem(record.name, url,
                                             f"size {size} bytes, manifest says {record.bytes}"))
                continue
            if level == "sha256" and sha256_file(path) != record.sha256:
                problems.append(ShardProblem(record.name, url, "sha256 differs from the manifest"))
        elif level == "sha256":
            import webdataset as wds  # only remote URLs need it; keeps `rsfm shards verify` light

            try:
                stream = wds.gopen(url, "rb")
                try:
                    digest, size = sha256_stream(_read_chunks(stream))
                finally:
                    stream.close()
            except Exception as e:  # noqa: BLE001 - any failure to read is a verification failure
                problems.append(ShardProblem(record.name, url, f"cannot read: {e!r}"))
                continue
            if size != record.bytes or digest != record.sha256:
                problems.append(ShardProblem(record.name, url, "sha256 differs from the manifest"))
    return problems


def verify_manifest(manifest_path: Union[str, Path], level: str = "sha256") -> List[ShardProblem]:
    """:func:`verify_shards` for the shards next to ``manifest_path``."""
    manifest = load_manifest(manifest_path)
    return verify_shards(manifest, shard_urls(manifest_path, manifest), level)
