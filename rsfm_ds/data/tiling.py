"""Window offsets along an axis: the one tiling rule that crops, splits and sliding windows share.

Potsdam crops (:func:`rsfm_ds.data.seg.potsdam.crop_boxes`), DOTA patches
(:func:`rsfm_ds.data.det.split.sliding_windows`) and sliding-window inference
(:func:`rsfm_ds.evaluation.sliding_window.sliding_window_inference`) all step a window of ``crop``
pixels by ``stride`` and clamp the last window to end at the border, as mmseg's ``slide_inference``
and the DOTA devkit's splitter do, so every pixel is covered without padding.
"""
from __future__ import annotations

import math
from typing import List

from ..errors import ConfigError


def window_starts(length: int, crop: int, stride: int) -> List[int]:
    """Start offsets of windows of size ``crop`` every ``stride`` along an axis of ``length`` pixels.

    ``0, stride, 2 * stride, ...``; the last window is clamped to ``length - crop`` so it ends at
    the border. ``ceil((length - crop) / stride) + 1`` windows when ``length > crop``, else one
    window at 0 (larger than the axis: the caller pads). E.g. 6000 px, crop 512, stride 256: 23.

    Raises:
        ConfigError: ``crop`` or ``stride`` < 1, or ``stride > crop`` (windows would leave gaps).
    """
    if crop < 1 or stride < 1:
        raise ConfigError(f"crop and stride must be >= 1, got crop={crop}, stride={stride}")
    if stride > crop:
        raise ConfigError(f"stride {stride} > crop {crop}: windows would leave pixels uncovered")
    if length <= crop:
        return [0]
    n = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(n)]


__all__ = ["window_starts"]
