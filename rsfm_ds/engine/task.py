"""What a downstream task supplies to the fine-tuning engine (:func:`rsfm_ds.engine.finetune.finetune`).

A task builds its model (a ViTDet backbone under ``backbone.`` plus its heads; in training mode
``forward(batch)`` returns a loss dict with the total under ``"loss"``), its datasets and collate
functions, and its evaluation. The engine owns everything else, once.

Every task also states its inputs and outputs for the code that runs a trained model elsewhere
(prediction over new scenes): the bands it reads (:meth:`FinetuneTask.input_bands`), their
normalisation (:meth:`FinetuneTask.input_normalization`, resolved by
:func:`rsfm_ds.engine.inputs.resolve_inputs` from the data config's ``bands`` / ``band_*``
fields) and its class names (:meth:`FinetuneTask.class_names`).
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..data.bands import InputBands
from ..data.raster import BandNormalization
from .config import FinetuneConfig
from .inputs import describe, resolve_inputs


class FinetuneTask(abc.ABC):
    """A downstream task: model, data and evaluation for one run config."""

    #: name of the metric that selects the best checkpoint (higher is better)
    primary_metric: str = "score"

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg
        self._inputs: Optional[Tuple[InputBands, str]] = None

    @abc.abstractmethod
    def class_names(self) -> Tuple[str, ...]:
        """The classes the model predicts, in the order of its outputs."""

    def inputs(self) -> InputBands:
        """Bands, normalisation and channel count of the inputs (``cfg.data``'s band fields,
        :func:`~rsfm_ds.engine.inputs.resolve_inputs`); resolved once."""
        if self._inputs is None:
            self._inputs = resolve_inputs(self.cfg.data, self.cfg.backbone.in_chans, self.cfg.backbone.pretrained)
        return self._inputs[0]

    def input_normalization(self) -> BandNormalization:
        """Per-band ``(raw - mean) / std`` in raw units applied to every image."""
        return self.inputs().normalization

    def input_bands(self) -> Optional[Tuple[int, ...]]:
        """1-based bands read from image files, in order; None reads all of them."""
        return self.inputs().bands

    def describe_inputs(self) -> str:
        """One line for the log: channels, bands, statistics and where they came from."""
        inputs = self.inputs()
        return describe(inputs, self._inputs[1])

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
