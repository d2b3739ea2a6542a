"""The fine-tuning engine's data loaders: deterministic, resumable, seeded per sample.

Exactness of resumption: the data order is a function of (seed, epoch) (:mod:`.sampler`), the
position is stored in the checkpoint, and each sample's augmentation draws from a seed that is a
function of (seed, epoch, position in the epoch), not of which worker process happens to load it.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.processes import process_context, worker_initializer
from .sampler import DistributedBatchSampler, PaddedDataset
from .task import FinetuneTask


class PerSampleSeed(Dataset):
    """Indexes are ``(index, seed)``: each sample's augmentation draws from its own seeded RNGs."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        with _seeded(seed):
            return self.base[index]


@contextmanager
def _seeded(seed: int):
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededBatches(torch.utils.data.Sampler):
    """Wraps :class:`DistributedBatchSampler`, pairing each index with its augmentation seed."""

    def __init__(self, inner: DistributedBatchSampler, seed: int):
        self.inner, self.seed = inner, seed

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        epoch, start = self.inner.epoch, self.inner.start_batch
        for b, batch in enumerate(self.inner, start=start):
            base = (self.seed * 1_000_003 + epoch) * 1_000_003 + b * 4096 + self.inner.rank * 64
            yield [(index, base + i) for i, index in enumerate(batch)]


def train_loader(task: FinetuneTask, data: Dataset, sampler: DistributedBatchSampler, epoch: int, start: int,
                 num_workers: int, seed: int, rank: int) -> DataLoader:
    """This rank's training micro-batches of ``epoch`` from micro-batch ``start``."""
    sampler.set_epoch(epoch, start)
    if hasattr(data, "set_epoch"):  # datasets that seed augmentation per epoch
        data.set_epoch(epoch)
    return DataLoader(PerSampleSeed(data), batch_sampler=SeededBatches(sampler, seed), collate_fn=task.collate,
                      **worker_options(num_workers, seed, epoch, rank))


def eval_loader(task: FinetuneTask, data: Dataset, batch_size: int, num_workers: int, seed: int, rank: int,
                world: int) -> DataLoader:
    """This rank's ``(batch, is_padding)`` evaluation batches; every rank gets as many."""
    padded = PaddedDataset(data)
    sampler = DistributedBatchSampler(len(padded), batch_size, rank, world, shuffle=False, drop_last=False)
    return DataLoader(padded, batch_sampler=sampler, collate_fn=task.eval_collate,
                      **worker_options(num_workers, seed, -1, rank))


def worker_options(num_workers: int, seed: int, epoch: int, rank: int) -> Dict[str, Any]:
    """DataLoader worker settings. Workers are forked from a clean server process, since forking a
    training process that has run OpenCV threads deadlocks (rsfm_ds/data/processes.py). The
    loader's own generator seeds its workers, so creating a loader (an evaluation, a resume)
    draws nothing from the global RNG that dropout and drop path use: resumption stays exact."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch + 1) * 4099 + rank)
    if num_workers == 0:
        return dict(num_workers=0, generator=generator)
    return dict(num_workers=num_workers, multiprocessing_context=process_context(),
                worker_init_fn=worker_initializer(), generator=generator)


__all__ = ["PerSampleSeed", "SeededBatches", "train_loader", "eval_loader", "worker_options"]
