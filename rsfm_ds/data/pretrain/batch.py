"""What the pretraining loader yields (:class:`PretrainBatch`) and what it counts (:class:`LoaderStats`).

A batch holds ``uint8`` (or raster-typed) pixels, or, with ``data.decode_device: cuda``, the JPEG
streams and their drawn crops (device_decode.py); :meth:`PretrainBatch.normalized` turns either into
normalised float images on the device the engine names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, List, Optional, Tuple, Union

import torch

from ..images import IMAGENET_MEAN, IMAGENET_STD
from .device_decode import EncodedCrops, decode_crops
from .shard_reader import SkipEvent
from .transforms import normalize_batch

PAD_KEY = "__padding__"


@dataclass
class PretrainBatch:
    """One batch of one rank."""

    pixels: Optional[torch.Tensor]
    """``[B, C, S, S]`` augmented, not normalised: ``uint8`` RGB for MillionAID, the stored type
    (:func:`~.transforms.batch_dtype`) for raster samples; ``B`` is the planned size minus skipped
    samples. None while :attr:`encoded` holds the batch (``decode_device: cuda``): see :meth:`decoded`."""
    keys: List[str]
    """Sample keys (``<shard>-<index>``; the shard's json record has the source path)."""
    index: int
    """Batch index within this rank's epoch."""
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    skipped: Tuple[SkipEvent, ...] = ()
    """Planned samples of this batch that could not be delivered."""
    padded: bool = False
    """True when every planned sample failed and ``pixels`` is one mean-grey placeholder."""
    unit: float = 255.0
    """``mean``/``std`` are in units of ``pixels / unit``: 255 for ImageNet's [0, 1] RGB statistics,
    1 for raw per-band statistics."""
    encoded: Optional[EncodedCrops] = None
    """``decode_device: cuda``: the JPEG streams and their drawn crops, decoded by :meth:`decoded`."""
    size: int = 0
    """Output side ``S`` of :attr:`encoded` batches."""

    def __len__(self) -> int:
        return len(self.keys)

    def decoded(self, device: Union[str, torch.device, None] = None, non_blocking: bool = False) -> torch.Tensor:
        """:attr:`pixels` on ``device`` (None: where they are); an :attr:`encoded` batch is decoded,
        cropped and flipped there (``uint8 [B, 3, S, S]``; on the CPU by torchvision's decoder)."""
        if self.encoded is None:
            return self.pixels if device is None else self.pixels.to(device, non_blocking=non_blocking)
        return decode_crops(self.encoded, self.size, self.mean, torch.device(device or "cpu"))

    @cached_property
    def images(self) -> torch.Tensor:
        """``float32 [B, C, S, S]``, normalised with ``mean``/``std``; made on first access."""
        return normalize_batch(self.decoded(), self.mean, self.std, self.unit)

    def normalized(self, device: Union[str, torch.device, None] = None,
                   dtype: torch.dtype = torch.float32, non_blocking: bool = False) -> torch.Tensor:
        """:attr:`images` on ``device`` in ``dtype``, normalised *there*: the stored pixels are
        moved (4x fewer bytes than float for uint8; JPEG bytes for an :attr:`encoded` batch) and the
        conversion runs on the device."""
        return normalize_batch(self.decoded(device, non_blocking), self.mean, self.std, self.unit).to(dtype)

    def pin_memory(self) -> "PretrainBatch":
        """Called by the DataLoader's pinning thread when ``pin_memory`` is on."""
        if self.encoded is not None:
            return dataclasses.replace(self, encoded=self.encoded.pin_memory())
        return dataclasses.replace(self, pixels=self.pixels.pin_memory())


@dataclass
class LoaderStats:
    """What a loader delivered and what it had to skip, since it was built."""

    batches: int = 0
    samples: int = 0
    padded_batches: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    """Skipped samples per reason (see ``shard_reader.SKIP_REASONS``)."""
    bad_shards: Dict[str, str] = field(default_factory=dict)
    """URL -> first error, for shards that were truncated or unreadable."""
    events: List[SkipEvent] = field(default_factory=list)
    """The first skip events in full (at most 1000)."""

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, batch: PretrainBatch) -> List[SkipEvent]:
        """Count ``batch``; returns its skip events."""
        self.batches += 1
        self.samples += 0 if batch.padded else len(batch.keys)
        self.padded_batches += int(batch.padded)
        for e in batch.skipped:
            self.skipped[e.reason] = self.skipped.get(e.reason, 0) + 1
            if e.reason in ("truncated_shard", "unreadable_shard"):
                self.bad_shards.setdefault(e.url, e.detail)
            if len(self.events) < 1000:
                self.events.append(e)
        return list(batch.skipped)

    def summary(self) -> str:
        """One line, e.g. for the end-of-epoch log."""
        text = f"{self.samples} samples in {self.batches} batches"
        if self.skipped:
            text += f"; skipped {self.num_skipped} (" + ", ".join(
                f"{reason} {n}" for reason, n in sorted(self.skipped.items())) + ")"
        if self.bad_shards:
            text += f"; bad shards: {', '.join(sorted(self.bad_shards))}"
        if self.padded_batches:
            text += f"; {self.padded_batches} padded batches"
        return text
