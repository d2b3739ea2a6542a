"""Write MillionAID as WebDataset tar shards plus ``manifest.json``, in parallel and resumably.

The planning, writing, journaling and resume machinery (:func:`plan_shards`,
:func:`write_planned_shards`, :func:`finish_shards`) is shared with own imagery
(:mod:`.scenes`, ``rsfm shards images``), which plugs in its own :class:`SampleEncoder`.

Per sample (key ``<shard:06d>-<index:06d>``; docs/shards.md):
  ``.jpg``  the source JPEG bytes, unchanged unless ``max_side`` asks for a re-encode;
  ``.cls``  the leaf class index (ASCII digits);
  ``.json`` ``{"path", "classes", "class_index", "width", "height"}`` (+ ``source_width/height``
            when re-encoded).

Order: the scan order (sorted relative paths) is permuted with ``shuffle_seed`` before packing, so
every shard is a random sample of the classes (the loader shuffles within a bounded buffer and could
never undo class-sorted shards); ``shuffle_seed=None`` keeps the scan order. Shards are packed by
``maxcount`` samples and ``maxsize`` bytes of source files.

Resume: each shard is written to a hidden temp file, fsynced and renamed, so a file with a final
name is always complete; finished shards are also journaled to ``manifest.partial.jsonl``. A re-run
keeps a shard only if its plan fingerprint (sources, sizes, mtimes, options) is unchanged and the
file's sha256 still matches; everything else is rewritten. Shards are byte-for-byte deterministic
(fixed tar metadata), so a rewritten shard gets the same checksum.

WebDataset's ``ShardWriter`` is not used: it numbers shards as it goes in one process, which gives
neither parallel writing nor a plan that a re-run can compare against. Its ``TarWriter`` is.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import cv2
import numpy as np
import webdataset as wds

from ...errors import DataError, few, writing
from ...config import check
from ..jpeg import decode_jpeg, jpeg_size
from .manifest import (MANIFEST_NAME, ClassRecord, Manifest, ManifestError, ShardRecord,
                       SkippedFile, load_manifest, save_manifest, sha256_file)
from .millionaid import SourceImage, scan_millionaid
from ..processes import process_context, worker_initializer

JOURNAL_NAME = "manifest.partial.jsonl"
TAR_OVERHEAD = 3 * 1024  # tar headers and padding of one sample's three members, for size packing


def sample_key(shard_index: int, index: int) -> str:
    """Key of sample ``index`` of shard ``shard_index``; :func:`parse_sample_key` inverts it."""
    return f"{shard_index:06d}-{index:06d}"


def parse_sample_key(key: str) -> Tuple[int, int]:
    """``(shard_index, index)`` of a key written by :func:`sample_key`.

    Raises:
        ValueError: not a key of that form.
    """
    shard, sep, index = key.rpartition("-")
    if not sep or not shard.isdigit() or not index.isdigit():
        raise ValueError(f"not a sample key of the form <shard>-<index>: {key!r}")
    return int(shard), int(index)


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


@dataclass(frozen=True)
class WriteOptions:
    """How samples are stored; part of every shard's plan fingerprint."""

    max_side: Optional[int] = None
    """Re-encode images whose longer side exceeds this (None: keep the source bytes)."""
    jpeg_quality: int = 95
    """JPEG quality of re-encoded images."""
    validate: bool = True
    """Decode every image once while writing and skip the ones OpenCV cannot decode."""


@dataclass(frozen=True)
class ShardPlan:
    """The sources planned into one shard (:class:`SourceImage` or any frozen dataclass with a
    ``size`` in bytes, e.g. a scene window of ``rsfm shards images``)."""

    index: int
    name: str
    images: Tuple[Any, ...]
    fingerprint: str


# Version of the sample layout inside the plan fingerprint. The manifest went to format version 2
# without changing MillionAID samples, so their shards of an earlier release are still kept.
PLAN_VERSION = 1


def plan_shards(images: Sequence[Any], prefix: str, maxcount: int, maxsize: int,
                shuffle_seed: Optional[int], options: Any) -> List[ShardPlan]:
    """Pack ``images`` into shards of at most ``maxcount`` samples and ~``maxsize`` bytes.

    Sizes are those of the sources (plus tar overhead); with ``max_side`` the written shards
    can only be smaller. A single source larger than ``maxsize`` gets a shard of its own.
    ``options`` (a dataclass) is part of every fingerprint.
    """
    check(maxcount >= 1, "maxcount", f"must be >= 1, got {maxcount}")
    check(maxsize >= 1, "maxsize", f"must be >= 1, got {maxsize}")
    order = list(images)
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(len(order))
        order = [order[i] for i in perm]
    groups: List[List[Any]] = []
    size = 0
    for image in order:
        cost = image.size + TAR_OVERHEAD
        if not groups or len(groups[-1]) >= maxcount or (groups[-1] and size + cost > maxsize):
            groups.append([])
            size = 0
        groups[-1].append(image)
        size += cost
    plans = []
    for i, group in enumerate(groups):
        h = hashlib.sha256(json.dumps({"format_version": PLAN_VERSION, "index": i,
                                       "options": dataclasses.asdict(options),
                                       "images": [dataclasses.astuple(im) for im in group]}).encode())
        plans.append(ShardPlan(i, shard_name(prefix, i), tuple(group), h.hexdigest()))
    return plans


class _HashingWriter:
    """File wrapper that hashes and counts what is written (no second read for the checksum)."""

    def __init__(self, f: BinaryIO):
        self.f, self.hash, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.bytes += len(data)
        return self.f.write(data)


class SampleEncoder(Protocol):
    """Turns the planned sources of one shard into sample members; picklable (sent to workers)."""

    def encode_shard(self, items: Sequence[Any]) -> Iterator[Tuple[Any, Optional[Dict[str, bytes]], str]]:
        """``(item, members without key, "")`` per sample, or ``(item, None, reason)`` to skip it."""

    def shard_stats(self) -> Optional[Dict[str, Any]]:
        """What the shard's record stores beyond counts (None: nothing); read after
        :meth:`encode_shard` is exhausted."""


@dataclass(frozen=True)
class MillionAIDEncoder:
    """MillionAID samples: the JPEG bytes (re-encoded only for ``max_side``), class and record."""

    root: Path
    classes: Tuple[ClassRecord, ...]
    options: WriteOptions

    def encode_shard(self, items: Sequence[SourceImage]
                     ) -> Iterator[Tuple[SourceImage, Optional[Dict[str, bytes]], str]]:
        for image in items:
            yield (image, *_encode_sample(self.root, image, self.classes, self.options))

    def shard_stats(self) -> Optional[Dict[str, Any]]:
        return None


def _encode_sample(root: Path, image: SourceImage, classes: Sequence[ClassRecord],
                   options: WriteOptions) -> Tuple[Optional[Dict[str, bytes]], str]:
    """The sample's members (without key), or None and the reason it is skipped."""
    try:
        data = (root / image.relpath).read_bytes()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    try:
        width, height = jpeg_size(data)
    except ValueError as e:
        return None, f"not a JPEG: {e}"
    record: Dict[str, Any] = {"path": image.relpath, "classes": list(classes[image.class_index].path),
                              "class_index": image.class_index}
    resize = options.max_side is not None and max(width, height) > options.max_side
    if options.validate or resize:
        pixels = decode_jpeg(data)
        if pixels is None:
            return None, "corrupt JPEG: OpenCV cannot decode it"
        height, width = pixels.shape[:2]
        if resize:
            scale = options.max_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
            data = buf.tobytes()
            record.update(source_width=width, source_height=height)
            width, height = size
    record.update(width=width, height=height)
    return {"jpg": data, "cls": str(image.class_index).encode(),
            "json": json.dumps(record).encode()}, ""


def write_shard(plan: ShardPlan, out: Path, encoder: SampleEncoder) -> Tuple[ShardRecord, List[SkippedFile]]:
    """Write one shard (temp file, fsync, rename) and return its record and skipped sources."""
    tmp = out / f".{plan.name}.tmp{os.getpid()}"
    skipped: List[SkippedFile] = []
    n = 0
    try:
        with writing(out / plan.name), open(tmp, "wb") as f:
            sink = _HashingWriter(f)
            # Fixed metadata (mtime 0, fixed owner and mode) makes shards byte-reproducible; an
            # integer mtime also keeps tarfile from adding a PAX header to every member.
            with wds.TarWriter(sink, encoder=False, mtime=0) as tar:
                for image, members, reason in encoder.encode_shard(plan.images):
                    if members is None:
                        skipped.append(SkippedFile(image.relpath, reason, shard=plan.name))
                        continue
                    tar.write({"__key__": sample_key(plan.index, n), **members})
                    n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / plan.name)
    finally:
        tmp.unlink(missing_ok=True)
    record = ShardRecord(plan.name, n, sink.bytes, sink.hash.hexdigest(), plan.fingerprint,
                         encoder.shard_stats())
    return record, skipped


@dataclass
class _Previous:
    record: ShardRecord
    skipped: List[SkippedFile]


def _previous_records(out: Path) -> Dict[str, _Previous]:
    """Shard records of an earlier run: its manifest, then its journal (later lines win)."""
    found: Dict[str, _Previous] = {}
    manifest_path = out / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            old = load_manifest(manifest_path)
        except ManifestError:
            old = None  # another version or damaged: nothing can be trusted, rewrite everything
        if old is not None:
            for r in old.shards:
                found[r.name] = _Previous(r, [s for s in old.skipped if s.shard == r.name])
    journal = out / JOURNAL_NAME
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
                record = ShardRecord(**entry["shard"])
                skipped = [SkippedFile(**s) for s in entry["skipped"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a crash
            found[record.name] = _Previous(record, skipped)
    return found


def _build(plan: ShardPlan, previous: Optional[_Previous], out: Path, encoder: SampleEncoder
           ) -> Tuple[str, ShardRecord, List[SkippedFile]]:
    """Keep the finished shard if it verifies, else write it: ``(action, record, skipped)``."""
    path = out / plan.name
    if (previous is not None and previous.record.plan_sha256 == plan.fingerprint and path.is_file()
            and path.stat().st_size == previous.record.bytes
            and sha256_file(path) == previous.record.sha256):
        return "kept", previous.record, previous.skipped
    record, skipped = write_shard(plan, out, encoder)
    return "written", record, skipped


def write_planned_shards(plans: Sequence[ShardPlan], out: Path, encoder: SampleEncoder, workers: int,
                         log: Optional[Callable[[str], None]]
                         ) -> Tuple[List[ShardRecord], List[SkippedFile], Dict[str, List[str]]]:
    """Write (or keep) every planned shard, ``workers`` at a time, journaling each finished one.

    Returns the shard records in plan order, the sources skipped while writing, and the shard
    names per action (``written``, ``kept``). The caller saves the manifest, then calls
    :func:`finish_shards`.
    """
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_records(out)
    for plan in plans[:1]:
        prefix = plan.name.rsplit("-", 1)[0]
        for stale in out.glob(f".{prefix}-*.tar.tmp*"):  # temp files of a crashed run
            stale.unlink()
    results: Dict[int, Tuple[ShardRecord, List[SkippedFile]]] = {}
    actions: Dict[str, List[str]] = {"written": [], "kept": []}
    with open(out / JOURNAL_NAME, "a") as journal:
        def finish(i: int, action: str, record: ShardRecord, skipped: List[SkippedFile]) -> None:
            results[i] = (record, skipped)
            actions[action].append(record.name)
            journal.write(json.dumps({"shard": dataclasses.asdict(record),
                                      "skipped": [dataclasses.asdict(s) for s in skipped]}) + "\n")
            journal.flush()
            if log is not None:
                log(f"[{len(results)}/{len(plans)}] {action} {record.name}: {record.samples} samples, "
                    f"{record.bytes / 1e6:.1f} MB" + (f", {len(skipped)} skipped" if skipped else ""))

        args = [(p, previous.get(p.name), out, encoder) for p in plans]
        if workers == 1:
            for i, a in enumerate(args):
                finish(i, *_build(*a))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=process_context(),
                                     initializer=worker_initializer()) as pool:
                futures = {pool.submit(_build, *a): i for i, a in enumerate(args)}
                for future in as_completed(futures):
                    finish(futures[future], *future.result())
    records = [results[i][0] for i in range(len(plans))]
    skipped = [s for i in range(len(plans)) for s in results[i][1]]
    return records, skipped, actions


def finish_shards(manifest: Manifest, out: Path, prefix: str,
                  log: Optional[Callable[[str], None]]) -> None:
    """Save ``manifest`` into ``out``, drop the journal and the shards of ``prefix`` it does not list."""
    save_manifest(manifest, out / MANIFEST_NAME)
    (out / JOURNAL_NAME).unlink()
    # Shards of an earlier run with other settings (another --maxcount: more or fewer shards)
    # that this manifest does not list would be picked up by a glob over the folder: remove them.
    listed = {r.name for r in manifest.shards}
    removed = sorted(p.name for p in out.glob(f"{prefix}-*.tar") if p.name not in listed)
    for name in removed:
        (out / name).unlink()
    if removed and log is not None:
        log(f"removed {len(removed)} shard(s) of an earlier run that this manifest does not list: {few(removed)}")


@dataclass
class WriteReport:
    """Outcome of :func:`write_millionaid_shards`."""

    manifest_path: Path
    manifest: Manifest
    written: List[str]
    kept: List[str]


def write_millionaid_shards(root: Union[str, Path], out: Union[str, Path], split: str = "train",
                            maxcount: int = 1000, maxsize: int = 10 ** 9, workers: int = 1,
                            max_side: Optional[int] = None, shuffle_seed: Optional[int] = 0,
                            validate: bool = True, jpeg_quality: int = 95,
                            log: Optional[Callable[[str], None]] = None) -> WriteReport:
    """Shard ``root/<split>`` into ``out/millionaid-<split>-%06d.tar`` + ``out/manifest.json``.

    Args:
        root: MillionAID root (holds ``train/``).
        out: output folder (created); a previous run's shards there are reused when they verify.
        split: the split folder to shard.
        maxcount: samples per shard at most.
        maxsize: bytes per shard at most (of source files plus tar overhead).
        workers: processes writing shards in parallel.
        max_side: re-encode images whose longer side exceeds this many pixels.
        shuffle_seed: seed of the sample order across shards; None keeps the scan order.
        validate: decode each image once and skip undecodable ones (recorded in the manifest).
        jpeg_quality: quality of re-encoded images.
        log: called with one line per finished shard.

    Raises:
        DataError: ``root/<split>`` is missing or holds no images.
        ConfigError: an argument out of range (the message names it).
    """
    root, out = Path(root), Path(out)
    check(max_side is None or max_side >= 16, "max_side", f"must be >= 16 pixels, got {max_side}")
    check(workers >= 1, "workers", f"must be >= 1, got {workers}")
    check(1 <= jpeg_quality <= 100, "jpeg_quality", f"must be within 1..100, got {jpeg_quality}")
    scan = scan_millionaid(root, split)
    if not scan.images:
        raise DataError(f"{root / split}: no .jpg images in the class tree")
    options = WriteOptions(max_side=max_side, jpeg_quality=jpeg_quality, validate=validate)
    prefix = f"millionaid-{split}"
    plans = plan_shards(scan.images, prefix, maxcount, maxsize, shuffle_seed, options)
    encoder = MillionAIDEncoder(root, tuple(scan.classes), options)
    records, skipped, actions = write_planned_shards(plans, out, encoder, workers, log)
    manifest = Manifest(
        dataset="millionaid", split=split, shards=records, classes=scan.classes,
        skipped=sorted(scan.skipped + skipped, key=lambda s: s.path),
        options={"maxcount": maxcount, "maxsize": maxsize, "shuffle_seed": shuffle_seed,
                 **dataclasses.asdict(options)},
        root=str(root.resolve()))
    finish_shards(manifest, out, prefix, log)
    return WriteReport(out / MANIFEST_NAME, manifest, actions["written"], actions["kept"])
