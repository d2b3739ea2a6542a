"""Segmentation labels: reading index masks and mmseg's reduce-zero-label rule.

An index mask is a single-channel ``uint8`` PNG whose pixel values are class indices, with
``ignore_index`` (255 by default) for pixels that are neither trained on nor scored. LoveDA stores
"no data" as 0 and its classes as 1..7; mmseg's ``reduce_zero_label`` turns that into the usual
layout (:func:`apply_reduce_zero_label`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar, Union

import numpy as np
import torch

from ...errors import DataError

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)


def apply_reduce_zero_label(label: ArrayLike, ignore_index: int = 255) -> ArrayLike:
    """mmseg's reduce-zero-label: ``0 -> ignore_index``, ``ignore_index`` stays, ``v -> v - 1``.

    Works on numpy arrays and torch tensors of any integer dtype and shape; returns a new array of
    the same type and dtype.
    """
    out = label - 1
    out[(label == 0) | (label == ignore_index)] = ignore_index
    return out


def read_index_png(path: Union[str, Path]) -> np.ndarray:
    """A single-channel index image as ``[H, W]`` in its stored dtype.

    Raises:
        DataError: naming the file, when it cannot be read or has more than one channel.
    """
    import mmcv

    img = mmcv.imread(str(path), flag="unchanged")
    if img is None:
        raise DataError(f"{path}: not a readable image")
    if img.ndim != 2:
        raise DataError(f"{path}: expected a single-channel index image, got shape {img.shape}")
    return img


__all__ = ["apply_reduce_zero_label", "read_index_png"]
