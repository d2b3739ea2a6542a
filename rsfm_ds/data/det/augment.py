"""Box-aware training augmentations for rotated detection, vectorised over boxes.

Boxes are ``[N, 5]`` ``(cx, cy, w, h, theta)`` tensors in the image's continuous pixel
coordinates (pixel ``(i, j)`` covers ``[j, j + 1] x [i, i + 1]``), returned in le90 form. Each
function transforms the *boxes* in closed form, so no polygon or ``cv2.minAreaRect`` round trip
is needed; the tests compare every one against transforming the rasterised box.

- :func:`hflip_boxes`, :func:`vflip_boxes`: mirrors (mmrotate's ``RRandomFlip``).
- :func:`rot90_boxes`: quarter turns, the image turned with ``np.rot90``.
- :func:`scale_boxes`: a resize by one factor in both axes (mmrotate's ``RResize``,
  ``keep_ratio=True``).
- :class:`RandomRotate`: mmrotate 0.x's ``PolyRandomRotate``
  (mmrotate's ``mmrotate/datasets/pipelines/transforms.py``), built from :func:`rotation`,
  :func:`rotate_image`, :func:`rotate_boxes` and :func:`inside_border`.

Randomness comes from numpy's global RNG, as in mmrotate; the fine-tuning engine seeds it per
sample from (seed, epoch, position), so a sample's augmentation does not depend on which
DataLoader worker draws it and resumption replays it exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor

from ...config import check, check_choices
from ...ops.rotated import regularize_le90

ROTATE_MIN_SIZE = 5.0
"""mmrotate's ``filter_border`` drops rotated boxes whose w or h is not above this (pixels)."""
RECT_ANGLES = (90.0, 180.0, -90.0, -180.0)
"""Angles an image holding a rect-class object is turned by: mmrotate shuffles this list and
takes its first entry, so a half turn is twice as likely as each quarter turn."""


def hflip_boxes(boxes: Tensor, width: float) -> Tensor:
    """Boxes ``[N, 5]`` of an image mirrored left-right (``x -> width - x``), le90."""
    cx, cy, w, h, t = boxes.unbind(-1)
    return regularize_le90(torch.stack([width - cx, cy, w, h, -t], dim=-1))


def vflip_boxes(boxes: Tensor, height: float) -> Tensor:
    """Boxes ``[N, 5]`` of an image mirrored top-bottom (``y -> height - y``), le90."""
    cx, cy, w, h, t = boxes.unbind(-1)
    return regularize_le90(torch.stack([cx, height - cy, w, h, -t], dim=-1))


def rot90_boxes(boxes: Tensor, width: float, height: float, k: int) -> Tensor:
    """Boxes ``[N, 5]`` of a ``width x height`` image turned ``k`` quarter turns clockwise on
    screen (``np.rot90(image, -k)``), le90. One turn maps ``(x, y) -> (height - y, x)`` and
    adds a quarter turn to theta; the image becomes ``height x width``."""
    for _ in range(k % 4):
        cx, cy, w, h, t = boxes.unbind(-1)
        boxes = torch.stack([height - cy, cx, w, h, t + math.pi / 2], dim=-1)
        width, height = height, width
    return regularize_le90(boxes)


def scale_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Boxes ``[N, 5]`` of an image resized by ``scale`` in both axes."""
    return torch.cat([boxes[:, :4] * scale, boxes[:, 4:]], dim=1)


class Rotation(NamedTuple):
    """A rotation of an image about its centre.

    Attributes:
        angle: degrees, counter-clockwise on screen (OpenCV's ``getRotationMatrix2D`` sign).
        matrix: ``float64 [2, 3]`` affine map of continuous pixel coordinates, input -> output.
        width, height: the output image's size.
    """

    angle: float
    matrix: np.ndarray
    width: int
    height: int


def rotation(width: int, height: int, angle: float, auto_bound: bool = False) -> Rotation:
    """The rotation of a ``width x height`` image by ``angle`` degrees about its centre
    ``(width / 2, height / 2)``.

    Without ``auto_bound`` the output keeps the input's size (corners that leave it are cut, as
    mmrotate's default). With it, the output grows to the rotated image's bounds (rounded to
    whole pixels) and the centre moves to the new centre: mmrotate's ``auto_bound`` intent. (In
    mmrotate the image's half-pixel-shifted matrix gets that translation computed from a point
    one pixel off the centre, so its image and boxes disagree by up to a pixel; here the image
    and the boxes use one map.)
    """
    cx, cy = width / 2.0, height / 2.0
    matrix = cv2.getRotationMatrix2D((cx, cy), float(angle), 1.0)
    out_w, out_h = width, height
    if auto_bound:
        cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
        out_w = int(np.rint(height * sin + width * cos))
        out_h = int(np.rint(height * cos + width * sin))
        matrix[:, 2] += (out_w / 2.0 - cx, out_h / 2.0 - cy)
    return Rotation(float(angle), matrix, out_w, out_h)


def rotate_image(img: np.ndarray, rot: Rotation) -> np.ndarray:
    """``img`` ``[H, W, C]`` (or ``[H, W]``) warped by ``rot`` -> ``[rot.height, rot.width, C]``.

    Bilinear, with the border filled with 0 (``cv2.warpAffine``'s defaults, as mmrotate). OpenCV
    samples at pixel indices, whose centres are at ``index + 0.5`` in continuous coordinates, so
    the map ``p -> A p + t`` becomes ``q -> A q + (t + A 0.5 - 0.5)`` on indices; for a rotation
    about the centre that is mmrotate's rotation about ``(w / 2 - 0.5, h / 2 - 0.5)``.
    """
    a = rot.matrix[:, :2]
    pixel = np.concatenate([a, (rot.matrix[:, 2] + a.sum(1) * 0.5 - 0.5)[:, None]], axis=1)
    # warpAffine needs a contiguous array; flips and turns leave negatively strided views.
    return cv2.warpAffine(np.ascontiguousarray(img), pixel, (rot.width, rot.height),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def rotate_boxes(boxes: Tensor, rot: Rotation) -> Tensor:
    """Boxes ``[N, 5]`` mapped by ``rot``, le90: centres by the affine map, theta minus the angle
    (a counter-clockwise turn on screen lowers theta in y-down coordinates), sides unchanged.
    The same rectangles as mmrotate's corner transform followed by ``poly2obb``."""
    m = torch.as_tensor(rot.matrix, dtype=boxes.dtype, device=boxes.device)
    centres = boxes[:, :2] @ m[:, :2].T + m[:, 2]
    theta = boxes[:, 4:] - math.radians(rot.angle)
    return regularize_le90(torch.cat([centres, boxes[:, 2:4], theta], dim=1))


def inside_border(boxes: Tensor, width: float, height: float,
                  min_size: float = ROTATE_MIN_SIZE) -> Tensor:
    """mmrotate's ``PolyRandomRotate.filter_border``: ``bool [N]``, true for boxes whose centre
    lies strictly inside the ``width x height`` image and whose sides both exceed ``min_size``.
    Corners may stick out (only the centre is checked)."""
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return (cx > 0) & (cx < width) & (cy > 0) & (cy < height) & (w > min_size) & (h > min_size)


@dataclass(frozen=True)
class RandomRotate:
    """mmrotate 0.x's ``PolyRandomRotate`` (mmrotate's ``mmrotate/datasets/pipelines/transforms.py``).

    Per sample: with probability ``prob`` the image is rotated about its centre by an angle drawn
    by ``mode``; if any of the image's objects has a label in ``rect_labels`` the angle is instead
    one of :data:`RECT_ANGLES` (objects such as storage tanks and roundabouts look the same at
    every angle, and a turned axis-aligned box of one would no longer fit it). Then, rotated or
    not, boxes failing :func:`inside_border` are dropped; if none is left, the sample is refused
    (:meth:`__call__` returns None) unless ``allow_negative``.

    Attributes:
        prob: probability of rotating (mmrotate's ``rotate_ratio``).
        mode: ``range``: angle uniform in ``(-angle_range, angle_range)`` degrees; ``value``: one
            of ``angles``, uniformly.
        angle_range: degrees, ``range`` mode (mmrotate's ``angles_range``, 180).
        angles: degrees, ``value`` mode.
        auto_bound: grow the output to the rotated image's bounds (see :func:`rotation`).
        rect_labels: class indices whose presence limits the angle to :data:`RECT_ANGLES`.
        allow_negative: keep a sample left without objects (else it is refused).
        min_size: the side length a kept box must exceed (pixels).
    """

    prob: float = 0.5
    mode: Literal["range", "value"] = "range"
    angle_range: float = 180.0
    angles: Tuple[float, ...] = ()
    auto_bound: bool = False
    rect_labels: Tuple[int, ...] = ()
    allow_negative: bool = False
    min_size: float = ROTATE_MIN_SIZE

    def __post_init__(self) -> None:
        check_choices(self)
        check(0.0 <= self.prob <= 1.0, "prob", f"must be in [0, 1], got {self.prob}")
        check(0.0 < self.angle_range <= 180.0, "angle_range",
              f"must be in (0, 180] degrees, got {self.angle_range}")
        check(self.mode != "value" or len(self.angles) > 0, "angles",
              "name at least one angle (degrees) for mode 'value'")
        check(self.min_size >= 0, "min_size", f"must be >= 0, got {self.min_size}")

    def draw_angle(self, labels: np.ndarray) -> Optional[float]:
        """The angle (degrees) for an image with object ``labels``, or None for no rotation.
        Draws from numpy's global RNG in mmrotate's order: the coin, then the angle, then, for a
        rect-class image, the quarter-turn multiple."""
        if not np.random.rand() < self.prob:
            return None
        if self.mode == "range":
            angle = self.angle_range * (2 * np.random.rand() - 1)
        else:
            angle = self.angles[np.random.randint(len(self.angles))]
        if self.rect_labels and np.isin(labels, self.rect_labels).any():
            angle = RECT_ANGLES[np.random.randint(len(RECT_ANGLES))]
        return float(angle)

    def __call__(self, img: np.ndarray, boxes: Tensor, labels: np.ndarray
                 ) -> Optional[Tuple[np.ndarray, Tensor, np.ndarray]]:
        """``(img [H', W', C], boxes [M, 5], labels [M])`` after the rotation and the border
        filter, or None when no object is left and ``allow_negative`` is false."""
        angle = self.draw_angle(labels)
        height, width = img.shape[:2]
        if angle is not None:
            rot = rotation(width, height, angle, self.auto_bound)
            img, boxes = rotate_image(img, rot), rotate_boxes(boxes, rot)
            width, height = rot.width, rot.height
        keep = inside_border(boxes, width, height, self.min_size)
        boxes, labels = boxes[keep], labels[keep.numpy()]
        if len(labels) == 0 and not self.allow_negative:
            return None
        return img, boxes, labels


def label_indices(names: Sequence[str], classes: Sequence[str]) -> Tuple[int, ...]:
    """Indices in ``classes`` of those ``names`` it holds (a class the detector does not predict
    has no objects left to protect)."""
    return tuple(sorted(classes.index(n) for n in set(names) if n in classes))


__all__ = ["hflip_boxes", "vflip_boxes", "rot90_boxes", "scale_boxes", "Rotation", "rotation",
           "rotate_image", "rotate_boxes", "inside_border", "RandomRotate", "label_indices",
           "ROTATE_MIN_SIZE", "RECT_ANGLES"]
