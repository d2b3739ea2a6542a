"""Which samples a rank reads in one epoch, how its DataLoader workers split them, and the batches.

Pure arithmetic on the manifest's per-shard sample counts: nothing is read, so every rank and
worker computes the same plan independently, and a resumed run computes the plan of the
interrupted one.

Exact epoch (every sample once over all ranks):
  1. the shards are permuted with ``(seed, epoch)`` (the same on every rank) and concatenated into
     one stream of ``N`` samples;
  2. rank ``r`` takes a contiguous range: ``q = N // W`` samples, plus one for the first
     ``N % W`` ranks; every rank gets ``ceil((q + (N % W > 0)) / B)`` batches, all of ``B`` samples
     except the last. A rank whose samples fill one batch fewer than the others splits its last full
     batch into ``B - 1`` and ``1`` samples, so batch counts stay equal and nothing repeats;
  3. with ``drop_last`` every rank takes ``N // (W * B)`` full batches instead and the remainder
     (a different part of the data each epoch) is left out.
Resampled epoch: each rank draws whole shards with replacement, seeded by ``(seed, epoch, rank)``,
until it has ``batches_per_epoch * B`` samples.

Workers: with ``K`` DataLoader workers, batch ``j`` is made by worker ``j % K``, which is the order
in which PyTorch's DataLoader collects batches from its workers. Worker ``w`` owns a contiguous
slice of the rank's stream, as long as its batches need; it permutes its slice in consecutive blocks
of ``shuffle_buffer`` samples (seeded by seed, epoch, rank, worker, block) and cuts the result
into its batches. Shuffling happens on positions, before anything is read or decoded; reading a
block costs the same memory as a WebDataset shuffle buffer of that size (compressed bytes).

Why not WebDataset's ``split_by_node``/``split_by_worker``/``shuffle``: they split whole shards and
shuffle with a rolling buffer, which can neither give every rank the same number of samples nor say
which samples a mid-epoch resume must skip; planning positions can do both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from ...config import check

# Seed domains, so that the random streams used for different purposes are independent.
_SHARD_ORDER, _RESAMPLE, _BLOCK, _AUGMENT = 0, 1, 2, 3


@dataclass(frozen=True)
class Segment:
    """Samples ``[lo, hi)`` of manifest shard ``shard``, read in this order."""

    shard: int
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class WorkerPlan:
    """What one DataLoader worker reads and the batches it makes."""

    segments: Tuple[Segment, ...]
    """The worker's slice of the rank stream, in reading order."""
    batches: Tuple[Tuple[int, np.ndarray], ...]
    """``(batch index within the epoch, positions)``; positions index the worker's slice
    (0 = first sample of ``segments``), in the order the batch holds them."""


@dataclass(frozen=True)
class EpochPlan:
    """The samples and batches of one rank in one epoch."""

    segments: Tuple[Segment, ...]
    """The rank's sample stream."""
    batch_sizes: Tuple[int, ...]
    """Planned samples per batch (equal length on every rank)."""
    num_workers: int
    shuffle_buffer: int
    seed: int
    epoch: int
    rank: int

    def __len__(self) -> int:
        return len(self.batch_sizes)

    @property
    def num_samples(self) -> int:
        return sum(self.batch_sizes)

    def worker(self, worker: int) -> WorkerPlan:
        """The plan of worker ``worker`` of ``num_workers`` (0 when the DataLoader has none)."""
        k = self.num_workers
        spans = [sum(self.batch_sizes[w::k]) for w in range(k)]
        start = sum(spans[:worker])
        segments = _slice(self.segments, start, start + spans[worker])
        n = spans[worker]
        block = max(1, self.shuffle_buffer)
        perm = np.concatenate([
            b + np.random.default_rng([self.seed, self.epoch, _BLOCK, self.rank, worker, b // block])
            .permutation(min(block, n - b)) for b in range(0, n, block)] or [np.zeros(0, np.int64)])
        indices = list(range(worker, len(self.batch_sizes), k))
        cuts = np.cumsum([self.batch_sizes[j] for j in indices])[:-1]
        return WorkerPlan(segments, tuple(zip(indices, np.split(perm, cuts))))


def augment_seed(seed: int, epoch: int, rank: int, batch: int, slot: int) -> List[int]:
    """Seed of the augmentation of one planned sample: independent of which worker makes it."""
    return [seed, epoch, _AUGMENT, rank, batch, slot]


def _slice(segments: Sequence[Segment], start: int, stop: int) -> Tuple[Segment, ...]:
    """The part ``[start, stop)`` of the stream formed by ``segments``."""
    out, offset = [], 0
    for s in segments:
        lo, hi = max(start, offset), min(stop, offset + len(s))
        if lo < hi:
            out.append(Segment(s.shard, s.lo + lo - offset, s.lo + hi - offset))
        offset += len(s)
    return tuple(out)


def plan_exact_epoch(counts: Sequence[int], *, seed: int, epoch: int, rank: int, world_size: int,
                     batch_size: int, drop_last: bool, num_workers: int,
                     shuffle_buffer: int) -> EpochPlan:
    """Plan an exact epoch of rank ``rank`` (module docstring, steps 1-3).

    Raises:
        ConfigError: the data are too few for ``world_size`` ranks (or one global batch with
            ``drop_last``), or ``batch_size`` is 1 where equal batch counts need a split batch.
    """
    total = sum(counts)
    order = np.random.default_rng([seed, epoch, _SHARD_ORDER]).permutation(len(counts))
    stream = [Segment(int(i), 0, counts[i]) for i in order if counts[i] > 0]
    if drop_last:
        per_rank = total // (world_size * batch_size)
        check(per_rank > 0, "data.drop_last", f"{total} samples are fewer than one batch of "
                                              f"{batch_size} on each of {world_size} ranks")
        sizes = [batch_size] * per_rank
        start = rank * per_rank * batch_size
    else:
        q, r = divmod(total, world_size)
        check(q > 0, "data.shards", f"{total} samples cannot give each of {world_size} ranks one")
        nb = math.ceil((q + (r > 0)) / batch_size)
        # Ranks without an extra sample fill one batch fewer when q is a multiple of B. Decided
        # from (q, r, B) alone, so that every rank takes the same branch (and raises alike).
        split_last = r > 0 and q % batch_size == 0
        check(not split_last or batch_size > 1, "data.drop_last",
              f"batch size 1 cannot give {world_size} ranks equal batch counts over {total} "
              f"samples without repeating one; set drop_last")
        n = q + (rank < r)
        start = rank * q + min(rank, r)
        sizes = [batch_size] * (nb - 1) + [n - (nb - 1) * batch_size]
        if sizes[-1] == 0:
            sizes[-2:] = [batch_size - 1, 1]
    return EpochPlan(_slice(stream, start, start + sum(sizes)), tuple(sizes), max(1, num_workers),
                     shuffle_buffer, seed, epoch, rank)


def plan_resampled_epoch(counts: Sequence[int], *, seed: int, epoch: int, rank: int, batches: int,
                         batch_size: int, num_workers: int, shuffle_buffer: int) -> EpochPlan:
    """Plan a resampled epoch: ``batches`` full batches from shards drawn with replacement."""
    nonempty = [i for i, c in enumerate(counts) if c > 0]
    check(bool(nonempty), "data.shards", "every shard is empty")
    rng = np.random.default_rng([seed, epoch, _RESAMPLE, rank])
    need, segments = batches * batch_size, []
    while need > 0:
        i = nonempty[int(rng.integers(len(nonempty)))]
        take = min(counts[i], need)
        segments.append(Segment(i, 0, take))
        need -= take
    return EpochPlan(tuple(segments), (batch_size,) * batches, max(1, num_workers), shuffle_buffer,
                     seed, epoch, rank)
