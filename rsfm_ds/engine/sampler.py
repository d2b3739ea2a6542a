"""Deterministic, resumable distributed batching over a map-style dataset.

Every rank gets the same number of full batches per epoch (collectives would otherwise wait for a
rank that has run out), drawn from one permutation that is a function of ``(seed, epoch)`` alone;
rank ``r`` takes every ``world``-th batch of it. Resuming mid-epoch skips the batches already
consumed without touching the data. The permutation is extended by wrapping around when the
dataset is smaller than the epoch's batches (at least ``min_batches``: one optimizer step's
accumulation), so tiny fine-tuning subsets (1% of a dataset) still train.
"""
from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler

from ..errors import DataError


class DistributedBatchSampler(Sampler[List[int]]):
    """Batches of dataset indices for one rank and one epoch.

    Args:
        dataset_len: number of samples.
        batch_size: samples per batch on this rank.
        rank: this rank; world_size: number of ranks.
        seed: permutation seed (same on every rank).
        shuffle: permute (training) or keep order (evaluation).
        min_batches: with ``drop_last``, the fewest batches an epoch has (the micro-batches of one
            optimizer step), wrapping around a dataset too small to fill them.
        drop_last: full batches only (training). Without it (evaluation) every sample appears
            exactly once over all ranks, and the last global batch is filled up with indices
            ``>= dataset_len``: padding, which the dataset wraps (:class:`PaddedDataset`) and the
            evaluation ignores. Every rank still runs the same number of equally sized batches,
            as ZeRO-3 forward passes (parameter all-gathers) require.
    """

    def __init__(self, dataset_len: int, batch_size: int, rank: int, world_size: int, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, min_batches: int = 1):
        if dataset_len <= 0:
            raise DataError("the dataset is empty")
        self.dataset_len, self.batch_size = dataset_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.drop_last, self.min_batches = seed, shuffle, drop_last, min_batches
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Position the sampler at ``start_batch`` of ``epoch``."""
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.dataset_len)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.dataset_len, generator=g)

    def batches_per_epoch(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            return max(self.min_batches, self.dataset_len // global_batch)
        return -(-self.dataset_len // global_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[List[int]]:
        order = self._order()
        n = self.batches_per_epoch()
        global_batch = self.batch_size * self.world_size
        if self.drop_last and order.numel() < n * global_batch:
            order = order.repeat(-(-n * global_batch // order.numel()))
        elif not self.drop_last:
            order = torch.cat([order, torch.arange(self.dataset_len, n * global_batch)])
        for b in range(self.start_batch, n):
            chunk = order[b * global_batch:(b + 1) * global_batch]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield mine.tolist()


class PaddedDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that padding indices (``>= len``) return ``(sample of i % len, True)``
    and real ones ``(sample, False)``."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        n = len(self.base)
        return self.base[index % n], index >= n
