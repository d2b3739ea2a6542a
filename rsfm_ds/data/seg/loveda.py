"""LoveDA (Wang et al. 2021): the release layout, its masks, and the 7-class protocol.

Layout (the release's ``Train.zip``, ``Val.zip``, ``Test.zip`` unzipped under one root)::

    ROOT/{Train,Val,Test}/{Urban,Rural}/images_png/<id>.png   1024 x 1024 RGB
    ROOT/{Train,Val}/{Urban,Rural}/masks_png/<id>.png        1024 x 1024 uint8, values 0..7

Ids are integers unique over the whole dataset; a mask has its image's file name. Test masks are
withheld (the benchmark server scores them), so ``Test`` has no ``masks_png``.

Mask values: 0 no-data (ignored), 1 background, 2 building, 3 road, 4 water, 5 barren, 6 forest,
7 agriculture. Training and evaluation use mmseg's reduce-zero-label
(:func:`rsfm_ds.data.seg.labels.apply_reduce_zero_label`): 0 -> 255, ``v`` -> ``v - 1``, so the
7 classes are 0..6 in ``LOVEDA_CLASSES`` order. The protocol's metric is mIoU with sliding-window
inference (crop 512, stride 384).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import ConfigError, DataError, few
from .labels import apply_reduce_zero_label

LOVEDA_CLASSES: Tuple[str, ...] = ("background", "building", "road", "water", "barren", "forest", "agriculture")
"""Class names after reduce-zero-label (raw mask value minus 1)."""
LOVEDA_SPLITS: Tuple[str, ...] = ("Train", "Val", "Test")
LOVEDA_DOMAINS: Tuple[str, ...] = ("Urban", "Rural")
NO_DATA = 0
IGNORE_INDEX = 255
SLIDE_CROP, SLIDE_STRIDE = 512, 384


@dataclass(frozen=True)
class LoveDASample:
    """One LoveDA image and its mask (``None`` in the Test split)."""

    image: Path
    mask: Optional[Path]
    split: str
    domain: str

    @property
    def name(self) -> str:
        """File name, unique over the dataset (e.g. ``1366.png``)."""
        return self.image.name


def list_loveda(root: Union[str, Path], split: str,
                domains: Sequence[str] = LOVEDA_DOMAINS) -> List[LoveDASample]:
    """Samples of ``split`` (``Train``, ``Val``, ``Test``) in ``domains``, sorted by domain then id.

    Raises:
        ConfigError: unknown split or domain.
        DataError: a ``images_png`` folder is missing or empty, or an image of a labelled
            split has no mask (the message names the files).
    """
    if split not in LOVEDA_SPLITS:
        raise ConfigError(f"split: expected one of {LOVEDA_SPLITS}, got {split!r}")
    unknown = [d for d in domains if d not in LOVEDA_DOMAINS]
    if unknown or not domains:
        raise ConfigError(f"domains: expected a non-empty subset of {LOVEDA_DOMAINS}, got {list(domains)}")
    samples: List[LoveDASample] = []
    for domain in domains:
        image_dir = Path(root) / split / domain / "images_png"
        mask_dir = Path(root) / split / domain / "masks_png"
        images = sorted(image_dir.glob("*.png"), key=lambda p: (len(p.stem), p.stem))
        if not images:
            raise DataError(f"no LoveDA images in {image_dir}")
        labelled = split != "Test"
        if labelled:
            missing = [p.name for p in images if not (mask_dir / p.name).is_file()]
            if missing:
                raise DataError(f"{len(missing)} masks missing in {mask_dir}: {few(missing)}")
        samples.extend(LoveDASample(p, mask_dir / p.name if labelled else None, split, domain) for p in images)
    return samples


def read_loveda_mask(path: Union[str, Path], reduce_zero_label: bool = True) -> np.ndarray:
    """A LoveDA mask as ``uint8 [H, W]``: raw 0..7, or 0..6 with 255 for no-data when reducing.

    Raises:
        DataError: unreadable, not single-channel, or a value above 7 (named with the file).
    """
    import mmcv

    mask = mmcv.imread(str(path), flag="unchanged")
    if mask is None:
        raise DataError(f"{path}: not a readable image")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DataError(f"{path}: expected a single-channel uint8 mask, got {mask.dtype} {mask.shape}")
    if int(mask.max()) > len(LOVEDA_CLASSES):
        raise DataError(f"{path}: mask value {int(mask.max())} outside 0..{len(LOVEDA_CLASSES)}")
    return apply_reduce_zero_label(mask, IGNORE_INDEX) if reduce_zero_label else mask


def loveda_pairs(root: Union[str, Path], split: str,
                 domains: Sequence[str] = LOVEDA_DOMAINS) -> List[Tuple[Path, Optional[Path]]]:
    """``(image, raw mask)`` pairs for :class:`rsfm_ds.data.seg.dataset.SegDataset` (with
    ``reduce_zero_label=True``); the mask is ``None`` in the Test split."""
    return [(s.image, s.mask) for s in list_loveda(root, split, domains)]
