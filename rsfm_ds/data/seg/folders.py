"""Own-class segmentation data: image and mask folders of any raster format (``data.dataset: folders``).

Layout (mmseg's ``img_dir`` / ``ann_dir``, as :func:`~rsfm_ds.data.seg.dataset.mmseg_pairs` reads
it for PNGs)::

    ROOT/img_dir/<split>/<stem>.<png|jpg|tif|...>   images: 8-bit RGB, or multi-band rasters
    ROOT/ann_dir/<split>/<stem>.<png|tif|tiff>      masks of the same stem

Masks are class-index images (one band, 0..num_classes-1, ``ignore_index`` unscored), or, with a
palette, RGB colour masks converted to indices: the pixel whose colour is ``palette[k]`` is class
``k``, as mmseg's palette-based datasets convert theirs (``tools/dataset_converters/potsdam.py``
maps each colour of its ``color_map``). A colour outside the palette is an error naming the file,
the colour and a pixel holding it: a colour the palette lacks means a wrong palette or a damaged
mask, and training on a guess would hide it. Areas to leave unscored take ``ignore_index`` in an
index mask (a colour mask cannot say "unscored": add such a colour as a class, or convert).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import DataError, few
from ..raster import RASTER_SUFFIXES, read_raster

PathLike = Union[str, Path]
MASK_SUFFIXES = (".png", ".tif", ".tiff")
"""Mask files: PNG (index or, with a palette, colour) or one-band (three-band colour) TIFF."""


def folder_pairs(root: PathLike, split: str, img_dir: str = "img_dir",
                 ann_dir: str = "ann_dir") -> List[Tuple[Path, Path]]:
    """``(image, mask)`` pairs of ``root/img_dir/split`` (any raster suffix) and the mask of the
    same stem in ``root/ann_dir/split``, sorted by image name.

    Raises:
        DataError: no images, an image without a mask, or a stem with two masks (named).
    """
    image_dir, mask_dir = Path(root) / img_dir / split, Path(root) / ann_dir / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: no such folder (expected {img_dir}/<split>/ images under data.root)")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(RASTER_SUFFIXES)})")
    masks = {}
    if mask_dir.is_dir():
        for p in sorted(mask_dir.iterdir()):
            if p.suffix.lower() in MASK_SUFFIXES:
                if p.stem in masks:
                    raise DataError(f"{mask_dir}: two masks for {p.stem}: {masks[p.stem].name} and {p.name}")
                masks[p.stem] = p
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DataError(f"{mask_dir}: no mask ({', '.join(MASK_SUFFIXES)}) for {len(missing)} images: {few(missing)}")
    return [(p, masks[p.stem]) for p in images]


def colour_to_index(mask: np.ndarray, palette: Sequence[Sequence[int]], path: PathLike) -> np.ndarray:
    """``uint8 [H, W]`` class indices of an RGB colour mask ``[H, W, 3]``: ``palette[k]`` -> ``k``.

    Raises:
        DataError: a colour that is not in the palette (the file, the colour and a pixel named).
    """
    if mask.ndim != 3 or mask.shape[2] != 3:
        raise DataError(f"{path}: a palette needs RGB colour masks, got shape {mask.shape}")
    if mask.dtype != np.uint8 and mask.size and (mask.min() < 0 or mask.max() > 255):
        # The 8-bit colour code below would let a 16-bit value alias another colour.
        raise DataError(f"{path}: a colour mask holds 8-bit colours, got values {mask.min()}..{mask.max()}")
    pal = np.asarray(palette, dtype=np.int64)
    # One integer per colour, so that the lookup is one searchsorted over the sorted palette codes.
    codes = (mask[..., 0].astype(np.int64) << 16) | (mask[..., 1].astype(np.int64) << 8) | mask[..., 2].astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_codes)
    sorted_codes = pal_codes[order]
    pos = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
    found = sorted_codes[pos] == codes
    if not found.all():
        row, col = np.argwhere(~found)[0]
        colour = tuple(int(v) for v in mask[row, col])
        raise DataError(f"{path}: colour {list(colour)} at pixel (x={col}, y={row}) is not in data.palette "
                        f"({int((~found).sum())} pixels)")
    return order[pos].astype(np.uint8)


def read_mask(path: PathLike, palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """``uint8 [H, W]`` class indices of a mask file (an index mask, or a colour mask with ``palette``).

    Raises:
        DataError: an unreadable file, an index mask of several bands, or values above 255.
    """
    path = Path(path)
    if palette is not None:
        return colour_to_index(np.ascontiguousarray(read_raster(path).transpose(1, 2, 0)), palette, path)
    if path.suffix.lower() in (".png",):
        import mmcv

        mask = mmcv.imread(str(path), flag="unchanged")
        if mask is None:
            raise DataError(f"{path}: not a readable image")
        if mask.ndim != 2:
            raise DataError(f"{path}: expected a single-band index mask, got shape {mask.shape} (set data.palette "
                            f"for colour masks)")
    else:
        data = read_raster(path)
        if data.shape[0] != 1:
            raise DataError(f"{path}: expected a single-band index mask, got {data.shape[0]} bands (set data.palette "
                            f"for colour masks)")
        mask = data[0]
    if mask.dtype != np.uint8:
        if np.issubdtype(mask.dtype, np.floating) and not np.array_equal(mask, np.round(mask)):
            raise DataError(f"{path}: an index mask holds whole numbers, got fractional values")
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DataError(f"{path}: index mask values must be in 0..255, got {mask.min()}..{mask.max()}")
        mask = mask.astype(np.uint8)
    return mask


__all__ = ["folder_pairs", "colour_to_index", "read_mask", "MASK_SUFFIXES"]
