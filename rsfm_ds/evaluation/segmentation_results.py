"""From a segmenter's outputs to result files: index PNGs, one per image.

An index PNG is a single-channel ``uint8`` image of class indices in the reduced class space (the
layout ``rsfm eval seg --pred`` and :func:`rsfm_ds.data.seg.labels.read_index_png` read).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from ..data.images import write_image
from ..errors import DataError


def write_index_png(path: Union[str, Path], pred: np.ndarray) -> Path:
    """Write class indices ``[H, W]`` (values 0..255) as ``path`` with the suffix ``.png``."""
    path = Path(path).with_suffix(".png")
    if pred.ndim != 2 or (pred.size and (pred.min() < 0 or pred.max() > 255)):
        raise DataError(f"{path}: an index PNG holds [H, W] values in 0..255, got shape {pred.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, pred.astype(np.uint8))


__all__ = ["write_index_png"]
