"""What a downstream task supplies to the fine-tuning engine (:func:`rsfm_ds.engine.finetune.finetune`).

A task builds its model (a ViTDet backbone under ``backbone.`` plus its heads; in training mode
``forward(batch)`` returns a loss dict with the total under ``"loss"``), its datasets and collate
functions, and its evaluation. The engine owns everything else, once.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .config import FinetuneConfig


class FinetuneTask(abc.ABC):
    """A downstream task: model, data and evaluation for one run config."""

    #: name of the metric that selects the best checkpoint (higher is better)
    primary_metric: str = "score"

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The model: ``backbone`` (ViTDet) plus heads; ``init_module(m)`` for ZeRO-3 builds."""

    @abc.abstractmethod
    def train_dataset(self) -> Dataset:
        """Training samples (augmentations may use Python / NumPy / torch global RNGs: the engine
        seeds them per sample)."""

    @abc.abstractmethod
    def eval_dataset(self) -> Dataset:
        """Evaluation samples, in a fixed order."""

    @abc.abstractmethod
    def collate(self, samples: List[Any]) -> Any:
        """Training samples -> batch."""

    @abc.abstractmethod
    def to_device(self, batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
        """Move a batch to the device; images in the model's dtype."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, batches: Iterator[Tuple[Any, List[bool]]],
                 device: torch.device, dtype: torch.dtype, out_dir: Path) -> Dict[str, float]:
        """Run inference on this rank's batches (``(batch, is_padding)`` pairs) and return the
        dataset-level metrics, identical on every rank (gather partial results across ranks).
        Every rank receives the same number of batches, as ZeRO-3 forward passes require.

        Values are numbers, or None where a metric is undefined; the key ``notes`` may hold lines
        saying which values are undefined and what the means leave out (logged and kept)."""

    def evaluation_protocol(self) -> str:
        """One line stating what the metrics are computed on: dataset, split, classes, ignore rules
        and the metric's own protocol (written beside every evaluation and into reports)."""
        return ""

    def eval_collate(self, samples: List[Tuple[Any, bool]]) -> Tuple[Any, List[bool]]:
        return self.collate([s for s, _ in samples]), [pad for _, pad in samples]


__all__ = ["FinetuneTask"]
