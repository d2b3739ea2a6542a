"""ISPRS Potsdam: the release's files, its colour labels, the two protocols, and tiles -> crops.

The release (ISPRS 2D semantic labelling, 38 true-orthophoto tiles of 6000 x 6000 px at 5 cm)
names files by tile id ``<row>_<col>`` (e.g. ``2_10``):

==============================  ============================================  =========================
folder                          file                                          content
==============================  ============================================  =========================
``2_Ortho_RGB``                 ``top_potsdam_2_10_RGB.tif``                  8-bit R, G, B
``3_Ortho_IRRG``                ``top_potsdam_2_10_IRRG.tif``                 8-bit IR, R, G
``5_Labels_all``                ``top_potsdam_2_10_label.tif``                RGB colour labels
``5_Labels_all_noBoundary``     ``top_potsdam_2_10_label_noBoundary.tif``     eroded colour labels
==============================  ============================================  =========================

(``1_DSM``, ``1_DSM_normalisation`` and ``4_Ortho_RGBIR`` are not used.) The release ships each
folder as a zip of the same name: unzip them side by side under one root.

Label colours (RGB) and class indices: 0 impervious surfaces (255, 255, 255), 1 building
(0, 0, 255), 2 low vegetation (0, 255, 255), 3 tree (0, 255, 0), 4 car (255, 255, 0), 5 clutter
(255, 0, 0). The eroded ("noBoundary") labels paint object boundaries (a disc of 3 px radius) black
(0, 0, 0); black becomes the ignore index 255. Black in the full label set is an error.

Protocols (docs/segmentation_data.md): ``protocol=5`` (default, as RVSA) maps clutter to the ignore
index, so it counts neither in the loss nor in the metric (5 classes); ``protocol=6`` keeps it as
class 5. RVSA and mmseg train and test on the eroded labels: ``--protocol 5 --eroded`` gives
numbers comparable with theirs.

Colour -> index is one gather from a 2^24-entry lookup table indexed by the packed colour
``r << 16 | g << 8 | b`` (no per-pixel Python). Colours not in the palette are an error naming the
file and the colours, or, with ``unknown_to_ignore``, become the ignore index and are counted.

:func:`prepare_potsdam` cuts every tile into ``crop`` x ``crop`` crops every ``stride`` pixels with
the last crop clamped to the border (:func:`rsfm_ds.data.tiling.window_starts`): a
6000 px side gives ``ceil((6000 - 512) / 256) + 1 = 23`` positions with crop 512 / stride 256,
so **529 crops per tile** (12,696 train and 7,406 test crops). Output, in mmseg's layout and
naming (``<tile>_<x0>_<y0>_<x1>_<y1>.png``, the same name for image and label)::

    OUT/img_dir/{train,val}/2_10_0_0_512_512.png     RGB (or IRRG) crop, 8-bit, 3 channels
    OUT/ann_dir/{train,val}/2_10_0_0_512_512.png     uint8 class indices, 255 = ignore
    OUT/prepare.json                                 what was prepared (see docs/segmentation_data.md)

``val`` holds the 14 test tiles (mmseg calls the split val).
"""
from __future__ import annotations

import functools
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from ...errors import ConfigError, DataError, few
from ..images import read_rgb, write_image
from ..tiling import window_starts

POTSDAM_CLASSES: Tuple[str, ...] = ("impervious_surfaces", "building", "low_vegetation", "tree", "car",
                                    "clutter")
POTSDAM_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
"""RGB colour of each class in ``POTSDAM_CLASSES`` order."""
BOUNDARY_COLOUR: Tuple[int, int, int] = (0, 0, 0)
"""Eroded-label boundary colour (ignored)."""
IGNORE_INDEX = 255
CLUTTER = 5
PROTOCOLS = (5, 6)

TRAIN_TILES: Tuple[str, ...] = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
    "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10", "7_11", "7_12")
TEST_TILES: Tuple[str, ...] = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14",
    "6_15", "7_13")

# kind -> (folder, file name pattern); the tile id fills the braces.
TILE_FILES: Dict[str, Tuple[str, str]] = {
    "rgb": ("2_Ortho_RGB", "top_potsdam_{}_RGB.tif"),
    "irrg": ("3_Ortho_IRRG", "top_potsdam_{}_IRRG.tif"),
    "label": ("5_Labels_all", "top_potsdam_{}_label.tif"),
    "label_noBoundary": ("5_Labels_all_noBoundary", "top_potsdam_{}_label_noBoundary.tif"),
}
MODALITIES = ("rgb", "irrg")
_UNKNOWN = 254  # lookup-table marker for colours outside the palette; never written out


def tile_path(root: Union[str, Path], tile: str, kind: str) -> Path:
    """Path of one release file (``kind`` a key of ``TILE_FILES``).

    E.g. ``tile_path(root, "2_10", "rgb")`` -> ``root/2_Ortho_RGB/top_potsdam_2_10_RGB.tif``.
    """
    if kind not in TILE_FILES:
        raise ConfigError(f"kind: expected one of {sorted(TILE_FILES)}, got {kind!r}")
    folder, pattern = TILE_FILES[kind]
    return Path(root) / folder / pattern.format(tile)


def split_of(tile: str) -> str:
    """``"train"`` for the 24 training tiles, ``"val"`` for the 14 test tiles."""
    if tile in TRAIN_TILES:
        return "train"
    if tile in TEST_TILES:
        return "val"
    raise DataError(f"tile {tile!r} is in neither the train nor the test list of Potsdam")


def class_names(protocol: int) -> Tuple[str, ...]:
    """Class names scored under ``protocol`` (5: without clutter, 6: all)."""
    _check_protocol(protocol)
    return POTSDAM_CLASSES[:protocol]


def _check_protocol(protocol: int) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: expected 5 (clutter ignored) or 6, got {protocol!r}")


def _pack(rgb: np.ndarray) -> np.ndarray:
    """``uint8 [..., 3]`` RGB -> ``int32 [...]`` packed ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@functools.lru_cache(maxsize=4)
def colour_lut(protocol: int = 5, eroded: bool = False) -> np.ndarray:
    """``uint8 [2^24]`` table: packed colour -> class index, 255 ignore, 254 not in the palette."""
    _check_protocol(protocol)
    lut = np.full(1 << 24, _UNKNOWN, dtype=np.uint8)
    for index, colour in enumerate(POTSDAM_PALETTE):
        lut[_pack(np.asarray(colour))] = IGNORE_INDEX if (protocol == 5 and index == CLUTTER) else index
    if eroded:
        lut[_pack(np.asarray(BOUNDARY_COLOUR))] = IGNORE_INDEX
    lut.setflags(write=False)
    return lut


def colour_to_index(rgb: np.ndarray, protocol: int = 5, eroded: bool = False,
                    unknown_to_ignore: bool = False, source: str = "") -> Tuple[np.ndarray, int]:
    """Colour label ``uint8 [H, W, 3]`` (RGB) -> ``(uint8 [H, W] class indices, unknown pixel count)``.

    Args:
        rgb: colour label image in RGB channel order.
        protocol: 5 (clutter -> 255) or 6 (clutter = class 5).
        eroded: the image is a ``noBoundary`` label (black -> 255); otherwise black is unknown.
        unknown_to_ignore: map colours outside the palette to 255 instead of raising.
        source: file name for error messages.

    Raises:
        DataError: wrong shape/dtype, or colours outside the palette (names ``source``, up to five
            colours and their pixel counts) unless ``unknown_to_ignore``.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"{source or 'label'}: expected uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}")
    index = colour_lut(protocol, eroded)[_pack(rgb)]
    unknown = index == _UNKNOWN
    n_unknown = int(unknown.sum())
    if n_unknown:
        if not unknown_to_ignore:
            colours, counts = np.unique(_pack(rgb)[unknown], return_counts=True)
            top = np.argsort(-counts)[:5]
            listed = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) x{n}"
                               for c, n in zip(colours[top].tolist(), counts[top].tolist()))
            hint = "" if eroded else " (black is only valid in the eroded noBoundary labels)"
            raise DataError(f"{source or 'label'}: {n_unknown} pixels of {len(colours)} colours not in the "
                            f"Potsdam palette{hint}: {listed}; pass unknown_to_ignore / --unknown-to-ignore "
                            f"to map them to {IGNORE_INDEX}")
        index = index.copy()
        index[unknown] = IGNORE_INDEX
    return index, n_unknown


def index_to_colour(index: np.ndarray, ignore_colour: Tuple[int, int, int] = BOUNDARY_COLOUR) -> np.ndarray:
    """Class indices ``[H, W]`` (0..5, 255) -> RGB colour label ``uint8 [H, W, 3]``; 255 -> ``ignore_colour``.

    Raises:
        ValueError: an index that is neither a class nor 255.
    """
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:len(POTSDAM_PALETTE)] = POTSDAM_PALETTE
    table[IGNORE_INDEX] = ignore_colour
    index = np.asarray(index)
    bad = (index > len(POTSDAM_PALETTE) - 1) & (index != IGNORE_INDEX)
    if bool(bad.any()):
        raise ValueError(f"index_to_colour: value {int(index[bad][0])} is neither a class index nor {IGNORE_INDEX}")
    return table[index.astype(np.intp)]


def crop_boxes(height: int, width: int, crop: int, stride: int) -> List[Tuple[int, int, int, int]]:
    """Crop boxes ``(x0, y0, x1, y1)`` covering a ``height x width`` image, row by row.

    Raises:
        DataError: the image is smaller than the crop; ConfigError: ``stride`` is not in ``[1, crop]``.
    """
    if height < crop or width < crop:
        raise DataError(f"image {width}x{height} is smaller than the crop {crop}")
    return [(x, y, x + crop, y + crop)
            for y in window_starts(height, crop, stride) for x in window_starts(width, crop, stride)]


@dataclass
class PrepareReport:
    """What :func:`prepare_potsdam` wrote; also saved as ``OUT/prepare.json``."""

    out: str
    protocol: int
    classes: List[str]
    ignore_index: int
    eroded: bool
    modality: str
    crop: int
    stride: int
    tiles: Dict[str, List[str]] = field(default_factory=dict)
    crops: Dict[str, int] = field(default_factory=dict)
    unknown_pixels: Dict[str, int] = field(default_factory=dict)
    """Per label file with colours outside the palette (only with ``unknown_to_ignore``)."""
    format: str = "rsfm-seg-crops"
    version: int = 1


def find_tiles(root: Union[str, Path], modality: str = "rgb") -> List[str]:
    """Tile ids whose image exists under ``root`` (release layout), sorted.

    Raises:
        DataError: the image folder is missing or holds no tile.
        DataError: a file name that does not parse or a tile id outside the train/test lists.
    """
    if modality not in MODALITIES:
        raise ConfigError(f"modality: expected one of {MODALITIES}, got {modality!r}")
    folder, pattern = TILE_FILES[modality]
    directory = Path(root) / folder
    if not directory.is_dir():
        raise DataError(f"Potsdam image folder {directory} does not exist")
    regex = re.compile(re.escape(pattern).replace(re.escape("{}"), r"(\d+_\d+)") + "$")
    tiles = []
    for path in sorted(directory.glob("*.tif")):
        match = regex.match(path.name)
        if match is None:
            raise DataError(f"{path}: file name does not match {pattern.format('<row>_<col>')}")
        split_of(match.group(1))
        tiles.append(match.group(1))
    if not tiles:
        raise DataError(f"no {pattern.format('*')} tiles in {directory}")
    return sorted(tiles, key=lambda t: tuple(int(v) for v in t.split("_")))


def prepare_potsdam(root: Union[str, Path], out: Union[str, Path], protocol: int = 5, crop: int = 512,
                    stride: int = 256, eroded: bool = False, modality: str = "rgb",
                    unknown_to_ignore: bool = False) -> PrepareReport:
    """Cut every Potsdam tile under ``root`` into crops in mmseg's layout under ``out`` (module doc).

    Tiles are those whose image (``modality``: ``"rgb"`` or ``"irrg"``) exists; each needs its label
    (``5_Labels_all``, or ``5_Labels_all_noBoundary`` when ``eroded``). Train tiles go to ``train``,
    test tiles to ``val``.

    Raises:
        ConfigError: a bad option (named), before anything is read.
        DataError: a folder, image or label is missing, an unknown tile id, an image/label size
            mismatch, a tile smaller than the crop, or colours outside the palette (see
            :func:`colour_to_index`); the file is named.
    """
    _check_protocol(protocol)
    if crop < 1 or stride < 1:
        raise ConfigError(f"crop, stride: must be >= 1, got crop {crop}, stride {stride}")
    if stride > crop:
        raise ConfigError(f"stride: {stride} > crop {crop}: windows would leave pixels uncovered")
    tiles = find_tiles(root, modality)
    label_kind = "label_noBoundary" if eroded else "label"
    missing = [str(tile_path(root, t, label_kind)) for t in tiles if not tile_path(root, t, label_kind).is_file()]
    if missing:
        raise DataError(f"{len(missing)} label files missing: {few(missing)}")
    out = Path(out)
    report = PrepareReport(out=str(out), protocol=protocol, classes=list(class_names(protocol)),
                           ignore_index=IGNORE_INDEX, eroded=eroded, modality=modality, crop=crop, stride=stride,
                           tiles={"train": [], "val": []}, crops={"train": 0, "val": 0})
    # Crops go to a side folder first: a failure leaves `out` as it was (no crops without their
    # prepare.json), and a success replaces its img_dir/ and ann_dir/ whole.
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for tile in tiles:
            _crop_tile(root, tile, modality, label_kind, protocol, eroded, unknown_to_ignore, crop, stride, partial,
                       report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "prepare.json").unlink(missing_ok=True)
        for folder in ("img_dir", "ann_dir"):
            shutil.rmtree(out / folder, ignore_errors=True)
            (partial / folder).rename(out / folder)
        (out / "prepare.json").write_text(json.dumps(asdict(report), indent=2) + "\n")  # last: marks it complete
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return report


def _crop_tile(root: Path, tile: str, modality: str, label_kind: str, protocol: int, eroded: bool,
               unknown_to_ignore: bool, crop: int, stride: int, out: Path, report: PrepareReport) -> None:
    """Write one tile's crops under ``out`` (``img_dir/<split>``, ``ann_dir/<split>``); count them."""
    image_path, label_path = tile_path(root, tile, modality), tile_path(root, tile, label_kind)
    image = read_rgb(image_path)
    colour = read_rgb(label_path)
    if image.shape != colour.shape:
        raise DataError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but {label_path} is "
                        f"{colour.shape[1]}x{colour.shape[0]}")
    index, n_unknown = colour_to_index(colour, protocol, eroded, unknown_to_ignore, str(label_path))
    if n_unknown:
        report.unknown_pixels[label_path.name] = n_unknown
    try:
        boxes = crop_boxes(image.shape[0], image.shape[1], crop, stride)
    except DataError as e:
        raise DataError(f"{image_path}: {e}") from None
    split = split_of(tile)
    for folder in ("img_dir", "ann_dir"):
        (out / folder / "train").mkdir(parents=True, exist_ok=True)
        (out / folder / "val").mkdir(parents=True, exist_ok=True)
    for x0, y0, x1, y1 in boxes:
        name = f"{tile}_{x0}_{y0}_{x1}_{y1}.png"
        write_image(out / "img_dir" / split / name, np.ascontiguousarray(image[y0:y1, x0:x1, ::-1]))
        write_image(out / "ann_dir" / split / name, np.ascontiguousarray(index[y0:y1, x0:x1]))
    report.tiles[split].append(tile)
    report.crops[split] += len(boxes)
