"""The input bands and normalisation of a fine-tuning run: the ``data.bands`` / ``data.band_*``
fields every task's data config carries, and the rule that turns them into an
:class:`~rsfm_ds.data.bands.InputBands`.

Precedence of the normalisation (the first that applies wins):

1. ``data.band_mean`` + ``data.band_std``: per-band statistics in the files' raw units;
2. ``data.band_stats``: a pretraining manifest (``manifest.json`` of ``rsfm shards images``) whose
   per-band statistics were measured over the pretraining imagery;
3. the pretrained backbone file's metadata ``band_mean`` / ``band_std`` (written by ``rsfm
   convert`` from the pretraining manifest), so a backbone fine-tunes on the statistics it was
   pretrained with unless the run says otherwise;
4. 3 bands and nothing given: ImageNet's statistics x 255, the normalisation of 8-bit RGB (the
   images must then be 8-bit);
5. otherwise a one-line ``ConfigError`` naming ``data.band_mean``.

Explicit settings come first because a user who writes statistics means them; the backbone's own
statistics come before the 8-bit default because they describe the imagery it learnt from.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..config import check
from ..data.bands import InputBands
from ..data.raster import IMAGENET_RAW, BandNormalization
from ..errors import ConfigError, DataError


@dataclass
class BandsConfig:
    """Which bands of the image files a task reads, and how they are normalised
    (docs/detection_data.md, docs/segmentation_data.md: input bands)."""

    bands: Optional[Tuple[int, ...]] = None
    """1-based bands read from every image file, in this order (e.g. [4, 3, 2, 8]); null reads
    all. Their count must equal backbone.in_chans."""
    band_mean: Optional[Tuple[float, ...]] = None
    """Per-band mean in the files' raw units (after data.bands); with band_std. Null: band_stats,
    else the pretrained backbone's statistics, else ImageNet's x 255 for 3-band 8-bit images."""
    band_std: Optional[Tuple[float, ...]] = None
    """Per-band standard deviation in raw units, with band_mean."""
    band_stats: Optional[str] = None
    """A pretraining manifest.json whose per-band statistics normalise the inputs (instead of
    band_mean / band_std)."""

    def __post_init__(self):
        if self.bands is not None:
            check(len(self.bands) > 0 and all(int(b) == b and b >= 1 for b in self.bands), "bands",
                  f"must be 1-based band numbers, got {list(self.bands)}")
        check((self.band_mean is None) == (self.band_std is None), "band_std" if self.band_std is None else "band_mean",
              "band_mean and band_std go together")
        if self.band_mean is not None:
            check(len(self.band_mean) == len(self.band_std) and len(self.band_mean) > 0, "band_std",
                  f"{len(self.band_std)} values for {len(self.band_mean)} band_mean values")
            check(all(s > 0 and math.isfinite(s) for s in self.band_std), "band_std",
                  f"must be finite and > 0, got {list(self.band_std)}")
            check(self.bands is None or len(self.bands) == len(self.band_mean), "band_mean",
                  f"{len(self.band_mean)} values for the {len(self.bands or ())} bands of data.bands")
            check(self.band_stats is None, "band_stats", "give band_stats or band_mean / band_std, not both")


def load_band_stats(path: str) -> BandNormalization:
    """The per-band normalisation a pretraining manifest records
    (:meth:`~rsfm_ds.data.pretrain.manifest.Manifest.normalization`).

    Raises:
        ConfigError: no such file, not a manifest, or one without band statistics (a MillionAID
            manifest: its 8-bit RGB imagery takes the default), all naming data.band_stats.
    """
    from ..data.pretrain.manifest import load_manifest

    try:
        norm = load_manifest(path).normalization()
    except DataError as e:  # ManifestError is one
        raise ConfigError(f"data.band_stats: {e}") from None
    if norm is None:
        raise ConfigError(f"data.band_stats: {path} holds no band statistics (8-bit RGB imagery: leave "
                          f"band_stats unset for the ImageNet default)")
    return norm


def backbone_band_stats(pretrained: Optional[str]) -> Optional[BandNormalization]:
    """The ``band_mean`` / ``band_std`` recorded in a pretrained backbone's metadata, if any."""
    if not pretrained:
        return None
    from ..checkpoint.sources import open_source

    meta = open_source(pretrained).metadata
    if "band_mean" not in meta or "band_std" not in meta:
        return None
    try:
        return BandNormalization(tuple(map(float, json.loads(meta["band_mean"]))),
                                 tuple(map(float, json.loads(meta["band_std"]))))
    except (TypeError, ValueError, DataError) as e:
        raise ConfigError(f"backbone.pretrained: {pretrained}: malformed band_mean / band_std metadata ({e})") from None


def resolve_inputs(data: BandsConfig, in_chans: int, pretrained: Optional[str]) -> Tuple[InputBands, str]:
    """The run's :class:`InputBands` and a line saying where its normalisation came from
    (module docstring for the precedence).

    Raises:
        ConfigError: a band count that differs from ``in_chans`` (naming data.bands / data.band_mean
            and backbone.in_chans), or N-band data with no normalisation (naming data.band_mean).
    """
    bands = None if data.bands is None else tuple(int(b) for b in data.bands)
    if bands is not None and len(bands) != in_chans:
        raise ConfigError(f"data.bands: {len(bands)} bands {list(bands)} but backbone.in_chans is {in_chans}")
    if data.band_mean is not None:
        norm, source = BandNormalization(tuple(data.band_mean), tuple(data.band_std)), "data.band_mean/band_std"
    elif data.band_stats is not None:
        norm, source = load_band_stats(data.band_stats), f"data.band_stats {data.band_stats}"
    else:
        norm, source = backbone_band_stats(pretrained), f"the metadata of backbone.pretrained {pretrained}"
    if norm is None:
        if in_chans != 3:
            raise ConfigError(f"data.band_mean: {in_chans}-band input needs its per-band statistics: set "
                              f"data.band_mean and data.band_std (raw units) or data.band_stats")
        return InputBands(IMAGENET_RAW, bands, in_chans, require_8bit=True), "ImageNet mean/std x 255 (8-bit RGB)"
    if norm.bands != in_chans:
        raise ConfigError(f"data.band_mean: {source} gives {norm.bands} bands but backbone.in_chans is {in_chans}")
    return InputBands(norm, bands, in_chans), source


def describe(inputs: InputBands, source: str) -> str:
    """One line for the training log: bands, statistics and where they came from."""
    values: List[str] = [f"{m:.4g}/{s:.4g}" for m, s in zip(inputs.normalization.mean, inputs.normalization.std)]
    bands = "all bands" if inputs.bands is None else f"bands {list(inputs.bands)}"
    return f"input: {inputs.in_chans} channels ({bands}); mean/std {', '.join(values)} from {source}"


__all__ = ["BandsConfig", "resolve_inputs", "load_band_stats", "backbone_band_stats", "describe"]
