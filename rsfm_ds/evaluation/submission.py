"""Benchmark test-server archives: DOTA Task 1 and LoveDA semantic segmentation.

Both servers take one ``.zip`` whose files lie at its top level (no folder inside).

**DOTA (Task 1, oriented boxes).** One ``Task1_<class>.txt`` per class of the dataset's class
list, the classes spelt as the dataset spells them (``small-vehicle``, ``container-crane``,
``airport``, ``helipad``); a class without detections still gets its (empty) file. Each line is
``<image id> <score> x1 y1 x2 y2 x3 y3 x4 y4`` on the whole test image's pixels, i.e. patch
detections already merged back (:func:`rsfm_ds.data.det.merge.merge_detections`). Sources: the
DOTA website's Task 1 submission format (``captain-whu.github.io/DOTA/tasks.html``: "a zip file
containing results for all test images ... ``Task1_plane.txt, Task1_storage-tank.txt, ...``") and
mmrotate 0.x ``mmrotate/datasets/dota.py`` (``DOTADataset._results2submission``: opens a file for
every class of ``CLASSES``, writes ``img_id score`` and the polygon, and zips the files with their
bare names, ``ZIP_DEFLATED``). Our lines carry the score at full precision and coordinates to three
decimals (mmrotate writes two); the devkit parses both as floats.

**LoveDA (semantic segmentation, CodaLab).** One single-channel ``uint8`` PNG per test image,
named as the image (``<id>.png``), of class indices **0..6** in the order background, building,
road, water, barren, forest, agriculture: the release masks' values minus one. Sources: LoveDA's
official ``Semantic_Segmentation/predict.py`` (Junjue-Wang/LoveDA) saves the argmax of a model
trained on ``mask - 1`` (``data/loveda.py``) under the image's file name, and mmseg 0.x
``mmseg/datasets/loveda.py`` (``LoveDADataset.results2img``: "The index range of official
requirement is from 0 to 6"). mmseg 1.x's generic ``IoUMetric`` with ``format_only`` adds 1 to
the prediction of every reduce-zero-label dataset (an ADE20K convention), which would give the
raw mask values 1..7; that variant is :data:`LOVEDA_ENCODINGS` ``"mask"``, not the default.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import cv2
import numpy as np

from ..data.det.dota import TASK1_PREFIX, Detections, format_task1_lines
from ..errors import ConfigError, DataError, writing

PathLike = Union[str, Path]

LOVEDA_ENCODINGS: Dict[str, int] = {"index": 0, "mask": 1}
"""How a LoveDA prediction is stored: value added to the class index 0..6. ``index`` (0..6) is what
the LoveDA server scores; ``mask`` (1..7, the release masks' values) is mmseg 1.x's format_only."""
LOVEDA_NUM_CLASSES = 7


def check_archive_path(out: PathLike, inputs: Iterable[PathLike]) -> Path:
    """The archive ``out``, checked before anything runs: a ``.zip`` name, a parent folder that
    exists, and not one of ``inputs`` nor inside one of those folders (an archive written into the
    images folder would be read as an image next time).

    Raises:
        ConfigError: naming ``out``.
    """
    path = Path(out)
    if path.suffix.lower() != ".zip":
        raise ConfigError(f"--out {out}: the archive must be a .zip file")
    if not path.resolve().parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {path.parent} does not exist")
    resolved = path.resolve()
    for item in inputs:
        src = Path(item).resolve()
        if resolved == src or src in resolved.parents:
            raise ConfigError(f"--out {out}: the archive would be written inside the input {item}; "
                              f"choose a path outside it")
    return path


class _Archive:
    """A zip written to ``<out>.partial`` and renamed onto ``out`` when complete, so a run that
    fails half-way leaves no archive that looks whole."""

    def __init__(self, out: PathLike):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.zip = zipfile.ZipFile(self.partial, "w")

    def add(self, name: str, data: bytes, compress: bool) -> None:
        with writing(self.partial):
            self.zip.writestr(name, data, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)

    def close(self) -> None:
        with writing(self.partial):
            self.zip.close()
        os.replace(self.partial, self.out)

    def abort(self) -> None:
        self.zip.close()
        self.partial.unlink(missing_ok=True)


@dataclass
class SubmissionReport:
    """What an archive holds.

    Attributes:
        path: the ``.zip`` written.
        files: member names, in the order written.
        counts: DOTA: detections per class; LoveDA: images per domain (empty when unknown).
    """

    path: Path
    files: List[str] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)


def write_dota_submission(detections: Mapping[str, Detections], classes: Sequence[str],
                          out: PathLike) -> SubmissionReport:
    """Write the DOTA Task 1 archive: ``Task1_<class>.txt`` for every class of ``classes`` (the
    dataset's whole list, in order), at the top level of ``out``.

    Args:
        detections: ``{class: detections}`` on whole images; classes missing here (a detector
            trained on a subset) get empty files.
        classes: the dataset's class list.
        out: the ``.zip`` path.

    Raises:
        DataError: a class of ``detections`` outside ``classes`` (it would be silently dropped).
    """
    unknown = sorted(set(detections) - set(classes))
    if unknown:
        raise DataError(f"detections of {unknown}, which are not classes of the dataset ({', '.join(classes)})")
    archive = _Archive(out)
    report = SubmissionReport(Path(out))
    try:
        for name in classes:
            dets = detections.get(name, Detections())
            member = f"{TASK1_PREFIX}{name}.txt"
            archive.add(member, format_task1_lines(dets).encode("utf-8"), compress=True)
            report.files.append(member)
            report.counts[name] = len(dets)
        archive.close()
    except BaseException:
        archive.abort()
        raise
    return report


def encode_loveda_prediction(pred: np.ndarray, encoding: str = "index") -> bytes:
    """PNG bytes of one LoveDA prediction ``[H, W]`` of class indices 0..6 under ``encoding``.

    Raises:
        ConfigError: unknown ``encoding``.
        DataError: not ``[H, W]`` or a value outside 0..6.
    """
    if encoding not in LOVEDA_ENCODINGS:
        raise ConfigError(f"encoding: expected one of {', '.join(LOVEDA_ENCODINGS)}, got {encoding!r}")
    pred = np.asarray(pred)
    if pred.ndim != 2 or (pred.size and (pred.min() < 0 or pred.max() >= LOVEDA_NUM_CLASSES)):
        raise DataError(f"a LoveDA prediction is [H, W] of class indices 0..{LOVEDA_NUM_CLASSES - 1}, got shape "
                        f"{pred.shape}" + (f" values {pred.min()}..{pred.max()}" if pred.size else ""))
    ok, png = cv2.imencode(".png", (pred + LOVEDA_ENCODINGS[encoding]).astype(np.uint8))
    if not ok:
        raise DataError(f"PNG encoding failed for a prediction of shape {pred.shape}")
    return png.tobytes()


def write_loveda_submission(predictions: Iterable[Tuple[str, np.ndarray]], out: PathLike,
                            encoding: str = "index") -> SubmissionReport:
    """Write the LoveDA archive from ``(image file name, class indices [H, W])`` pairs, consumed
    one at a time (a test set of 1796 1024-px images is never held in memory): one PNG per image,
    named ``<stem>.png``, at the top level of ``out``.

    Raises:
        ConfigError: unknown ``encoding``.
        DataError: two images with the same name (the server would see one), no prediction at
            all, or a bad prediction (:func:`encode_loveda_prediction`).
    """
    if encoding not in LOVEDA_ENCODINGS:
        raise ConfigError(f"encoding: expected one of {', '.join(LOVEDA_ENCODINGS)}, got {encoding!r}")
    archive = _Archive(out)
    report = SubmissionReport(Path(out))
    seen = set()
    try:
        for name, pred in predictions:
            member = f"{Path(name).stem}.png"
            if member in seen:
                raise DataError(f"two test images are named {member}; the archive is flat, names must be unique")
            seen.add(member)
            # PNG data is already compressed: stored as is.
            archive.add(member, encode_loveda_prediction(pred, encoding), compress=False)
            report.files.append(member)
        if not report.files:
            raise DataError("no prediction to write")
        archive.close()
    except BaseException:
        archive.abort()
        raise
    return report


__all__ = ["LOVEDA_ENCODINGS", "SubmissionReport", "check_archive_path", "write_dota_submission",
           "encode_loveda_prediction", "write_loveda_submission"]
