"""JPEG bytes: size from the header, OpenCV decoding at full or reduced (DCT-scaled) resolution.

Reduced decoding (libjpeg's scaled IDCT, OpenCV's ``IMREAD_REDUCED_*`` flags) produces the image at
1/2, 1/4 or 1/8 of its size for a fraction of the work: most of the inverse DCT is skipped, which is
why a pipeline that only needs a 224 px crop of a 1024 px image can outrun a plain full decode.
"""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np

# IMREAD_REDUCED_GRAYSCALE_<f> is the bare "reduce by f" bit; OR-ing IMREAD_COLOR_RGB selects
# three-channel RGB output (OpenCV >= 4.10), which saves a BGR->RGB pass per image.
# IMREAD_IGNORE_ORIENTATION matches PIL/torchvision, which do not apply EXIF rotation either.
_RGB = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
DECODE_FLAGS = {
    1: _RGB,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2 | _RGB,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4 | _RGB,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8 | _RGB,
}

# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> Tuple[int, int]:
    """``(width, height)`` read from the JPEG header without decoding.

    Raises:
        ValueError: ``data`` is not a JPEG stream or its header ends before a start-of-frame.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no start-of-image marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"malformed JPEG header at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no frame header came first
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            if width == 0 or height == 0:
                raise ValueError(f"JPEG header declares an empty image ({width}x{height})")
            return width, height
        i += 2 + length
    raise ValueError("JPEG header ends before its start-of-frame marker")


def decode_jpeg(data: bytes, reduce: int = 1) -> Optional[np.ndarray]:
    """Decode to RGB ``uint8 [ceil(H/reduce), ceil(W/reduce), 3]``; ``None`` if OpenCV cannot.

    Args:
        data: the JPEG file bytes.
        reduce: 1, 2, 4 or 8; decode at that fraction of the size (libjpeg scaled IDCT).
    """
    return cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_FLAGS[reduce])


def reduction_for(crop_width: int, crop_height: int, out_size: int) -> int:
    """Largest reduction (1, 2, 4, 8) that still leaves the crop at least ``out_size`` px a side.

    Decoding any smaller would make the final resize upsample, i.e. lose detail a full decode keeps.
    """
    side = min(crop_width, crop_height)
    for factor in (8, 4, 2):
        if side >= factor * out_size:
            return factor
    return 1
