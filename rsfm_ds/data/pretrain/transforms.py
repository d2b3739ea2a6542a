"""MAE pretraining augmentation in OpenCV/numpy: RandomResizedCrop, horizontal flip, normalisation.

The crop is chosen on the *declared* image size before decoding, so the decoder can use the
largest reduced-decoding factor that keeps the crop at least ``size`` pixels a side (see
:func:`rsfm_ds.data.jpeg.reduction_for`). The resize writes into a reused ``uint8 [S, S, 3]``
buffer, copied into the batch's ``uint8 [B, 3, S, S]`` slot; :func:`normalize_batch` converts the
batch to float in one vectorised pass where it is consumed. Sending uint8 from the DataLoader
workers instead of float costs 4x less shared memory: on this 2-core box a fresh float batch in
shared memory cost ~0.6 ms per image in page faults alone, more than the resize.

Raster samples (``.npy`` of ``rsfm shards images``: ``[C, H, W]``, any band count, any numeric
type) take :meth:`CropFlip.apply_array_into`: the same crop and flip draws, resized band-last by
OpenCV in the stored type (bilinear handles any channel count; the area filter at most 4, so it
runs on groups of 4 bands), and :func:`normalize_batch` with ``unit=1`` normalises per band in raw
units, ``(raw - mean) / std``.

The crop sampling reproduces ``torchvision.transforms.RandomResizedCrop.get_params`` (10 tries of a
random area and log-uniform aspect ratio, then a centred fallback), so the augmentation
distribution matches the pipeline MAE users run with torchvision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ..jpeg import decode_jpeg, jpeg_size, reduction_for


@dataclass(frozen=True)
class Crop:
    """A crop box in pixels of the full-resolution image."""

    top: int
    left: int
    height: int
    width: int


def sample_resized_crop(rng: np.random.Generator, width: int, height: int,
                        scale: Tuple[float, float], ratio: Tuple[float, float]) -> Crop:
    """torchvision's RandomResizedCrop box for a ``width x height`` image, drawn from ``rng``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return Crop(top, left, h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return Crop((height - h) // 2, (width - w) // 2, h, w)


@dataclass(frozen=True)
class CropFlip:
    """Parameters of RandomResizedCrop + horizontal flip, applied by :meth:`apply_into`."""

    size: int
    """Output side in pixels."""
    scale: Tuple[float, float] = (0.2, 1.0)
    """Range of the crop area as a fraction of the image area."""
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    """Range of the crop aspect ratio (width / height)."""
    hflip: bool = True
    """Flip horizontally with probability 1/2."""

    def draw(self, rng: np.random.Generator, width: int, height: int) -> Tuple[Crop, bool]:
        """The crop box (pixels of a ``width x height`` image) and whether to flip, drawn from
        ``rng`` in this order; every path (OpenCV, raster, on-device decoding) draws through here."""
        crop = sample_resized_crop(rng, width, height, self.scale, self.ratio)
        return crop, self.hflip and rng.random() < 0.5

    def apply_into(self, data: bytes, rng: np.random.Generator, out: np.ndarray,
                   image_size: Optional[Tuple[int, int]] = None) -> bool:
        """Decode ``data``, crop, resize and maybe flip it into ``out`` (``uint8 [S, S, 3]`` RGB).

        Args:
            data: JPEG bytes.
            rng: the sample's random generator (crop box, then flip).
            out: C-contiguous destination view, e.g. one slot of a batch array.
            image_size: ``(width, height)`` if known (a shard's json record), else read from the
                JPEG header.

        Returns:
            False if the bytes are not a decodable JPEG (``out`` is then left unspecified).
        """
        try:
            width, height = image_size or jpeg_size(data)
        except ValueError:
            return False
        crop, flip = self.draw(rng, width, height)
        reduce = reduction_for(crop.width, crop.height, self.size)
        image = decode_jpeg(data, reduce)
        if image is None:
            return False
        # The decoder rounds reduced sizes up; map the box with the actual ratio, clamped, so a
        # record that disagrees with the stream can never index outside the image.
        sy, sx = image.shape[0] / height, image.shape[1] / width
        y0 = min(int(crop.top * sy), image.shape[0] - 1)
        x0 = min(int(crop.left * sx), image.shape[1] - 1)
        y1 = max(y0 + 1, min(int(round((crop.top + crop.height) * sy)), image.shape[0]))
        x1 = max(x0 + 1, min(int(round((crop.left + crop.width) * sx)), image.shape[1]))
        region = image[y0:y1, x0:x1]
        # After reduced decoding the remaining shrink is < 2x, where bilinear does not alias;
        # INTER_AREA (a box filter) is only needed when the 8x cap leaves a larger one.
        shrink = min(y1 - y0, x1 - x0) / self.size
        interp = cv2.INTER_AREA if shrink > 2 else cv2.INTER_LINEAR
        cv2.resize(region, (self.size, self.size), dst=out, interpolation=interp)
        if flip:
            cv2.flip(out, 1, dst=out)
        return True

    def apply_array_into(self, pixels: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None:
        """Crop, resize and maybe flip ``pixels [C, H, W]`` into ``out [C, S, S]``.

        The crop and flip are drawn from ``rng`` exactly as :meth:`apply_into` draws them; the
        resize is bilinear, or the area filter when it shrinks more than 2x (where bilinear
        aliases). ``out``'s dtype must be :func:`batch_dtype` of ``pixels``'s.
        """
        _, height, width = pixels.shape
        crop, flip = self.draw(rng, width, height)
        region = pixels[:, crop.top:crop.top + crop.height, crop.left:crop.left + crop.width]
        if region.dtype != out.dtype:
            region = region.astype(out.dtype)
        shrink = min(crop.height, crop.width) / self.size
        resize_bands(region, self.size, cv2.INTER_AREA if shrink > 2 else cv2.INTER_LINEAR, out)
        if flip:
            out[...] = out[:, :, ::-1].copy()


# Types OpenCV resizes and torch holds; other types are converted to float32 for the batch.
RESIZE_DTYPES = ("uint8", "uint16", "int16", "float32", "float64")
_AREA_MAX_CHANNELS = 4  # cv2.resize's INTER_AREA asserts cn <= 4


def batch_dtype(dtype: str) -> np.dtype:
    """The numpy type raster samples of ``dtype`` are cropped and batched in."""
    return np.dtype(dtype if dtype in RESIZE_DTYPES else "float32")


def resize_bands(region: np.ndarray, size: int, interp: int, out: np.ndarray) -> None:
    """Resize ``region [C, h, w]`` into ``out [C, size, size]`` (same dtype), all bands at once.

    OpenCV resizes interleaved ``[h, w, C]`` images; bilinear takes any ``C``, the area filter at
    most 4, so the area filter runs on groups of 4 bands.
    """
    hwc = np.ascontiguousarray(region.transpose(1, 2, 0))
    step = hwc.shape[2] if interp != cv2.INTER_AREA else _AREA_MAX_CHANNELS
    for c0 in range(0, hwc.shape[2], step):
        part = cv2.resize(np.ascontiguousarray(hwc[:, :, c0:c0 + step]), (size, size), interpolation=interp)
        out[c0:c0 + step] = part.reshape(size, size, -1).transpose(2, 0, 1)


def hwc_to_chw(image: np.ndarray, out: np.ndarray) -> None:
    """Copy ``uint8 [S, S, 3]`` into ``out`` ``[3, S, S]`` (plane by plane: the fastest way here)."""
    for c, plane in enumerate(cv2.split(image)):
        out[c] = plane


def normalize_batch(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    unit: float = 255.0) -> torch.Tensor:
    """``[B, C, S, S]`` (any numeric type) -> ``float32 [B, C, S, S]`` with ``(x / unit - mean) / std``
    per channel: ``unit=255`` with ImageNet's [0, 1] statistics for 8-bit RGB, ``unit=1`` with raw
    per-band statistics for raster samples.

    One vectorised conversion and one in-place affine op over the whole batch, on ``pixels``'s
    device: moving uint8 pixels to a GPU first and normalising there moves 4x fewer bytes. Float
    pixels that are NaN or infinite (a NaN nodata kept inside a window) become 0, the band mean,
    instead of making the loss non-finite.
    """
    c = pixels.shape[1]
    scale = torch.tensor([1.0 / (unit * s) for s in std], device=pixels.device).view(1, c, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=pixels.device).view(1, c, 1, 1)
    out = pixels.to(torch.float32).mul_(scale).add_(shift)
    if pixels.is_floating_point():
        torch.nan_to_num_(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out
