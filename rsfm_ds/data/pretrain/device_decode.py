"""JPEG crops decoded where the model runs (``data.decode_device: cuda``).

For small presets a GPU step outruns the CPU decoders of a rank; nvJPEG through
``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a whole batch in one call. The
DataLoader workers then only read the shard bytes and draw the augmentation: the same
RandomResizedCrop box and flip, from the same per-sample generator, as the CPU path
(:meth:`~.transforms.CropFlip.draw`), on the size the shard's record declares. The batch carries
the compressed bytes (one ``uint8`` tensor and offsets, so a batch crosses the process boundary as
two shared-memory blocks, not one per image) and the boxes; :func:`decode_crops` makes the
``uint8 [B, 3, S, S]`` pixels on the device.

What differs from the CPU path (transforms.py): nvJPEG decodes at full size (no reduced IDCT; the
GPU does not need it) and the resize is torch's antialiased bilinear
(``torchvision.transforms.v2.functional.resized_crop``, as torchvision's RandomResizedCrop with
``antialias=True``) instead of OpenCV's area / bilinear filters, so pixels agree with the CPU path
to resampling differences, not bit for bit; the boxes and flips are identical. A stream that the
worker's header check accepts but the decoder rejects is replaced by a mean-grey image and
logged (the CPU path would skip it): the batch was already counted in the loader's statistics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Sequence

import torch

log = logging.getLogger(__name__)

CROP_FIELDS = ("top", "left", "height", "width", "flip", "declared_width", "declared_height")


@dataclass
class EncodedCrops:
    """A batch of JPEG streams and the crop each one gets, as the workers hand them over."""

    data: torch.Tensor
    """``uint8 [total_bytes]``: the streams, concatenated."""
    offsets: torch.Tensor
    """``int64 [B + 1]``: stream ``i`` is ``data[offsets[i]:offsets[i + 1]]``."""
    crops: torch.Tensor
    """``int64 [B, 7]``, columns :data:`CROP_FIELDS`: the box in pixels of the declared image size,
    1 to flip horizontally, and the declared ``(width, height)``."""

    def __len__(self) -> int:
        return self.crops.shape[0]

    def pin_memory(self) -> "EncodedCrops":
        return EncodedCrops(self.data.pin_memory(), self.offsets, self.crops)


def pack(streams: Sequence[bytes], crops: Sequence[Sequence[int]]) -> EncodedCrops:
    """:class:`EncodedCrops` of ``streams`` with one ``CROP_FIELDS`` row each."""
    lengths = torch.tensor([len(s) for s in streams], dtype=torch.int64)
    offsets = torch.zeros(len(streams) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    data = torch.frombuffer(bytearray(b"".join(streams)), dtype=torch.uint8) if streams else \
        torch.empty(0, dtype=torch.uint8)
    return EncodedCrops(data, offsets, torch.tensor(list(crops), dtype=torch.int64).view(-1, len(CROP_FIELDS)))


def decode_crops(batch: EncodedCrops, size: int, mean_rgb: Sequence[float],
                 device: torch.device) -> torch.Tensor:
    """``uint8 [B, 3, size, size]`` on ``device``: each stream decoded there (one batched call),
    cropped to its box mapped onto the decoded size, resized with antialiasing, flipped as drawn.

    ``mean_rgb`` (in [0, 1]) fills an image the decoder rejects.
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import resized_crop

    device = torch.device(device)
    bounds = batch.offsets.tolist()
    streams = [batch.data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    try:
        images = decode_jpeg(streams, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        images = [_decode_one(s, device) for s in streams]  # find the bad stream(s); keep the rest
    out = torch.empty((len(streams), 3, size, size), dtype=torch.uint8, device=device)
    grey = torch.tensor([round(255 * m) for m in mean_rgb], dtype=torch.uint8, device=device).view(3, 1, 1)
    # Decoded sizes differ per image, so the crops are one small kernel each: the decode, not this,
    # is the work.
    for i, (image, row) in enumerate(zip(images, batch.crops.tolist())):
        if image is None:
            out[i] = grey
            continue
        top, left, height, width, flip, declared_w, declared_h = row
        # As transforms.CropFlip.apply_into: map the declared-size box onto the decoded image,
        # clamped, so a record that disagrees with the stream can never index outside it.
        h, w = image.shape[-2:]
        sy, sx = h / declared_h, w / declared_w
        y0, x0 = min(int(top * sy), h - 1), min(int(left * sx), w - 1)
        y1 = max(y0 + 1, min(int(round((top + height) * sy)), h))
        x1 = max(x0 + 1, min(int(round((left + width) * sx)), w))
        crop = resized_crop(image, y0, x0, y1 - y0, x1 - x0, [size, size], antialias=True)
        out[i] = crop.flip(-1) if flip else crop
    return out


def _decode_one(stream: torch.Tensor, device: torch.device):
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(stream, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as e:
        log.warning("a JPEG stream failed to decode on %s and became a mean-grey image: %s", device, e)
        return None


def check_device_decoding(device: str) -> List[str]:
    """Why ``data.decode_device=device`` cannot run here (empty when it can)."""
    if device == "cpu":
        return []
    if not torch.cuda.is_available():
        return ["no CUDA device is visible to torch"]
    return []
