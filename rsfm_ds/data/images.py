"""Image reading and the normalisation every task shares.

Inputs are normalised with the ImageNet mean and standard deviation, as MAE pretraining and the
mmrotate / mmseg fine-tuning recipes do, so a pretrained backbone sees the same statistics
downstream.
"""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Sequence, Tuple, Union

import cv2
import numpy as np

from ..errors import DataError

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


def read_bgr(path: Union[str, Path]) -> np.ndarray:
    """``uint8 [H, W, 3]`` in OpenCV's BGR order, of any image OpenCV reads (PNG, JPEG, TIFF,
    BMP; grey and 4-channel files are converted).

    Raises:
        DataError: naming the file, when it is missing or OpenCV cannot decode it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: OpenCV could not read the image")
    return img


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB (:func:`read_bgr`, channels reversed)."""
    return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)


def write_image(path: Union[str, Path], image: np.ndarray, params: Sequence[int] = ()) -> Path:
    """Write ``image`` (OpenCV's channel order) to ``path``, the format from its suffix.

    OpenCV reports a failed write (full disk, missing folder, unknown suffix) only as ``False``;
    this raises an ``OSError`` naming the file instead, so nothing is silently left unwritten.
    """
    path = Path(path)
    if not cv2.imwrite(str(path), image, list(params)):
        raise OSError(errno.EIO, "OpenCV could not write the image (full disk, missing folder or "
                      "unsupported format)", str(path))
    return path


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "read_bgr", "read_rgb", "write_image"]
