"""Verify a real dataset copy before preparing it: layout, file counts, annotations, checksums.

``rsfm datasets verify NAME --root R`` runs one verifier per dataset (``VERIFIERS``); each checks

- the **layout** the readers and ``datasets/<name>/prepare.sh`` expect (folders, file naming,
  image <-> annotation pairing), always;
- that **every annotation parses** with the project's readers (DOTA ``labelTxt``, DIOR-R XML,
  Potsdam colour labels, LoveDA masks; for MillionAID the class tree and the JPEG signature of
  every file), always; parse errors name the file and, where the format has lines, the line;
- the **file counts** (and image sizes) of the official release, unless ``expect_counts="none"``
  (synthetic or partial copies). Counts taken from a confirmed source (reference.md, or a
  published total) are errors when they differ; counts that are only reported by papers or users
  and not confirmed here are warnings (``OfficialCount.confirmed``).

No dataset publishes checksums of its files, so none can be shipped. Instead
:func:`write_manifest` records the sha256 and size of every file of *your* copy, and
:func:`check_manifest` checks another copy (another node, a restored backup) against it; the file
format is in docs/datasets.md.

Each problem is a :class:`Problem`: ``path[:line]: message``, level error or warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]

EXPECT_COUNTS = ("official", "none")
MANIFEST_FORMAT = "rsfm-ds/dataset-checksums"
MANIFEST_VERSION = 1
IO_THREADS = 16
"""Threads for per-file header reads and hashing (I/O bound; hashlib releases the GIL)."""

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8"
_TIFF = (b"II*\x00", b"MM\x00*")
_BMP = b"BM"


@dataclass(frozen=True)
class Problem:
    """One finding: ``path[:line]: message``; ``level`` is ``"error"`` or ``"warning"``."""

    path: str
    message: str
    line: Optional[int] = None
    level: str = "error"

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{'warning: ' if self.level == 'warning' else ''}{where}: {self.message}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class OfficialCount:
    """A file count of the official release and where it comes from."""

    key: str
    """What is counted, as in :attr:`VerifyReport.counts` (e.g. ``train/images``)."""
    value: int
    confirmed: bool
    """True: from a confirmed source (a mismatch is an error); False: reported by a paper or by
    users of the release and not confirmed here (a mismatch is a warning)."""
    source: str


@dataclass
class VerifyReport:
    """What a verifier found: counts and problems."""

    dataset: str
    root: Path
    counts: Dict[str, int] = field(default_factory=dict)
    """Files found, by key (``train/images``, ``annotations``, ...)."""
    problems: List[Problem] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    """Information that is not a problem (e.g. how a folder will be used)."""

    def error(self, path: PathLike, message: str, line: Optional[int] = None) -> None:
        self.problems.append(Problem(str(path), message, line, "error"))

    def warning(self, path: PathLike, message: str, line: Optional[int] = None) -> None:
        self.problems.append(Problem(str(path), message, line, "warning"))

    def add_exception(self, path: PathLike, exc: BaseException) -> None:
        """An error from a reader's exception, split into file, line and message when the message
        starts with ``<path>:<line>:`` (the readers' convention)."""
        text, path = str(exc), str(path)
        if text.startswith(path + ":"):
            rest = text[len(path) + 1:].lstrip()
            match = re.match(r"(\d+): (.*)", rest, re.S)
            if match:
                self.error(path, match.group(2), int(match.group(1)))
            else:
                self.error(path, rest)
        else:
            self.error(path, text)

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> List[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        status = "OK" if self.ok else f"FAILED, {_plural(len(self.errors), 'error')}"
        if self.warnings:
            status += f", {_plural(len(self.warnings), 'warning')}"
        return f"{self.dataset} at {self.root}: {counts or 'nothing found'}; {status}"


# Sources in short; datasets/<name>/README.md says what each count rests on.
_DOTA_SOURCE = "the DOTA v2.0 paper's split table"
_DIOR_SOURCE = "the DIOR paper's split"
_LOVEDA_SOURCE = "the LoveDA paper's split table"
_MAID_SOURCE = "users' reports of the Million-AID release"
_REFERENCE = "reference.md section 2"

OFFICIAL_COUNTS: Dict[str, Tuple[OfficialCount, ...]] = {
    "millionaid": (
        OfficialCount("train/images", 10_000, False, _MAID_SOURCE),
        OfficialCount("train/leaf_classes", 51, True, _REFERENCE),
        OfficialCount("train/second_level_classes", 28, True, _REFERENCE),
        OfficialCount("train/top_level_classes", 8, True, _REFERENCE),
        OfficialCount("test/images", 990_848, False, _MAID_SOURCE),
        OfficialCount("images", 1_000_848, False, "the Million-AID paper's total"),
    ),
    "dota_v2": (
        OfficialCount("train/images", 1_830, False, _DOTA_SOURCE),
        OfficialCount("train/labels", 1_830, False, _DOTA_SOURCE),
        OfficialCount("val/images", 593, False, _DOTA_SOURCE),
        OfficialCount("val/labels", 593, False, _DOTA_SOURCE),
        OfficialCount("test/images", 2_792, False, _DOTA_SOURCE),
    ),
    "dior_r": (
        OfficialCount("annotations", 23_463, True, _REFERENCE),
        OfficialCount("train/ids", 5_862, False, _DIOR_SOURCE),
        OfficialCount("val/ids", 5_863, False, _DIOR_SOURCE),
        OfficialCount("trainval/ids", 11_725, False, _DIOR_SOURCE),
        OfficialCount("test/ids", 11_738, False, _DIOR_SOURCE),
        OfficialCount("JPEGImages-trainval", 11_725, False, _DIOR_SOURCE),
        OfficialCount("JPEGImages-test", 11_738, False, _DIOR_SOURCE),
    ),
    "potsdam": (
        *(OfficialCount(f"{folder}/tiles", 38, True, _REFERENCE)
          for folder in ("2_Ortho_RGB", "3_Ortho_IRRG", "5_Labels_all", "5_Labels_all_noBoundary")),
    ),
    "loveda": (
        OfficialCount("Train/Urban", 1_156, False, _LOVEDA_SOURCE),
        OfficialCount("Train/Rural", 1_366, False, _LOVEDA_SOURCE),
        OfficialCount("Val/Urban", 677, False, _LOVEDA_SOURCE),
        OfficialCount("Val/Rural", 992, False, _LOVEDA_SOURCE),
        OfficialCount("Test/Urban", 820, False, _LOVEDA_SOURCE),
        OfficialCount("Test/Rural", 976, False, _LOVEDA_SOURCE),
        OfficialCount("images", 5_987, True, "the LoveDA paper's total"),
    ),
}
"""The release's counts per dataset; a key is checked only when the verifier counted it."""

OFFICIAL_SIZES: Dict[str, Tuple[int, int]] = {"dior_r": (800, 800), "potsdam": (6000, 6000),
                                              "loveda": (1024, 1024)}
"""Image size (width, height) of every image of the release (reference.md section 2)."""


def _check_counts(report: VerifyReport) -> None:
    differ = False
    for expected in OFFICIAL_COUNTS[report.dataset]:
        found = report.counts.get(expected.key)
        if found is None or found == expected.value:
            continue
        differ = True
        message = (f"{expected.key}: found {found:,}, the release has {expected.value:,} according to "
                   f"{expected.source}{'' if expected.confirmed else ' (unconfirmed)'}")
        (report.error if expected.confirmed else report.warning)(report.root, message)
    if differ:
        report.notes.append("counts differ from the release's: for a partial or synthetic copy "
                            "pass --expect-counts none")


def _need_dir(report: VerifyReport, path: Path, what: str) -> bool:
    if path.is_dir():
        return True
    report.error(path, f"missing folder ({what})")
    return False


def _files(folder: Path) -> List[Path]:
    """Regular files (or links to them) of ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name)


def _image_header(path: Path, need_size: bool) -> Tuple[str, Optional[Tuple[int, int]]]:
    """``(format, (width, height) or None)`` from the first bytes of an image file; the size only
    when ``need_size`` (PNG and JPEG), else only the signature is read.

    Raises:
        ValueError: the signature is no PNG, JPEG, TIFF or BMP, or the header is cut short.
    """
    from .jpeg import jpeg_size

    with open(path, "rb") as f:
        head = f.read(4096 if need_size else 8)
    if head.startswith(_PNG):
        if not need_size:
            return "png", None
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ValueError("PNG header is cut short (no IHDR chunk)")
        return "png", (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
    if head.startswith(_JPEG):
        if not need_size:
            return "jpeg", None
        try:
            return "jpeg", jpeg_size(head)
        except ValueError:  # EXIF or other segments before the frame header
            return "jpeg", jpeg_size(path.read_bytes())
    if head[:4] in _TIFF:
        return "tiff", None
    if head.startswith(_BMP):
        return "bmp", None
    if not head:
        raise ValueError("empty file")
    raise ValueError("not an image (no PNG, JPEG, TIFF or BMP signature)")


def _check_images(report: VerifyReport, paths: Sequence[Path], formats: Tuple[str, ...],
                  size: Optional[Tuple[int, int]] = None, need_size: bool = False
                  ) -> Dict[Path, Optional[Tuple[int, int]]]:
    """Signature of every image and, with ``size``, its dimensions (reading a few kB instead of a
    few bytes per file); returns the sizes read (with ``size`` or ``need_size``)."""
    need_size = need_size or size is not None

    def read(path: Path):
        try:
            return path, _image_header(path, need_size), None
        except (OSError, ValueError) as e:
            return path, None, e

    sizes: Dict[Path, Optional[Tuple[int, int]]] = {}
    with ThreadPoolExecutor(IO_THREADS) as pool:
        for path, header, exc in pool.map(read, paths):
            if exc is not None:
                report.error(path, f"unreadable image: {exc}")
                continue
            kind, dims = header
            if kind not in formats:
                report.error(path, f"{kind.upper()} data, expected {' or '.join(f.upper() for f in formats)}")
            elif size is not None and dims is not None and dims != size:
                report.error(path, f"image is {dims[0]}x{dims[1]}, the release's are {size[0]}x{size[1]}")
            sizes[path] = dims
    return sizes


def _default_splits(root: Path, required: Sequence[str], optional: Sequence[str],
                    present: Callable[[Path, str], bool]) -> List[str]:
    return list(required) + [s for s in optional if present(root, s)]


def _check_split_names(splits: Sequence[str], known: Sequence[str], dataset: str) -> None:
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise ValueError(f"splits: {dataset} has {', '.join(known)}; got {', '.join(splits) or 'none'}")


# --- MillionAID ---------------------------------------------------------------------------------

def verify_millionaid(root: PathLike, expect_counts: str = "official",
                      splits: Optional[Sequence[str]] = None) -> VerifyReport:
    """MillionAID: ``train/<L1>/<L2>/[<L3>]/*.jpg`` (the labelled class tree) and, if present,
    ``test/`` (the unlabelled images, any folder depth).

    Checks: ``train/`` exists and holds images in the class tree (files elsewhere in it are
    warnings: the shard writer skips them); every image file starts with the JPEG signature;
    official counts: 51 leaves, 28 second-level and 8 top-level nodes, and the image counts.
    """
    from .millionaid import IMAGE_EXTENSIONS, scan_millionaid

    root = Path(root)
    report = VerifyReport("millionaid", root)
    splits = list(splits) if splits else _default_splits(root, ["train"], ["test"], lambda r, s: (r / s).is_dir())
    _check_split_names(splits, ("train", "test"), "millionaid")
    jpegs: List[Path] = []
    if "train" in splits and _need_dir(report, root / "train", "MillionAID's train/<L1>/<L2>/[<L3>]/ class tree"):
        scan = scan_millionaid(root, "train")
        for skipped in scan.skipped:
            report.warning(root / skipped.path, f"{skipped.reason}; the shard writer skips it")
        if not scan.images:
            report.error(root / "train", "no .jpg images 2 or 3 folders below train/ (the class tree)")
        l1, l2, leaves = scan.level_counts()
        report.counts.update({"train/images": len(scan.images), "train/leaf_classes": leaves,
                              "train/second_level_classes": l2, "train/top_level_classes": l1})
        jpegs += [root / image.relpath for image in scan.images]
    if "test" in splits and _need_dir(report, root / "test", "MillionAID's test/ images"):
        test = []
        for dirpath, dirnames, filenames in os.walk(root / "test", followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    test.append(path)
                else:
                    report.warning(path, "not a .jpg/.jpeg file")
        if not test:
            report.error(root / "test", "no .jpg images")
        depths = {len(p.relative_to(root / "test").parts) - 1 for p in test}
        report.counts["test/images"] = len(test)
        report.notes.append(f"test/: {len(test):,} unlabelled images, {_depth_text(depths)}; "
                            "datasets/millionaid/prepare.sh shards them with IMAGES=all")
        jpegs += test
    if "train" in splits and "test" in splits:
        report.counts["images"] = report.counts.get("train/images", 0) + report.counts.get("test/images", 0)
    _check_images(report, jpegs, ("jpeg",))
    if expect_counts == "official":
        _check_counts(report)
    return report


def _depth_text(depths: Iterable[int]) -> str:
    """Where files sit, from their folder depths below test/."""
    depths = sorted(depths)
    if depths == [0]:
        return "directly in test/"
    return f"{' or '.join(map(str, depths))} folders below test/"


# --- DOTA v2.0 ----------------------------------------------------------------------------------

def verify_dota_v2(root: PathLike, expect_counts: str = "official",
                   splits: Optional[Sequence[str]] = None) -> VerifyReport:
    """DOTA v2.0: ``{train,val}/{images,labelTxt}`` and optionally ``test/images`` (test-dev).

    Checks: folders exist; every image has its label file (an error: the detection dataset needs
    it) and every label file its image (a warning); images are PNG (the release's format; other
    formats the splitter reads are accepted with a warning); every label file parses with the DOTA
    v2.0 class list (errors name file and line).
    """
    from .dota import DOTA_V2_CLASSES, AnnotationError, parse_dota_label
    from .dota_split import IMAGE_EXTENSIONS

    root = Path(root)
    report = VerifyReport("dota_v2", root)
    splits = list(splits) if splits else _default_splits(
        root, ["train", "val"], ["test"], lambda r, s: (r / s / "images").is_dir())
    _check_split_names(splits, ("train", "val", "test"), "dota_v2")
    images_total: List[Path] = []
    for split in splits:
        image_dir, label_dir = root / split / "images", root / split / "labelTxt"
        labelled = split != "test" or label_dir.is_dir()
        ok = _need_dir(report, image_dir, f"DOTA {split} images")
        if labelled:
            ok = _need_dir(report, label_dir, f"DOTA {split} labelTxt files") and ok
        if not ok:
            continue
        images = {}
        for path in _files(image_dir):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                images[path.stem] = path
            else:
                report.warning(path, "not an image file (ignored)")
        if not images:
            report.error(image_dir, "no images")
        report.counts[f"{split}/images"] = len(images)
        images_total += list(images.values())
        if not labelled:
            continue
        labels = {p.stem: p for p in _files(label_dir) if p.suffix == ".txt"}
        report.counts[f"{split}/labels"] = len(labels)
        for stem in sorted(set(images) - set(labels)):
            report.error(label_dir / f"{stem}.txt", f"missing: no label file for image {images[stem].name}")
        for stem in sorted(set(labels) - set(images)):
            report.warning(labels[stem], "label file without an image (ignored by the readers)")
        objects = 0
        for stem in sorted(labels):
            try:
                objects += len(parse_dota_label(labels[stem], DOTA_V2_CLASSES))
            except AnnotationError as e:
                report.add_exception(labels[stem], e)
        report.counts[f"{split}/objects"] = objects
    _check_images(report, images_total, ("png", "jpeg", "tiff", "bmp"))
    for path in images_total:
        if path.suffix.lower() != ".png":
            report.warning(path, "the release's images are PNG")
    if expect_counts == "official":
        _check_counts(report)
    return report


# --- DIOR-R -------------------------------------------------------------------------------------

def _read_id_lines(path: Path) -> List[Tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if line.strip()]


def verify_dior_r(root: PathLike, expect_counts: str = "official",
                  splits: Optional[Sequence[str]] = None) -> VerifyReport:
    """DIOR-R: ``Annotations/Oriented Bounding Boxes/*.xml``, ``ImageSets/Main/<split>.txt``,
    ``JPEGImages-trainval/``, ``JPEGImages-test/``.

    Default splits: train and val (or trainval when only ``trainval.txt`` is there), and test.
    Checks: every id of an image set (errors name the set file and line) has its XML and its JPEG
    in the right folder, and is in one set only; every XML parses (errors name file and line);
    XMLs and images outside every checked set are warnings; official counts and 800x800 images.
    """
    from .dior import (ANNOTATION_SUBDIR, IMAGESET_SUBDIR, TEST_IMAGE_SUBDIR, TRAINVAL_IMAGE_SUBDIR,
                       AnnotationError, parse_dior_xml)

    root = Path(root)
    report = VerifyReport("dior_r", root)
    sets_dir, xml_dir = root / IMAGESET_SUBDIR, root / ANNOTATION_SUBDIR
    if not splits:
        def has(name: str) -> bool:
            return (sets_dir / f"{name}.txt").is_file()

        splits = ["train", "val"] if (has("train") and has("val")) or not has("trainval") else ["trainval"]
        if splits == ["trainval"]:
            report.notes.append("only ImageSets/Main/trainval.txt: train with data.train_splits=[trainval]")
        splits.append("test")
    splits = list(splits)
    _check_split_names(splits, ("train", "val", "trainval", "test"), "dior_r")
    ok = _need_dir(report, xml_dir, "DIOR-R oriented-box XMLs")
    ok = _need_dir(report, sets_dir, "DIOR-R image sets") and ok
    for folder in sorted({TEST_IMAGE_SUBDIR if s == "test" else TRAINVAL_IMAGE_SUBDIR for s in splits}):
        ok = _need_dir(report, root / folder, "DIOR-R JPEG images") and ok
    if not ok:
        return report
    xmls = {p.stem: p for p in _files(xml_dir) if p.suffix == ".xml"}
    report.counts["annotations"] = len(xmls)
    for folder in (TRAINVAL_IMAGE_SUBDIR, TEST_IMAGE_SUBDIR):
        if (root / folder).is_dir():
            report.counts[folder] = sum(1 for p in _files(root / folder) if p.suffix.lower() == ".jpg")
    seen: Dict[str, Tuple[str, int]] = {}
    images: List[Path] = []
    for split in splits:
        set_file = sets_dir / f"{split}.txt"
        if not set_file.is_file():
            report.error(set_file, "missing image-set file")
            continue
        folder = root / (TEST_IMAGE_SUBDIR if split == "test" else TRAINVAL_IMAGE_SUBDIR)
        ids = _read_id_lines(set_file)
        report.counts[f"{split}/ids"] = len(ids)
        if not ids:
            report.error(set_file, "no image ids")
        for line, image_id in ids:
            if image_id in seen:
                other, other_line = seen[image_id]
                report.error(set_file, f"id {image_id!r} is already listed in {other}.txt:{other_line}", line)
                continue
            seen[image_id] = (split, line)
            if image_id not in xmls:
                report.error(set_file, f"id {image_id!r}: no annotation {xml_dir / (image_id + '.xml')}", line)
            image = folder / f"{image_id}.jpg"
            if image.is_file():
                images.append(image)
            else:
                report.error(set_file, f"id {image_id!r}: no image {image}", line)
    for image_id in sorted(set(seen) & set(xmls)):
        try:
            parse_dior_xml(xmls[image_id])
        except AnnotationError as e:
            report.add_exception(xmls[image_id], e)
    unlisted = sorted(set(xmls) - set(seen))
    if unlisted:
        report.warning(xml_dir, f"{len(unlisted)} XMLs in none of the checked image sets "
                                f"({', '.join(unlisted[:3])}{' ...' if len(unlisted) > 3 else ''})")
    size = OFFICIAL_SIZES["dior_r"] if expect_counts == "official" else None
    _check_images(report, images, ("jpeg",), size)
    if expect_counts == "official":
        _check_counts(report)
    return report


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
    from .potsdam import TEST_TILES, TILE_FILES, TRAIN_TILES, _read_rgb, colour_to_index, split_of

    root = Path(root)
    report = VerifyReport("potsdam", root)
    splits = list(splits) if splits else ["train", "test"]
    _check_split_names(splits, ("train", "test"), "potsdam")
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
        for path in _files(directory):
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
                             f"{len(absent)} {split} tiles missing: {', '.join(absent[:5])}"
                             f"{' ...' if len(absent) > 5 else ''}")
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
                pixels = _read_rgb(path)
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
        _check_counts(report)
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
    from .loveda import LOVEDA_DOMAINS, LOVEDA_SPLITS, read_loveda_mask

    root = Path(root)
    report = VerifyReport("loveda", root)
    splits = list(splits) if splits else _default_splits(root, ["Train", "Val"], ["Test"],
                                                         lambda r, s: (r / s).is_dir())
    _check_split_names(splits, LOVEDA_SPLITS, "loveda")
    size = OFFICIAL_SIZES["loveda"] if expect_counts == "official" else None
    owner: Dict[str, Path] = {}
    total = 0
    for split in splits:
        split_total = 0
        for domain in LOVEDA_DOMAINS:
            image_dir = root / split / domain / "images_png"
            mask_dir = root / split / domain / "masks_png"
            labelled = split != "Test"
            ok = _need_dir(report, image_dir, f"LoveDA {split} {domain} images")
            if labelled:
                ok = _need_dir(report, mask_dir, f"LoveDA {split} {domain} masks") and ok
            if not ok:
                continue
            images = {p.name: p for p in _files(image_dir) if p.suffix.lower() == ".png"}
            if not images:
                report.error(image_dir, "no PNG images")
            report.counts[f"{split}/{domain}"] = len(images)
            split_total += len(images)
            for name, path in images.items():
                if name in owner:
                    report.error(path, f"id {Path(name).stem} is also {owner[name]}")
                owner.setdefault(name, path)
            sizes = _check_images(report, list(images.values()), ("png",), size, need_size=labelled)
            if not labelled:
                continue
            masks = {p.name: p for p in _files(mask_dir) if p.suffix.lower() == ".png"}
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
        _check_counts(report)
    return report


VERIFIERS: Dict[str, Callable[..., VerifyReport]] = {
    "millionaid": verify_millionaid, "dota_v2": verify_dota_v2, "dior_r": verify_dior_r,
    "potsdam": verify_potsdam, "loveda": verify_loveda}
"""Dataset name (the folder under datasets/) -> verifier."""


def verify_dataset(name: str, root: PathLike, expect_counts: str = "official",
                   splits: Optional[Sequence[str]] = None, manifest: Optional[PathLike] = None,
                   quick: bool = False) -> VerifyReport:
    """Run the verifier of ``name`` on ``root``, then, with ``manifest``, :func:`check_manifest`
    (sizes only when ``quick``).

    Raises:
        ValueError: unknown dataset, ``expect_counts`` or split name.
    """
    if name not in VERIFIERS:
        raise ValueError(f"dataset: expected one of {', '.join(VERIFIERS)}, got {name!r}")
    if expect_counts not in EXPECT_COUNTS:
        raise ValueError(f"expect_counts: expected one of {', '.join(EXPECT_COUNTS)}, got {expect_counts!r}")
    root = Path(root)
    if not root.is_dir():
        report = VerifyReport(name, root)
        report.error(root, "missing folder (the dataset root)")
        return report
    report = VERIFIERS[name](root, expect_counts, splits)
    if manifest is not None:
        report.problems.extend(check_manifest(root, manifest, quick=quick))
    return report


# --- Checksum manifests -------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path, exclude: Optional[Path]) -> List[str]:
    """Relative '/'-separated paths of every file under ``root`` (links followed), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            if exclude is not None and path.resolve() == exclude:
                continue
            out.append(path.relative_to(root).as_posix())
    return sorted(out)


def write_manifest(root: PathLike, out: PathLike, dataset: Optional[str] = None,
                   workers: int = IO_THREADS) -> Dict[str, object]:
    """Write the sha256 and size of every file under ``root`` to ``out`` (JSON, one file a line).

    Returns the manifest as written. The output file itself is left out when it lies under ``root``.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    paths = _walk(root, out.resolve())

    def entry(rel: str) -> Dict[str, object]:
        path = root / rel
        return {"path": rel, "size": path.stat().st_size, "sha256": _sha256(path)}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        files = list(pool.map(entry, paths))
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "dataset": dataset,
                "root": str(root.resolve()), "num_files": len(files),
                "num_bytes": sum(int(f["size"]) for f in files), "files": files}
    head = {k: v for k, v in manifest.items() if k != "files"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + ['  "files": [']
    lines += [f"    {json.dumps(f)}{',' if i < len(files) - 1 else ''}" for i, f in enumerate(files)]
    lines += ["  ]", "}"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return manifest


def load_checksum_manifest(path: PathLike) -> Tuple[Dict[str, object], Dict[str, int]]:
    """The manifest and, per file entry, its line in the file (for messages).

    Raises:
        ValueError: not JSON, another format, or a version this code does not read (named).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not an {MANIFEST_FORMAT} manifest (written by rsfm datasets manifest)")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, this version of "
                         f"rsfm-ds reads {MANIFEST_VERSION}; write it again with rsfm datasets manifest")
    lines = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip().rstrip(",")
        if stripped.startswith('{"path"'):
            lines[json.loads(stripped)["path"]] = number
    return manifest, lines


def check_manifest(root: PathLike, manifest: PathLike, quick: bool = False,
                   workers: int = IO_THREADS) -> List[Problem]:
    """Check the files under ``root`` against a manifest of :func:`write_manifest`.

    Errors: a listed file is missing, or its size or (unless ``quick``) sha256 differs; each
    names the file and the manifest line listing it. Warnings: files under ``root`` the manifest
    does not list. An unreadable manifest is one error naming it.
    """
    root, manifest = Path(root), Path(manifest)
    try:
        data, lines = load_checksum_manifest(manifest)
    except (OSError, ValueError) as e:
        return [Problem(str(manifest), str(e).removeprefix(f"{manifest}: "))]
    listed = {f["path"]: f for f in data["files"]}

    def check(rel: str) -> Optional[Problem]:
        entry, path = listed[rel], root / rel
        where = f"(listed at {manifest}:{lines.get(rel, '?')})"
        if not path.is_file():
            return Problem(str(path), f"missing {where}")
        size = path.stat().st_size
        if size != entry["size"]:
            return Problem(str(path), f"size {size:,} bytes, the manifest has {entry['size']:,} {where}")
        if not quick and _sha256(path) != entry["sha256"]:
            return Problem(str(path), f"checksum mismatch: sha256 differs from the manifest's {where}")
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = [p for p in pool.map(check, sorted(listed)) if p is not None]
    for rel in _walk(root, manifest.resolve()):
        if rel not in listed:
            problems.append(Problem(str(root / rel), f"not in the manifest {manifest}", level="warning"))
    return problems


__all__ = ["Problem", "OfficialCount", "VerifyReport", "OFFICIAL_COUNTS", "OFFICIAL_SIZES", "VERIFIERS",
           "verify_dataset", "verify_millionaid", "verify_dota_v2", "verify_dior_r", "verify_potsdam",
           "verify_loveda", "write_manifest", "check_manifest", "load_checksum_manifest"]
