"""The MAE pretraining loader: tar shards -> normalised image batches, per rank, exact or resampled.

Guarantees (docs/shards.md has the full statement):
- every rank yields the same number of batches in an epoch, whatever the data (a collective
  training step on a rank with one batch fewer would wait forever, docs/shards.md);
- *exact* mode yields every sample of the manifest once per epoch over all ranks and workers;
  *resampled* mode yields ``batches_per_epoch`` full batches per rank from shards drawn with
  replacement;
- the batches are a function of ``(seed, epoch, rank)`` and of the run shape (world size, batch
  size, ``num_workers``, ``shuffle_buffer``, ``drop_last``); :meth:`PretrainLoader.state_dict` and
  :func:`loader_state_to_start` resume mid-epoch with neither repeats nor gaps, without decoding the
  batches that are skipped;
- a corrupt JPEG or ``.npy``, a truncated or unreadable shard is skipped, counted in :attr:`PretrainLoader.stats`
  and logged; it never stops training. A batch whose samples all failed is replaced by one
  mean-grey image (key ``PAD_KEY``), counted as padded, so batch counts stay equal.

How (epoch_plan.py): shard order and per-rank ranges are planned from the manifest counts;
DataLoader worker ``w`` makes batches ``j = w (mod K)``, which is the order the DataLoader returns them
in; decoding uses OpenCV with reduced-size JPEG decoding (transforms.py), one OpenCV and one torch
thread per worker (a worker per core already; more threads only contend). Workers hand over
augmented ``uint8`` pixels; ``PretrainBatch.images`` normalises them to float in one vectorised op
where they are used, ``PretrainBatch.normalized(device)`` on the device. With
``data.decode_device: cuda`` the workers hand over the JPEG bytes and the drawn crops instead, and
``normalized(device)`` decodes them there (device_decode.py).

Own imagery (``rsfm shards images``, ``.npy`` samples ``[C, H, W]`` of any band count and type):
the same crop and flip draws on the raw array (transforms.py), batches in the stored type (uint16
stays uint16 until the device), normalised per band with the manifest's statistics in raw units.
MillionAID samples keep the JPEG path above unchanged.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ...config import ConfigError, check
from .config import PretrainDataConfig
from .epoch_plan import EpochPlan, augment_seed, plan_exact_epoch, plan_resampled_epoch
from .manifest import (Manifest, ShardIntegrityError, load_manifest, local_path, shard_urls,
                       verify_shards)
from ..processes import process_context, worker_initializer
from .batch import PAD_KEY, LoaderStats, PretrainBatch
from .device_decode import check_device_decoding, pack
from .shard_reader import RawSample, SampleReader, SkipEvent
from ..images import IMAGENET_MEAN, IMAGENET_STD
from .transforms import CropFlip, batch_dtype, hwc_to_chw
from ..jpeg import jpeg_size

log = logging.getLogger(__name__)

STATE_VERSION = 1
_LOGGED_EVENTS = 20  # skip events logged one by one; the rest are counted


def _identity(x: Any) -> Any:
    return x


_TORCH_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16, "int16": torch.int16,
                 "float32": torch.float32, "float64": torch.float64}  # every transforms.RESIZE_DTYPES


@dataclass(frozen=True)
class SampleFormat:
    """What the samples of a manifest hold and how batches of them are normalised."""

    member: str
    """``jpg`` (MillionAID) or ``npy`` (own imagery)."""
    bands: int
    dtype: str
    """Stored numpy type (uint8 for JPEG)."""
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    unit: float
    """Units of ``mean``/``std`` (:attr:`PretrainBatch.unit`)."""


def sample_format(cfg: PretrainDataConfig, manifest: Manifest) -> SampleFormat:
    """The samples of ``manifest`` and their normalisation under ``cfg`` (the rule of
    :attr:`PretrainDataConfig.mean`).

    Raises:
        ConfigError: ``data.mean``/``data.std`` set for a manifest of ``rsfm shards images``.
    """
    if not manifest.is_raster:
        return SampleFormat("jpg", 3, "uint8", tuple(cfg.mean or IMAGENET_MEAN), tuple(cfg.std or IMAGENET_STD),
                            255.0)
    for name in ("mean", "std"):
        check(getattr(cfg, name) is None, f"data.{name}",
              f"leave it null for {cfg.shards}: shards of `rsfm shards images` are normalised with their "
              f"manifest's per-band statistics (raw units), ImageNet's RGB values would not fit them")
    norm = manifest.normalization()
    return SampleFormat("npy", manifest.bands, manifest.dtype, norm.mean, norm.std, 1.0)


class _EpochDataset(IterableDataset):
    """One rank's epoch, as the DataLoader's workers see it: each makes its planned batches."""

    def __init__(self, plan: EpochPlan, urls: Sequence[str], start_batch: int, cfg: PretrainDataConfig,
                 fmt: SampleFormat):
        super().__init__()
        self.plan, self.urls, self.start_batch, self.fmt = plan, list(urls), start_batch, fmt
        self.crop = CropFlip(cfg.img_size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), cfg.hflip)
        self.mean, self.std = fmt.mean, fmt.std
        self.on_device = cfg.decode_device != "cpu"

    def __iter__(self) -> Iterator[PretrainBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if num_workers != self.plan.num_workers:
            raise RuntimeError(f"planned for {self.plan.num_workers} workers, running with {num_workers}")
        if info is not None:
            # One worker per core already: torch's own pool (conversions, copies) would only
            # contend with the other workers (OpenCV is held to one thread by worker_initializer).
            torch.set_num_threads(1)
        # The DataLoader asks worker v for its batches m = v, v + K, ... counted from start_batch,
        # i.e. for planned batches j = start_batch + m: worker v plays planned worker j % K.
        role = (worker + self.start_batch) % num_workers
        work = self.plan.worker(role)
        todo = [(j, pos) for j, pos in work.batches if j >= self.start_batch]
        if not todo:
            return
        reader = SampleReader(self.urls, work.segments, np.concatenate([pos for _, pos in todo]))
        for j, positions in todo:
            yield self._make_batch(j, reader.take(positions))

    def _make_batch(self, index: int, items: List[Any]) -> PretrainBatch:
        if self.fmt.member == "npy":
            return self._make_array_batch(index, items)
        if self.on_device:
            return self._make_encoded_batch(index, items)
        size = self.crop.size
        pixels = _batch_tensor((len(items), 3, size, size), torch.uint8)
        batch = pixels.numpy()
        scratch = np.empty((size, size, 3), np.uint8)
        keys: List[str] = []
        skipped: List[SkipEvent] = []
        p = self.plan
        for slot, item in enumerate(items):
            if isinstance(item, SkipEvent):
                skipped.append(item)
                continue
            rng = np.random.default_rng(augment_seed(p.seed, p.epoch, p.rank, index, slot))
            if item.member != "jpg":
                skipped.append(SkipEvent("bad_record", item.key, item.url, f"a .{item.member} sample in "
                                                                            f"a MillionAID manifest"))
            elif self.crop.apply_into(item.data, rng, scratch, _declared_size(item)):
                hwc_to_chw(scratch, batch[len(keys)])
                keys.append(item.key)
            else:
                skipped.append(SkipEvent("corrupt_jpeg", item.key, item.url, "OpenCV cannot decode it"))
        if not keys:
            return self._grey_batch(index, skipped)
        return PretrainBatch(pixels[:len(keys)], keys, index, self.mean, self.std, tuple(skipped))

    def _make_encoded_batch(self, index: int, items: List[Any]) -> PretrainBatch:
        """A batch for on-device decoding: the streams whose header parses, with their crop and flip
        drawn exactly as :meth:`_make_batch` draws them (same generator, same order)."""
        p = self.plan
        keys: List[str] = []
        streams: List[bytes] = []
        crops: List[Tuple[int, ...]] = []
        skipped: List[SkipEvent] = []
        for slot, item in enumerate(items):
            if isinstance(item, SkipEvent):
                skipped.append(item)
                continue
            if item.member != "jpg":
                skipped.append(SkipEvent("bad_record", item.key, item.url, f"a .{item.member} sample in "
                                                                            f"a MillionAID manifest"))
                continue
            try:
                width, height = _declared_size(item) or jpeg_size(item.data)
            except ValueError as e:
                skipped.append(SkipEvent("corrupt_jpeg", item.key, item.url, str(e)))
                continue
            rng = np.random.default_rng(augment_seed(p.seed, p.epoch, p.rank, index, slot))
            crop, flip = self.crop.draw(rng, width, height)
            streams.append(item.data)
            crops.append((crop.top, crop.left, crop.height, crop.width, int(flip), width, height))
            keys.append(item.key)
        if not keys:
            return self._grey_batch(index, skipped)
        return PretrainBatch(None, keys, index, self.mean, self.std, tuple(skipped),
                             encoded=pack(streams, crops), size=self.crop.size)

    def _grey_batch(self, index: int, skipped: List[SkipEvent]) -> PretrainBatch:
        """The one-image placeholder of a batch whose samples all failed (module docstring)."""
        size = self.crop.size
        grey = torch.tensor([round(255 * m) for m in self.mean], dtype=torch.uint8).view(1, 3, 1, 1)
        return PretrainBatch(grey.expand(1, 3, size, size).clone(), [PAD_KEY], index, self.mean,
                             self.std, tuple(skipped), True)

    def _make_array_batch(self, index: int, items: List[Any]) -> PretrainBatch:
        """A batch of raster samples: ``[B, C, S, S]`` in :func:`~.transforms.batch_dtype`."""
        size, fmt, p = self.crop.size, self.fmt, self.plan
        dtype = batch_dtype(fmt.dtype)
        pixels = _batch_tensor((len(items), fmt.bands, size, size), _TORCH_DTYPES[dtype.name])
        batch = pixels.numpy()
        keys: List[str] = []
        skipped: List[SkipEvent] = []
        for slot, item in enumerate(items):
            if isinstance(item, SkipEvent):
                skipped.append(item)
                continue
            array, problem = _load_npy(item, fmt)
            if array is None:
                skipped.append(SkipEvent("corrupt_npy" if item.member == "npy" else "bad_record", item.key,
                                         item.url, problem))
                continue
            rng = np.random.default_rng(augment_seed(p.seed, p.epoch, p.rank, index, slot))
            self.crop.apply_array_into(array, rng, batch[len(keys)])
            keys.append(item.key)
        if not keys:
            grey = np.asarray(fmt.mean, np.float64)
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                grey = np.clip(np.round(grey), info.min, info.max)
            fill = torch.from_numpy(grey.astype(dtype)).view(1, fmt.bands, 1, 1)
            return PretrainBatch(fill.expand(1, fmt.bands, size, size).clone(), [PAD_KEY], index, self.mean,
                                 self.std, tuple(skipped), True, fmt.unit)
        return PretrainBatch(pixels[:len(keys)], keys, index, self.mean, self.std, tuple(skipped), unit=fmt.unit)


def _batch_tensor(shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor; in a DataLoader worker, allocated in shared memory.

    A worker's private tensor is copied into shared memory when it is sent to the training process;
    allocating it there saves that copy. ``share_memory_()`` on a fresh tensor still copies its
    (untouched) pages into a new segment, which cost ~16 ms of CPU per 224 px batch of 64 here,
    against ~9 ms for a segment allocated directly and filled once (the page faults of the fill).
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:  # not in every torch: the public, copying way
        return torch.empty(shape, dtype=dtype).share_memory_()
    storage = new_shared(numel * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _load_npy(item: RawSample, fmt: SampleFormat) -> Tuple[Optional[np.ndarray], str]:
    """The sample's ``[C, H, W]`` array, or None and why it cannot be used."""
    if item.member != "npy":
        return None, f"a .{item.member} sample in a manifest of .npy samples"
    try:
        array = np.load(io.BytesIO(item.data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        return None, f"not a loadable .npy: {e}"
    if array.ndim != 3 or array.shape[0] != fmt.bands or array.dtype.name != fmt.dtype or min(array.shape[1:]) < 1:
        return None, (f"array {array.dtype.name} {tuple(array.shape)}, the manifest says {fmt.bands} bands "
                      f"of {fmt.dtype}")
    return array, ""


def _declared_size(item: RawSample) -> Optional[Tuple[int, int]]:
    record = item.record or {}
    w, h = record.get("width"), record.get("height")
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
        return w, h
    return None


class PretrainLoader:
    """Iterable over one rank's batches of one epoch (:class:`PretrainBatch`).

    Each ``iter()`` runs the epoch from ``start_batch`` in a fresh DataLoader; :meth:`set_epoch`
    moves to another epoch. Build it with :func:`build_pretrain_loader`.
    """

    def __init__(self, cfg: PretrainDataConfig, manifest: Manifest, urls: Sequence[str],
                 batch_size: int, rank: int, world_size: int, epoch: int = 0, start_batch: int = 0):
        self.cfg, self.manifest, self.urls = cfg, manifest, list(urls)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.format = sample_format(cfg, manifest)
        if cfg.decode_device != "cpu":
            check(self.format.member == "jpg", "data.decode_device",
                  f"{cfg.decode_device} decodes JPEG (MillionAID) shards only; {cfg.shards} holds .npy "
                  f"raster samples, which need no decoding: use cpu")
            problems = check_device_decoding(cfg.decode_device)
            check(not problems, "data.decode_device", f"{cfg.decode_device} cannot run here: {'; '.join(problems)}")
        self.stats = LoaderStats()
        self._logged = 0
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Plan ``epoch``; the next iteration starts at batch ``start_batch`` of it."""
        cfg = self.cfg
        common = dict(seed=cfg.seed, epoch=epoch, rank=self.rank, batch_size=self.batch_size,
                      num_workers=cfg.num_workers, shuffle_buffer=cfg.shuffle_buffer)
        if cfg.mode == "exact":
            self.plan = plan_exact_epoch(self.manifest.counts, world_size=self.world_size,
                                         drop_last=cfg.drop_last, **common)
        else:
            self.plan = plan_resampled_epoch(self.manifest.counts, batches=cfg.batches_per_epoch, **common)
        check(0 <= start_batch <= len(self.plan), "start_batch",
              f"must be within 0..{len(self.plan)} (batches in epoch {epoch}), got {start_batch}")
        self.epoch, self.start_batch, self._position = epoch, start_batch, start_batch

    @property
    def num_batches(self) -> int:
        """Batches of the whole epoch on this rank (equal on every rank)."""
        return len(self.plan)

    def __len__(self) -> int:
        """Batches one iteration yields: the epoch's, minus the ``start_batch`` already done."""
        return len(self.plan) - self.start_batch

    def __iter__(self) -> Iterator[PretrainBatch]:
        cfg = self.cfg
        dataset = _EpochDataset(self.plan, self.urls, self.start_batch, cfg, self.format)
        workers = {}
        if cfg.num_workers > 0:
            workers = dict(num_workers=cfg.num_workers, worker_init_fn=worker_initializer(),
                           prefetch_factor=cfg.prefetch_factor,
                           multiprocessing_context=process_context(cfg.worker_start))
        loader = DataLoader(dataset, batch_size=None, collate_fn=_identity, pin_memory=cfg.pin_memory,
                            **workers)
        self._position = self.start_batch
        for batch in loader:
            # The plan relies on the DataLoader's round-robin order over workers; check it holds.
            if batch.index != self._position:
                raise RuntimeError(f"rank {self.rank}: got batch {batch.index}, expected {self._position}")
            self._report(self.stats.add(batch))
            self._position += 1
            yield batch
        if self._position != len(self.plan):
            raise RuntimeError(f"rank {self.rank}: epoch ended after {self._position} of "
                               f"{len(self.plan)} batches")

    def _report(self, events: List[SkipEvent]) -> None:
        for e in events:
            if self._logged < _LOGGED_EVENTS:
                log.warning("rank %d: skipped sample %s of %s: %s (%s)", self.rank, e.key, e.url,
                            e.reason, e.detail)
            elif self._logged == _LOGGED_EVENTS:
                log.warning("rank %d: further skipped samples are counted in loader.stats, not logged",
                            self.rank)
            self._logged += 1

    def state_dict(self) -> Dict[str, Any]:
        """Position to store in a checkpoint: epoch, batches consumed so far, and the run shape
        the remaining batches depend on (checked by :meth:`load_state_dict`)."""
        cfg = self.cfg
        return {"version": STATE_VERSION, "epoch": self.epoch, "batches_done": self._position,
                "num_batches": len(self.plan), "num_samples": self.manifest.num_samples,
                "rank": self.rank, "world_size": self.world_size, "batch_size": self.batch_size,
                "mode": cfg.mode, "seed": cfg.seed, "num_workers": cfg.num_workers,
                "shuffle_buffer": cfg.shuffle_buffer, "drop_last": cfg.drop_last,
                "batches_per_epoch": cfg.batches_per_epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue where ``state`` left off (:func:`loader_state_to_start`), after checking that
        this loader's run shape makes the same remaining batches."""
        epoch, start = loader_state_to_start(state, self.cfg, self.batch_size, self.world_size)
        if start > 0:
            check(state["num_samples"] == self.manifest.num_samples, "shards",
                  f"the checkpoint's epoch covers {state['num_samples']} samples, the manifest "
                  f"has {self.manifest.num_samples}")
        self.set_epoch(epoch, start)


def loader_state_to_start(state: Dict[str, Any], cfg: Optional[PretrainDataConfig] = None,
                          batch_size: Optional[int] = None,
                          world_size: Optional[int] = None) -> Tuple[int, int]:
    """``(epoch, start_batch)`` to pass to :func:`build_pretrain_loader` when resuming.

    A finished epoch resumes at the start of the next, where any run shape is fine. Mid-epoch, the
    remaining batches depend on the run shape: given ``cfg``/``batch_size``/``world_size``, a change
    raises ConfigError naming the field.
    """
    if state.get("version") != STATE_VERSION:
        raise ConfigError(f"loader state: version {state.get('version')!r}, expected {STATE_VERSION}")
    epoch, done = int(state["epoch"]), int(state["batches_done"])
    if done >= int(state["num_batches"]):
        return epoch + 1, 0
    if done == 0:
        return epoch, 0
    now: Dict[str, Any] = {}
    if cfg is not None:
        now.update({f"data.{k}": getattr(cfg, k) for k in
                    ("mode", "seed", "num_workers", "shuffle_buffer", "drop_last", "batches_per_epoch")})
    if batch_size is not None:
        now["batch_size"] = batch_size
    if world_size is not None:
        now["world_size"] = world_size
    for name, value in now.items():
        check(state[name.removeprefix("data.")] == value, name,
              f"resuming in the middle of epoch {epoch} needs the checkpoint's value "
              f"{state[name.removeprefix('data.')]!r}, got {value!r} (or resume at an epoch boundary)")
    return epoch, done


def resolve_shards(cfg: PretrainDataConfig) -> Tuple[Manifest, List[str]]:
    """The manifest and the URL of each of its shards, from ``cfg.shards``/``cfg.manifest``."""
    import webdataset as wds

    if cfg.manifest is None:
        path = local_path(cfg.shards) or Path(cfg.shards)
        manifest = load_manifest(path)
        return manifest, shard_urls(path, manifest)
    manifest = load_manifest(local_path(cfg.manifest) or Path(cfg.manifest))
    urls = wds.shardlists.expand_urls(cfg.shards)
    check(len(urls) == len(manifest.shards), "shards",
          f"the URL spec gives {len(urls)} shards, the manifest {cfg.manifest} lists {len(manifest.shards)}")
    for i, (url, record) in enumerate(zip(urls, manifest.shards)):
        check(record.name in url, "shards",
              f"URL {i} ({url}) does not name manifest shard {record.name}; the spec must list "
              f"the manifest's shards in its order")
    return manifest, urls


def build_pretrain_loader(cfg: PretrainDataConfig, batch_size: int, rank: int, world_size: int,
                          epoch: int = 0, start_batch: int = 0) -> PretrainLoader:
    """The loader of rank ``rank`` of ``world_size`` (no torch.distributed needed), positioned at
    ``start_batch`` of ``epoch`` (see :func:`loader_state_to_start`).

    Raises:
        ConfigError: bad arguments, or data too few for the run shape (message names the field).
        DataError (ManifestError): the manifest cannot be read.
        ShardIntegrityError: ``cfg.verify`` found shards that do not match the manifest.
    """
    check(batch_size >= 1, "batch_size", f"must be >= 1, got {batch_size}")
    check(world_size >= 1 and 0 <= rank < world_size, "rank",
          f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    manifest, urls = resolve_shards(cfg)
    mine = range(rank, len(urls), world_size) if cfg.verify == "sha256" else None
    problems = verify_shards(manifest, urls, cfg.verify, mine)
    if problems:
        raise ShardIntegrityError("shards do not match the manifest: " + "; ".join(
            f"{p.url}: {p.reason}" for p in problems))
    return PretrainLoader(cfg, manifest, urls, batch_size, rank, world_size, epoch, start_batch)
