"""Read planned samples out of tar shards, tolerating bad data: every needed sample comes back
either as its bytes or as a :class:`SkipEvent` saying why it cannot.

Remote shards (``pipe:`` and the other schemes WebDataset's ``gopen`` knows) are streamed with
WebDataset's tar iterator. Local files (plain paths, ``file:``) are opened with random access
instead: the members of unneeded samples are skipped with a seek rather than read through, which
WebDataset's streaming iterator cannot do (it also cost ~2x the CPU per sample here). Both feed
WebDataset's key grouping. A shard is not opened when none of its samples are needed, and reading
stops as soon as its last needed sample has been seen.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import webdataset as wds
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from .epoch_plan import Segment
from .manifest import local_path
from .shards import parse_sample_key, sample_key

SKIP_REASONS: Dict[str, str] = {
    "corrupt_jpeg": "the .jpg member does not decode",
    "corrupt_npy": "the .npy member does not load, or its bands / data type differ from the manifest's",
    "truncated_shard": "the shard ended or failed to read before this sample was complete",
    "missing_sample": "the shard was read to its end without holding this sample",
    "unreadable_shard": "the shard could not be opened",
    "bad_record": "the sample has no .jpg or .npy member",
}


@dataclass(frozen=True)
class SkipEvent:
    """A planned sample that was not delivered."""

    reason: str
    """A key of :data:`SKIP_REASONS`."""
    key: str
    url: str
    detail: str = ""


@dataclass(frozen=True)
class RawSample:
    """One sample as stored: its image member's bytes and its json record."""

    key: str
    url: str
    data: bytes
    """The bytes of the ``.jpg`` (MillionAID) or ``.npy`` (own imagery) member."""
    record: Optional[dict]
    """The ``.json`` member parsed; None when absent or not JSON."""
    member: str = "jpg"
    """Which member ``data`` is: ``jpg`` or ``npy``."""


Item = Union[RawSample, SkipEvent]


def _read_segment(url: str, shard: int, wanted: Set[int]) -> Iterator[Tuple[int, Item]]:
    """Yield ``(index within shard, item)`` once for each index in ``wanted``."""
    remaining = set(wanted)
    last = max(wanted)
    errors: List[str] = []

    def handler(exn: Exception) -> bool:
        errors.append(repr(exn)[:300])
        return True  # carry on: what is missing is reported per sample below

    def select(fname: str) -> bool:
        try:
            s, i = parse_sample_key(base_plus_ext(fname)[0] or "")
        except ValueError:
            return False
        # Members of unwanted samples are stepped over without being extracted. The first member
        # after the last wanted sample is let through: its new key makes the grouping hand over
        # the last wanted sample at once, so reading stops there instead of at the end of the tar.
        return s == shard and (i in remaining or i > last)

    try:
        stream = wds.gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - whatever the scheme raises, the shard is unreadable
        for i in sorted(remaining):
            yield i, SkipEvent("unreadable_shard", sample_key(shard, i), url, repr(e)[:300])
        return
    if local_path(url) is not None:
        files = _seek_tar_files(stream, url, select, handler)
    else:
        files = tar_file_expander([{"url": url, "stream": stream}], handler=handler, select_files=select)
    samples = group_by_keys(files, handler=handler)
    final = None
    try:
        for sample in samples:
            i = parse_sample_key(sample["__key__"])[1]
            if i not in remaining:
                continue
            remaining.discard(i)
            if not remaining:  # close the shard before handing over its last wanted sample
                final = i, _item(sample, url, errors)
                break
            yield i, _item(sample, url, errors)
    finally:
        samples.close()
        try:
            stream.close()
        except Exception as e:  # noqa: BLE001 - a pipe: command's exit status lands here
            errors.append(repr(e)[:300])
    if final is not None:
        yield final
    reason = "truncated_shard" if errors else "missing_sample"
    for i in sorted(remaining):
        yield i, SkipEvent(reason, sample_key(shard, i), url, errors[0] if errors else "")


def _seek_tar_files(stream, url: str, select: Callable[[str], bool],
                    handler: Callable[[Exception], bool]) -> Iterator[Dict[str, object]]:
    """Members of a seekable tar as WebDataset's tar iterator yields them, skipping the data of
    unselected members with a seek; errors (a truncated file) go to ``handler``."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r:")
        while (member := tar.next()) is not None:
            if member.isreg() and select(member.name):
                yield {"fname": member.name, "data": tar.extractfile(member).read(), "__url__": url}
            tar.members = []  # the index of members read so far is not needed; keep memory flat
    except (tarfile.TarError, OSError) as e:
        handler(e)
    yield {}  # end-of-shard marker: hands over the last sample


def _item(sample: Dict[str, object], url: str, errors: List[str]) -> Item:
    key = str(sample["__key__"])
    member = next((m for m in ("jpg", "npy") if isinstance(sample.get(m), bytes)), None)
    if member is None:
        # A tar cut inside a sample leaves its first members only.
        return SkipEvent("truncated_shard" if errors else "bad_record", key, url,
                         errors[0] if errors else "no .jpg or .npy member")
    try:
        record = json.loads(sample["json"]) if "json" in sample else None
    except (ValueError, TypeError):
        record = None
    return RawSample(key, url, sample[member], record if isinstance(record, dict) else None, member)


class SampleReader:
    """Hands out samples of one worker's stream by position, reading each shard once, in order.

    Args:
        urls: URL of every manifest shard (indexed by ``Segment.shard``).
        segments: the worker's stream.
        needed: every position :meth:`take` will be asked for; others are stepped over.
    """

    def __init__(self, urls: Sequence[str], segments: Sequence[Segment], needed: Iterable[int]):
        self._store: Dict[int, Item] = {}
        self._resolved = self._resolve(urls, segments, np.unique(np.fromiter(needed, np.int64)))

    @staticmethod
    def _resolve(urls: Sequence[str], segments: Sequence[Segment],
                 needed: np.ndarray) -> Iterator[Tuple[int, Item]]:
        offset = 0
        for seg in segments:
            lo, hi = np.searchsorted(needed, [offset, offset + len(seg)])
            if lo < hi:
                local = {int(p) - offset + seg.lo: int(p) for p in needed[lo:hi]}
                for i, item in _read_segment(urls[seg.shard], seg.shard, set(local)):
                    yield local[i], item
            offset += len(seg)

    def take(self, positions: Iterable[int]) -> List[Item]:
        """The items at ``positions`` (each must be a needed position, asked for once)."""
        out = []
        for p in positions:
            p = int(p)
            while p not in self._store:
                try:
                    pos, item = next(self._resolved)
                except StopIteration:
                    raise RuntimeError(f"position {p} was not declared as needed") from None
                self._store[pos] = item
            out.append(self._store.pop(p))
        return out
