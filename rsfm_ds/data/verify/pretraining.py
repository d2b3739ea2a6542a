"""Verification of a MillionAID copy (the pretraining data)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from .files import check_images, check_split_names, default_splits, need_dir
from .report import PathLike, VerifyReport, check_counts


# --- MillionAID ---------------------------------------------------------------------------------

def verify_millionaid(root: PathLike, expect_counts: str = "official",
                      splits: Optional[Sequence[str]] = None) -> VerifyReport:
    """MillionAID: ``train/<L1>/<L2>/[<L3>]/*.jpg`` (the labelled class tree) and, if present,
    ``test/`` (the unlabelled images, any folder depth).

    Checks: ``train/`` exists and holds images in the class tree (files elsewhere in it are
    warnings: the shard writer skips them); every image file starts with the JPEG signature;
    official counts: 51 leaves, 28 second-level and 8 top-level nodes, and the image counts.
    """
    from ..pretrain.millionaid import IMAGE_EXTENSIONS, scan_millionaid

    root = Path(root)
    report = VerifyReport("millionaid", root)
    splits = list(splits) if splits else default_splits(root, ["train"], ["test"], lambda r, s: (r / s).is_dir())
    check_split_names(splits, ("train", "test"), "millionaid")
    jpegs: List[Path] = []
    if "train" in splits and need_dir(report, root / "train", "MillionAID's train/<L1>/<L2>/[<L3>]/ class tree"):
        scan = scan_millionaid(root, "train")
        for skipped in scan.skipped:
            report.warning(root / skipped.path, f"{skipped.reason}; the shard writer skips it")
        if not scan.images:
            report.error(root / "train", "no .jpg images 2 or 3 folders below train/ (the class tree)")
        l1, l2, leaves = scan.level_counts()
        report.counts.update({"train/images": len(scan.images), "train/leaf_classes": leaves,
                              "train/second_level_classes": l2, "train/top_level_classes": l1})
        jpegs += [root / image.relpath for image in scan.images]
    if "test" in splits and need_dir(report, root / "test", "MillionAID's test/ images"):
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
    check_images(report, jpegs, ("jpeg",))
    if expect_counts == "official":
        check_counts(report)
    return report


def _depth_text(depths: Iterable[int]) -> str:
    """Where files sit, from their folder depths below test/."""
    depths = sorted(depths)
    if depths == [0]:
        return "directly in test/"
    return f"{' or '.join(map(str, depths))} folders below test/"
