"""A segmentation Dataset over (image, index-label) PNG pairs, with mmseg's training transforms.

Pairs come from the mmseg layout (``ROOT/img_dir/<split>/<name>.png`` with
``ROOT/ann_dir/<split>/<name>.png``, as ``rsfm potsdam prepare`` writes; :func:`mmseg_pairs`) or from
a dataset reader (LoveDA: :func:`rsfm_ds.data.seg.loveda.loveda_pairs`, with ``reduce_zero_label``).

Training transforms, in the order of mmseg's ``train_pipeline`` (``configs/_base_/datasets/potsdam.py``,
``loveda.py``): optional random resize (mmcv's ``RandomResize`` with ``ratio_range`` and
``keep_ratio=True``, ``mmcv/transforms/processing.py``: :func:`random_resize_size`), random crop
of ``crop_size`` (with mmseg's ``cat_max_ratio``: up to 10 draws until no single class covers
``cat_max_ratio`` or more of the crop's scored pixels), random horizontal / vertical flip,
optional photometric distortion (mmseg's ``PhotoMetricDistortion``: brightness, contrast,
saturation, hue, each with probability 1/2; defined through HSV on 8-bit RGB, so images of
other band counts or pixel types skip it, as a per-band hue or saturation has no meaning),
normalisation per band (:class:`~rsfm_ds.data.bands.InputBands`: ImageNet's statistics x 255 for
8-bit RGB, the run's per-band statistics otherwise), and padding to ``crop_size`` (image 0,
label ``ignore_index``) where the image is smaller. Evaluation (``train=False``) returns the whole
normalised image and its label; the caller slides windows (:mod:`rsfm_ds.evaluation.sliding_window`).

Randomness is a function of ``(seed, epoch, index)`` only (call :meth:`SegDataset.set_epoch`), so
augmentations do not depend on DataLoader workers and a resumed run sees the same crops.

Data-efficiency subsets: :func:`rsfm_ds.data.subsets.select_fraction`, keyed by image file name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import ConfigError, DataError, few
from .folders import read_mask
from .labels import apply_reduce_zero_label
from ..bands import InputBands
from ..subsets import select_fraction

Pair = Tuple[Path, Optional[Path]]


def mmseg_pairs(root: Union[str, Path], split: str, img_dir: str = "img_dir", ann_dir: str = "ann_dir",
                suffix: str = ".png") -> List[Tuple[Path, Path]]:
    """``(image, label)`` pairs of ``root/img_dir/split/*suffix`` and the same names in ``ann_dir``.

    Raises:
        DataError: no images, or labels missing (named).
    """
    image_dir, label_dir = Path(root) / img_dir / split, Path(root) / ann_dir / split
    images = sorted(image_dir.glob(f"*{suffix}"))
    if not images:
        raise DataError(f"no *{suffix} images in {image_dir}")
    missing = [p.name for p in images if not (label_dir / p.name).is_file()]
    if missing:
        raise DataError(f"{len(missing)} labels missing in {label_dir}: {few(missing)}")
    return [(p, label_dir / p.name) for p in images]


def rescale_size(width: int, height: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """mmcv's ``rescale_size`` for a tuple scale (``mmcv/image/geometric.py``): ``(new_w, new_h)``.

    The largest size of the same aspect ratio whose long side fits ``max(scale)`` and whose short
    side fits ``min(scale)``: factor ``min(max(scale) / max(h, w), min(scale) / min(h, w))``, each
    side rounded half up (``int(side * factor + 0.5)``).
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def random_resize_size(width: int, height: int, scale: Tuple[int, int], ratio_range: Tuple[float, float],
                       rng: np.random.Generator) -> Tuple[int, int]:
    """mmcv's ``RandomResize(scale, ratio_range, keep_ratio=True)`` target ``(new_w, new_h)``.

    A ratio is drawn uniformly from ``ratio_range`` (one draw of ``rng``), the scale becomes
    ``(int(scale[0] * ratio), int(scale[1] * ratio))`` (``_random_sample_ratio``) and the image is
    rescaled to fit it keeping its aspect ratio (:func:`rescale_size`).
    """
    low, high = ratio_range
    ratio = rng.random() * (high - low) + low
    return rescale_size(width, height, (int(scale[0] * ratio), int(scale[1] * ratio)))


def photometric_distortion(img: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast: Tuple[float, float] = (0.5, 1.5), saturation: Tuple[float, float] = (0.5, 1.5),
                           hue_delta: int = 18) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` on ``uint8 [H, W, 3]`` RGB; returns a new uint8 image."""
    out = img.astype(np.float32)
    if rng.random() < 0.5:
        out += rng.uniform(-brightness_delta, brightness_delta)
    contrast_first = rng.random() < 0.5
    contrast_alpha = rng.uniform(*contrast) if rng.random() < 0.5 else None
    if contrast_first and contrast_alpha is not None:
        out *= contrast_alpha
    hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] *= rng.uniform(*saturation)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-hue_delta, hue_delta + 1))) % 180  # OpenCV hue: 0..179
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and contrast_alpha is not None:
        out *= contrast_alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def check_resize(scale: Optional[Tuple[int, int]], ratio_range: Tuple[float, float]) -> None:
    """Validate the ``RandomResize`` options (``ConfigError`` naming ``resize_scale`` or
    ``resize_ratio_range``)."""
    if len(ratio_range) != 2 or not 0.0 < ratio_range[0] <= ratio_range[1]:
        raise ConfigError(f"resize_ratio_range: need (low, high) with 0 < low <= high, got {tuple(ratio_range)}")
    if scale is None:
        return
    if len(scale) != 2 or any(int(s) != s or s < 1 for s in scale):
        raise ConfigError(f"resize_scale: need two positive integers (width, height) or null, got {tuple(scale)}")
    if int(min(scale) * ratio_range[0]) < 1:
        raise ConfigError(f"resize_scale: {tuple(scale)} at the lowest ratio {ratio_range[0]} of "
                          f"resize_ratio_range leaves no pixel")


def _read_rgb(path: Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB through mmcv (mmseg's ``LoadImageFromFile``)."""
    import mmcv

    image = mmcv.imread(str(path), flag="color", channel_order="rgb")
    if image is None:
        raise DataError(f"{path}: not a readable image")
    return image


class SegDataset(Dataset):
    """Images and index labels for training (randomly resized crops) or evaluation (whole images).

    Items: ``{"image": float32 [C, H, W] normalised, "label": int64 [H, W] (ignore_index unscored),
    "name": str}``; training crops have ``H = W = crop_size``. Pairs without a label (LoveDA Test)
    give no ``"label"``.

    Args:
        pairs: ``(image path, label path or None)``; images are 8-bit RGB files or any raster
            (:class:`~rsfm_ds.data.bands.InputBands`), labels single-band index masks (PNG or
            TIFF) or, with ``palette``, RGB colour masks.
        train: random resize / crop / flips / photometric; otherwise whole images, no augmentation.
        crop_size: training crop side.
        resize_scale: mmcv ``RandomResize`` scale ``(w, h)`` before the crop (mmseg: Potsdam (512, 512),
            LoveDA (2048, 512)); ``None`` keeps the image size. Images are resized bilinearly, labels
            by nearest neighbour (values stay class indices).
        resize_ratio_range: ``(low, high)`` range of the random ratio applied to ``resize_scale``
            (mmseg: (0.5, 2.0)).
        cat_max_ratio: mmseg's RandomCrop option (e.g. 0.75); ``None`` or 1.0 disables it.
        hflip_prob, vflip_prob: flip probabilities in training.
        photometric: apply :func:`photometric_distortion` in training (3-band 8-bit images only).
        inputs: bands read, their normalisation and the backbone's channel count (8-bit RGB with
            ImageNet's statistics by default); the first image is checked at construction.
        palette: RGB colour of each class; masks are then colour masks converted to indices
            (:func:`~rsfm_ds.data.seg.folders.colour_to_index`).
        ignore_index: label value that is not scored; also the label padding.
        reduce_zero_label: apply mmseg's reduce-zero-label to labels (LoveDA raw masks).
        num_classes: the classes a label may name; with it, any other value but ``ignore_index``
            is an error naming the file (instead of an index error deep inside the loss).
        fraction: keep this fraction of ``pairs`` (:func:`select_fraction`, keyed by image file name).
        fraction_seed: seed of the subset (fixed per experiment, independent of ``seed``).
        seed: augmentation seed.
    """

    def __init__(self, pairs: Sequence[Pair], train: bool = True, crop_size: int = 512,
                 resize_scale: Optional[Tuple[int, int]] = None, resize_ratio_range: Tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: Optional[float] = None, hflip_prob: float = 0.5, vflip_prob: float = 0.0,
                 photometric: bool = False, inputs: InputBands = InputBands(), ignore_index: int = 255,
                 reduce_zero_label: bool = False, fraction: float = 1.0, fraction_seed: int = 0, seed: int = 0,
                 num_classes: Optional[int] = None, palette: Optional[Sequence[Sequence[int]]] = None):
        if crop_size < 1:
            raise ConfigError(f"crop_size: must be >= 1, got {crop_size}")
        check_resize(resize_scale, resize_ratio_range)
        if cat_max_ratio is not None and not 0.0 < cat_max_ratio <= 1.0:
            raise ConfigError(f"cat_max_ratio: must be in (0, 1] or None, got {cat_max_ratio}")
        if not 0 <= ignore_index <= 255:
            raise ConfigError(f"ignore_index: labels are uint8 PNGs, need 0..255, got {ignore_index}")
        for name, p in (("hflip_prob", hflip_prob), ("vflip_prob", vflip_prob)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {p}")
        pairs = [(Path(i), None if l is None else Path(l)) for i, l in pairs]
        keep = select_fraction([i.name for i, _ in pairs], fraction, fraction_seed)
        self.pairs: List[Pair] = [pairs[k] for k in keep]
        self.train = train
        self.crop_size = crop_size
        self.resize_scale = None if resize_scale is None else (int(resize_scale[0]), int(resize_scale[1]))
        self.resize_ratio_range = (float(resize_ratio_range[0]), float(resize_ratio_range[1]))
        self.cat_max_ratio = cat_max_ratio
        self.hflip_prob, self.vflip_prob = hflip_prob, vflip_prob
        self.photometric = photometric
        self.inputs = inputs
        self.palette = None if palette is None else tuple(tuple(int(v) for v in c) for c in palette)
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.num_classes = num_classes
        self.seed = seed
        self.epoch = 0
        if self.pairs:  # a band count that does not fit fails here, before any model is built
            self.inputs.check_file(self.pairs[0][0])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Raw ``[H, W, C]`` image in the file's data type (``uint8`` RGB for 8-bit RGB files) and
        ``uint8 [H, W]`` label (reduced if configured)."""
        image_path, label_path = self.pairs[index]
        image = self.inputs.read(image_path, _read_rgb)
        if label_path is None:
            return image, None
        label = read_mask(label_path, self.palette)
        if label.shape != image.shape[:2]:
            raise DataError(f"{label_path} is {label.shape[1]}x{label.shape[0]} but {image_path} is "
                            f"{image.shape[1]}x{image.shape[0]}")
        if self.reduce_zero_label:
            label = apply_reduce_zero_label(label, self.ignore_index)
        if self.num_classes is not None:
            bad = (label >= self.num_classes) & (label != self.ignore_index)
            if bad.any():
                value = int(label[bad].flat[0])
                stored = (f"value {value + 1} (class {value} after reduce-zero-label)" if self.reduce_zero_label
                          else f"value {value}")
                raise DataError(f"{label_path}: label {stored} is neither one of the {self.num_classes} "
                                f"classes (0..{self.num_classes - 1}) nor the ignore index {self.ignore_index}")
        return image, label

    def _random_resize(self, rng: np.random.Generator, image: np.ndarray,
                       label: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """mmcv's ``Resize`` with a ``RandomResize`` size: bilinear image, nearest-neighbour label
        (mmcv's ``imresize`` with its default cv2 backend is ``cv2.resize``)."""
        size = random_resize_size(image.shape[1], image.shape[0], self.resize_scale, self.resize_ratio_range, rng)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if label is not None:
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        return image, label

    def _crop_box(self, rng: np.random.Generator, label: Optional[np.ndarray], h: int, w: int) -> Tuple[int, int]:
        """Top-left of a random crop; with ``cat_max_ratio``, mmseg's 10 tries for a mixed crop."""
        ch, cw = min(self.crop_size, h), min(self.crop_size, w)

        def draw() -> Tuple[int, int]:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))

        y, x = draw()
        if label is None or self.cat_max_ratio is None or self.cat_max_ratio >= 1.0:
            return y, x
        for _ in range(10):
            counts = np.bincount(label[y:y + ch, x:x + cw].ravel(), minlength=256)
            counts[self.ignore_index] = 0
            scored = counts[counts > 0]
            if len(scored) > 1 and scored.max() / scored.sum() < self.cat_max_ratio:
                break
            y, x = draw()
        return y, x

    def __getitem__(self, index: int) -> Dict[str, object]:
        image, label = self.load(index)
        name = self.pairs[index][0].name
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.resize_scale is not None:  # drawn first, as RandomResize comes first in mmseg's pipeline
                image, label = self._random_resize(rng, image, label)
            h, w = image.shape[:2]
            y, x = self._crop_box(rng, label, h, w)
            s = self.crop_size
            image = image[y:y + s, x:x + s]
            label = None if label is None else label[y:y + s, x:x + s]
            for prob, axis in ((self.hflip_prob, 1), (self.vflip_prob, 0)):
                if rng.random() < prob:
                    image = np.flip(image, axis)
                    label = None if label is None else np.flip(label, axis)
            if self.photometric and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
                image = photometric_distortion(np.ascontiguousarray(image), rng)
        normalised = self.inputs.normalize(image)
        item: Dict[str, object] = {"name": name}
        if self.train:
            # Pad images smaller than the crop: 0 is the mean after normalisation, labels are ignored.
            ph, pw = self.crop_size - normalised.shape[0], self.crop_size - normalised.shape[1]
            normalised = np.pad(normalised, ((0, ph), (0, pw), (0, 0)))
            if label is not None:
                label = np.pad(label, ((0, ph), (0, pw)), constant_values=self.ignore_index)
        item["image"] = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
        if label is not None:
            item["label"] = torch.from_numpy(label.astype(np.int64))
        return item
