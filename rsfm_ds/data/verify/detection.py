"""Verification of DOTA v2.0 and DIOR-R copies."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .files import check_images, check_split_names, default_splits, list_files, need_dir
from .report import OFFICIAL_SIZES, PathLike, VerifyReport, check_counts


# --- DOTA v2.0 ----------------------------------------------------------------------------------

def verify_dota_v2(root: PathLike, expect_counts: str = "official",
                   splits: Optional[Sequence[str]] = None) -> VerifyReport:
    """DOTA v2.0: ``{train,val}/{images,labelTxt}`` and optionally ``test/images`` (test-dev).

    Checks: folders exist; every image has its label file (an error: the detection dataset needs
    it) and every label file its image (a warning); images are PNG (the release's format; other
    formats the splitter reads are accepted with a warning); every label file parses with the DOTA
    v2.0 class list (errors name file and line).
    """
    from ..det.dota import DOTA_V2_CLASSES, AnnotationError, parse_dota_label
    from ..det.split import IMAGE_EXTENSIONS

    root = Path(root)
    report = VerifyReport("dota_v2", root)
    splits = list(splits) if splits else default_splits(
        root, ["train", "val"], ["test"], lambda r, s: (r / s / "images").is_dir())
    check_split_names(splits, ("train", "val", "test"), "dota_v2")
    images_total: List[Path] = []
    for split in splits:
        image_dir, label_dir = root / split / "images", root / split / "labelTxt"
        labelled = split != "test" or label_dir.is_dir()
        ok = need_dir(report, image_dir, f"DOTA {split} images")
        if labelled:
            ok = need_dir(report, label_dir, f"DOTA {split} labelTxt files") and ok
        if not ok:
            continue
        images = {}
        for path in list_files(image_dir):
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
        labels = {p.stem: p for p in list_files(label_dir) if p.suffix == ".txt"}
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
    check_images(report, images_total, ("png", "jpeg", "tiff", "bmp"))
    for path in images_total:
        if path.suffix.lower() != ".png":
            report.warning(path, "the release's images are PNG")
    if expect_counts == "official":
        check_counts(report)
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
    from ..det.dior import (ANNOTATION_SUBDIR, IMAGESET_SUBDIR, TEST_IMAGE_SUBDIR, TRAINVAL_IMAGE_SUBDIR,
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
    check_split_names(splits, ("train", "val", "trainval", "test"), "dior_r")
    ok = need_dir(report, xml_dir, "DIOR-R oriented-box XMLs")
    ok = need_dir(report, sets_dir, "DIOR-R image sets") and ok
    for folder in sorted({TEST_IMAGE_SUBDIR if s == "test" else TRAINVAL_IMAGE_SUBDIR for s in splits}):
        ok = need_dir(report, root / folder, "DIOR-R JPEG images") and ok
    if not ok:
        return report
    xmls = {p.stem: p for p in list_files(xml_dir) if p.suffix == ".xml"}
    report.counts["annotations"] = len(xmls)
    for folder in (TRAINVAL_IMAGE_SUBDIR, TEST_IMAGE_SUBDIR):
        if (root / folder).is_dir():
            report.counts[folder] = sum(1 for p in list_files(root / folder) if p.suffix.lower() == ".jpg")
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
    check_images(report, images, ("jpeg",), size)
    if expect_counts == "official":
        check_counts(report)
    return report
