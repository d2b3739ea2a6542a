"""Verification of ISPRS Potsdam and LoveDA copies."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Sequence

from ...errors import few
from .files import check_images, check_split_names, default_splits, list_files, need_dir
from .report import OFFICIAL_SIZES, PathLike, VerifyReport, check_counts


# --- ISPRS Potsdam ------------------------------------------------------------------------------

def verify_potsdam(root: PathLike, expect_counts: str = "official",
                   splits: Optional[Sequence[str]] = None) -> VerifyReport:
    """Potsdam: ``2_Ortho_RGB/`` (``3_Ortho_IRRG/`` optional) and at least one of
    ``5_Labels_all/``, ``5_Labels_all_noBoundary/``, files named ``top_potsdam_<row>_<col>_*.tif``.

    Checks: every ``.tif`` is named as the release names it and its tile id is in the train or
    test list; every image tile has its label in each label folder present; every label decodes
    and holds only palette colours (black only in the eroded labels) and matches its image's size;
    with ``splits`` (train, test) only those tiles must be present; official counts and 6000 px
    tiles.
    """
    from ..images import read_rgb
    from ..seg.potsdam import TEST_TILES, TILE_FILES, TRAIN_TILES, colour_to_index, split_of

    root = Path(root)
    report = VerifyReport("potsdam", root)
    splits = list(splits) if splits else ["train", "test"]
    check_split_names(splits, ("train", "test"), "potsdam")
    wanted = {"train": TRAIN_TILES, "test": TEST_TILES}
    tiles: Dict[str, Dict[str, Path]] = {}
    for kind, (folder, pattern) in TILE_FILES.items():
        directory = root / folder
        if not directory.is_dir():
            if kind == "rgb":
                report.error(directory, "missing folder (the RGB orthophotos, 2_Ortho_RGB.zip)")
            continue
        regex = re.compile(re.escape(pattern).replace(re.escape("{}"), r"(\d+_\d+)") + "$")
        found: Dict[str, Path] = {}
        for path in list_files(directory):
            if path.suffix.lower() != ".tif":
                continue
            match = regex.match(path.name)
            if match is None:
                report.error(path, f"file name does not match {pattern.format('<row>_<col>')}")
                continue
            try:
                split = "test" if split_of(match.group(1)) == "val" else "train"
            except ValueError as e:
                report.error(path, str(e))
                continue
            if split in splits:
                found[match.group(1)] = path
        tiles[kind] = found
        report.counts[f"{folder}/tiles"] = len(found)
    label_kinds = [k for k in ("label", "label_noBoundary") if k in tiles]
    if not label_kinds:
        report.error(root, "missing folder: neither 5_Labels_all nor 5_Labels_all_noBoundary")
    images = tiles.get("rgb", {})
    if "rgb" in tiles:
        report.counts["train/tiles"] = sum(1 for t in images if t in TRAIN_TILES)
        report.counts["test/tiles"] = sum(1 for t in images if t in TEST_TILES)
        for split in splits:
            absent = [t for t in wanted[split] if t not in images]
            if absent and expect_counts == "official":
                report.error(root / TILE_FILES["rgb"][0],
                             f"{len(absent)} {split} tiles missing: {few(absent)}")
    size = OFFICIAL_SIZES["potsdam"] if expect_counts == "official" else None
    for tile in sorted(set(tiles.get("irrg", {})) - set(images)):
        report.warning(tiles["irrg"][tile], "IRRG tile without an RGB tile")
    for kind in label_kinds:
        folder, _ = TILE_FILES[kind]
        for tile in sorted(set(tiles[kind]) - set(images)):
            report.warning(tiles[kind][tile], "label without an RGB image tile (not prepared)")
        for tile in sorted(set(images) - set(tiles[kind])):
            report.error(root / folder / TILE_FILES[kind][1].format(tile),
                         f"missing: no {folder} label for tile {tile}")
    for tile in sorted(images, key=lambda t: tuple(int(v) for v in t.split("_"))):
        shape, first = None, None
        for kind in ("rgb", "irrg", *label_kinds):
            path = tiles.get(kind, {}).get(tile)
            if path is None:
                continue
            try:
                pixels = read_rgb(path)
            except (OSError, ValueError) as e:
                report.add_exception(path, e)
                continue
            if kind.startswith("label"):
                try:
                    colour_to_index(pixels, protocol=6, eroded=kind == "label_noBoundary", source=str(path))
                except ValueError as e:
                    report.add_exception(path, e)
            dims = (pixels.shape[1], pixels.shape[0])
            if shape is None:
                shape, first = dims, path.name
                if size is not None and dims != size:
                    report.error(path, f"tile is {dims[0]}x{dims[1]}, the release's are {size[0]}x{size[1]}")
            elif dims != shape:
                report.error(path, f"is {dims[0]}x{dims[1]} but {first} is {shape[0]}x{shape[1]}")
            del pixels  # one 6000 px tile in memory at a time
    if expect_counts == "official":
        check_counts(report)
    return report


# --- LoveDA -------------------------------------------------------------------------------------

def verify_loveda(root: PathLike, expect_counts: str = "official",
                  splits: Optional[Sequence[str]] = None) -> VerifyReport:
    """LoveDA: ``{Train,Val,Test}/{Urban,Rural}/images_png/<id>.png`` and ``masks_png/`` for Train
    and Val.

    Checks: folders exist; every image of Train/Val has its mask (error) and every mask its image
    (warning); ids are unique over the dataset; images are PNG; every mask decodes as
    single-channel uint8 with values 0..7 and has its image's size; official counts and
    1024x1024 images.
    """
    from ..seg.loveda import LOVEDA_DOMAINS, LOVEDA_SPLITS, read_loveda_mask

    root = Path(root)
    report = VerifyReport("loveda", root)
    splits = list(splits) if splits else default_splits(root, ["Train", "Val"], ["Test"],
                                                         lambda r, s: (r / s).is_dir())
    check_split_names(splits, LOVEDA_SPLITS, "loveda")
    size = OFFICIAL_SIZES["loveda"] if expect_counts == "official" else None
    owner: Dict[str, Path] = {}
    total = 0
    for split in splits:
        split_total = 0
        for domain in LOVEDA_DOMAINS:
            image_dir = root / split / domain / "images_png"
            mask_dir = root / split / domain / "masks_png"
            labelled = split != "Test"
            ok = need_dir(report, image_dir, f"LoveDA {split} {domain} images")
            if labelled:
                ok = need_dir(report, mask_dir, f"LoveDA {split} {domain} masks") and ok
            if not ok:
                continue
            images = {p.name: p for p in list_files(image_dir) if p.suffix.lower() == ".png"}
            if not images:
                report.error(image_dir, "no PNG images")
            report.counts[f"{split}/{domain}"] = len(images)
            split_total += len(images)
            for name, path in images.items():
                if name in owner:
                    report.error(path, f"id {Path(name).stem} is also {owner[name]}")
                owner.setdefault(name, path)
            sizes = check_images(report, list(images.values()), ("png",), size, need_size=labelled)
            if not labelled:
                continue
            masks = {p.name: p for p in list_files(mask_dir) if p.suffix.lower() == ".png"}
            for name in sorted(set(masks) - set(images)):
                report.warning(masks[name], "mask without an image (ignored by the readers)")
            for name in sorted(images):
                if name not in masks:
                    report.error(mask_dir / name, f"missing: no mask for image {images[name]}")
                    continue
                try:
                    mask = read_loveda_mask(masks[name], reduce_zero_label=False)
                except ValueError as e:
                    report.add_exception(masks[name], e)
                    continue
                dims = sizes.get(images[name])
                if dims is not None and (mask.shape[1], mask.shape[0]) != dims:
                    report.error(masks[name], f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                              f"{dims[0]}x{dims[1]}")
        report.counts[split] = split_total
        total += split_total
    if set(splits) == set(LOVEDA_SPLITS):
        report.counts["images"] = total
    if expect_counts == "official":
        check_counts(report)
    return report
