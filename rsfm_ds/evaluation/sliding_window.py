"""Sliding-window inference, as mmseg's ``slide_inference`` (docs/segmentation_data.md).

Windows of ``crop`` pixels are placed every ``stride`` pixels along each axis; the last window is
clamped to end at the border, so the image is covered without padding (:func:`~rsfm_ds.data.tiling.window_starts`, the
same grid ``rsfm potsdam prepare`` cuts tiles with). Each window's logits are added into a
full-size buffer and divided by a count map of how many windows covered each pixel, i.e. logits
(not probabilities) are averaged where windows overlap. An image smaller than the crop is padded
at the bottom/right with ``pad_value`` (0 = the mean after normalisation) and the padding is cut
from the result.

Windows of all images in the batch are run through the model ``batch_size`` at a time. Optional
flip test-time augmentation runs every window also mirrored (``"horizontal"``, ``"vertical"``),
flips the logits back and averages them with the plain view, before window averaging.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..data.tiling import window_starts

Pair = Union[int, Tuple[int, int]]

_FLIP_DIMS = {"horizontal": (-1,), "vertical": (-2,)}


def _pair(v: Pair, name: str) -> Tuple[int, int]:
    h, w = (v, v) if isinstance(v, int) else tuple(v)
    if h < 1 or w < 1:
        raise ValueError(f"{name}: must be >= 1, got {v}")
    return int(h), int(w)


def _run_views(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, num_classes: int,
               flips: Sequence[str]) -> torch.Tensor:
    """Logits ``float32 [n, K, h, w]`` for windows ``x: [n, C, h, w]``, averaged over the flip views."""
    out = None
    for dims in [()] + [_FLIP_DIMS[f] for f in flips]:
        logits = model(x.flip(dims) if dims else x)
        if logits.dim() != 4 or logits.shape[:2] != (x.shape[0], num_classes):
            raise ValueError(f"model returned shape {tuple(logits.shape)} for windows {tuple(x.shape)}; "
                             f"expected [{x.shape[0]}, {num_classes}, h, w]")
        if logits.shape[-2:] != x.shape[-2:]:
            # Heads predict at a stride (UperNet: 4); bring logits to window resolution first.
            logits = F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits.float()
        logits = logits.flip(dims) if dims else logits
        out = logits if out is None else out + logits
    return out / (1 + len(flips))


def sliding_window_inference(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                             num_classes: int, crop: Pair = 512, stride: Pair = 384,
                             batch_size: int = 8, flips: Sequence[str] = (),
                             pad_value: float = 0.0) -> torch.Tensor:
    """Logits ``float32 [B, K, H, W]`` of ``model`` over ``images: [B, C, H, W]`` by sliding windows.

    Args:
        model: maps windows ``[n, C, ch, cw]`` to logits ``[n, K, h, w]``; ``(h, w)`` may be smaller
            (a strided head), the logits are then resized bilinearly to ``(ch, cw)``. Gradient mode
            is the caller's (wrap the call in ``torch.no_grad()`` for evaluation).
        images: normalised input batch.
        num_classes: K, checked against the model's output.
        crop: window size ``int`` or ``(h, w)``.
        stride: window step ``int`` or ``(h, w)``, at most the crop.
        batch_size: windows per model call.
        flips: subset of ``("horizontal", "vertical")`` for flip test-time augmentation.
        pad_value: fill for images smaller than the crop.

    Raises:
        ValueError: bad sizes, unknown flip name, or model output of the wrong shape.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    unknown = [f for f in flips if f not in _FLIP_DIMS]
    if unknown:
        raise ValueError(f"flips: unknown {unknown}; choose from {sorted(_FLIP_DIMS)}")
    ch, cw = _pair(crop, "crop")
    sh, sw = _pair(stride, "stride")
    b, _, h, w = images.shape
    padded = F.pad(images, (0, max(cw - w, 0), 0, max(ch - h, 0)), value=pad_value)
    hp, wp = padded.shape[-2:]
    ys, xs = window_starts(hp, ch, sh), window_starts(wp, cw, sw)

    logits = torch.zeros(b, num_classes, hp, wp, dtype=torch.float32, device=images.device)
    count = torch.zeros(1, 1, hp, wp, dtype=torch.float32, device=images.device)
    for y in ys:
        for x in xs:
            count[..., y:y + ch, x:x + cw] += 1
    windows = [(i, y, x) for i in range(b) for y in ys for x in xs]
    for k in range(0, len(windows), batch_size):
        chunk = windows[k:k + batch_size]
        batch = torch.stack([padded[i, :, y:y + ch, x:x + cw] for i, y, x in chunk])
        out = _run_views(model, batch, num_classes, flips)
        for (i, y, x), o in zip(chunk, out):
            logits[i, :, y:y + ch, x:x + cw] += o
    return (logits / count)[..., :h, :w]
