"""DOTA file formats: ``labelTxt`` annotations and ``Task1_<class>.txt`` result files.

Label file (docs/detection_data.md), one per image, ``labelTxt/<image id>.txt``::

    imagesource:GoogleEarth          optional header lines, before the first object
    gsd:0.255589285596               (ground sample distance, metres/pixel; 'null' = unknown)
    x1 y1 x2 y2 x3 y3 x4 y4 class difficult
    ...

The difficult flag may be missing (= 0). Values above 1 occur in files written by the DOTA
devkit's splitter (2 = cut by a patch border); like the devkit's evaluation, every value >= 1
counts as difficult. Lines are split on any whitespace, so CRLF files (the official ones) parse.

Result file (Task 1, oriented boxes), one per class, ``Task1_<class>.txt``::

    <image id> <score> x1 y1 x2 y2 x3 y3 x4 y4

Every parse error names the file, the 1-based line number and the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import ConfigError, DataError

PathLike = Union[str, Path]

DOTA_V1_CLASSES: Tuple[str, ...] = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle",
    "ship", "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout",
    "harbor", "swimming-pool", "helicopter")
DOTA_V15_CLASSES: Tuple[str, ...] = DOTA_V1_CLASSES + ("container-crane",)
DOTA_V2_CLASSES: Tuple[str, ...] = DOTA_V15_CLASSES + ("airport", "helipad")

DOTA_CLASS_LISTS: Dict[str, Tuple[str, ...]] = {
    "dota1": DOTA_V1_CLASSES, "dota1.5": DOTA_V15_CLASSES, "dota2": DOTA_V2_CLASSES}

TASK1_PREFIX = "Task1_"


class AnnotationError(DataError):
    """A label or result file is malformed. The message names the file, line and field."""


def dota_classes(version: str) -> Tuple[str, ...]:
    """The class list of a DOTA version: ``'dota1'`` (15), ``'dota1.5'`` (16) or ``'dota2'`` (18)."""
    if version not in DOTA_CLASS_LISTS:
        raise ConfigError(f"dataset: unknown DOTA version {version!r}; choose one of "
                          f"{', '.join(DOTA_CLASS_LISTS)}")
    return DOTA_CLASS_LISTS[version]


@dataclass
class DotaAnnotation:
    """The objects of one image.

    Attributes:
        polygons: ``float32 [N, 8]`` corners ``x1 y1 ... x4 y4`` in pixels, in file order.
        labels: ``int64 [N]`` indices into ``classes``.
        difficult: ``int64 [N]`` the file's flag (0 = normal, >= 1 = difficult).
        classes: the class list ``labels`` index into.
        source: the ``imagesource:`` header, or None.
        gsd: the ``gsd:`` header in metres/pixel, or None (absent or ``null``).
        skipped: malformed lines skipped (only with ``lenient=True``).
        unknown: objects of class names outside ``classes``, skipped (only with
            ``skip_unknown=True``), by name.
    """

    polygons: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    classes: Tuple[str, ...] = DOTA_V2_CLASSES
    source: Optional[str] = None
    gsd: Optional[float] = None
    skipped: int = 0
    unknown: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.polygons = np.asarray(self.polygons, dtype=np.float32).reshape(-1, 8)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.difficult = np.asarray(self.difficult, dtype=np.int64).reshape(-1)
        n = len(self.polygons)
        if len(self.labels) != n or len(self.difficult) != n:
            raise ValueError(f"polygons/labels/difficult: lengths differ ({n}, {len(self.labels)}, "
                             f"{len(self.difficult)})")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels: must index the {len(self.classes)} classes, got "
                             f"{self.labels.min()}..{self.labels.max()}")

    def __len__(self) -> int:
        return len(self.polygons)

    @property
    def names(self) -> List[str]:
        """Class name of each object."""
        return [self.classes[i] for i in self.labels]

    @property
    def is_difficult(self) -> np.ndarray:
        """``bool [N]``: flag >= 1."""
        return self.difficult >= 1


def _header(key: str, value: str, where: str) -> Union[str, Optional[float]]:
    if key == "imagesource":
        return value
    if value.lower() in ("", "null", "none"):
        return None
    try:
        gsd = float(value)
    except ValueError:
        raise AnnotationError(f"{where}: gsd: not a number: {value!r}") from None
    if not math.isfinite(gsd) or gsd <= 0:
        raise AnnotationError(f"{where}: gsd: must be a positive number, got {value!r}")
    return gsd


def _object_fields(parts: List[str], where: str) -> Tuple[List[float], str, int]:
    """Parse ``x1 .. y4 class [difficult]``; raise AnnotationError naming the bad field."""
    if len(parts) not in (9, 10):
        raise AnnotationError(f"{where}: expected 9 or 10 fields (x1 y1 ... x4 y4 class [difficult]), "
                              f"got {len(parts)}")
    coords = []
    for i, text in enumerate(parts[:8]):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            axis = "xy"[i % 2]
            raise AnnotationError(f"{where}: {axis}{i // 2 + 1}: not a finite number: {text!r}")
        coords.append(v)
    difficult = 0
    if len(parts) == 10:
        try:
            difficult = int(parts[9])
        except ValueError:
            difficult = -1
        if difficult < 0:
            raise AnnotationError(f"{where}: difficult: expected a non-negative integer, got {parts[9]!r}")
    return coords, parts[8], difficult


def parse_dota_lines(lines: Iterable[str], source_name: str, classes: Sequence[str] = DOTA_V2_CLASSES,
                     lenient: bool = False, skip_unknown: bool = False) -> DotaAnnotation:
    """Parse the lines of a DOTA label file; ``source_name`` names it in error messages.

    Args:
        lines: the file's lines (line endings are ignored).
        source_name: file name used in messages (``<name>:<line>: <field>: ...``).
        classes: the allowed class names; labels index into it.
        lenient: skip malformed lines and count them in ``skipped`` instead of raising.
            Unknown class names are an error either way (a wrong class list is not noise).
        skip_unknown: drop objects of class names outside ``classes`` and count them in
            ``unknown`` (own-class datasets that label more classes than they train on).

    Raises:
        AnnotationError: a malformed line (unless lenient), a repeated or late header, or an
            unknown class name.
    """
    classes = tuple(classes)
    index = {name: i for i, name in enumerate(classes)}
    polys: List[List[float]] = []
    labels: List[int] = []
    difficult: List[int] = []
    headers: Dict[str, object] = {}
    skipped = 0
    unknown: Dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        where = f"{source_name}:{lineno}"
        key, sep, value = text.partition(":")
        if sep and key.strip().lower() in ("imagesource", "gsd"):
            key = key.strip().lower()
            if polys or key in headers:
                problem = "repeated" if key in headers else "after the first object"
                if not lenient:
                    raise AnnotationError(f"{where}: {key}: header line {problem}")
                skipped += 1
                continue
            headers[key] = _header(key, value.strip(), where)
            continue
        try:
            coords, name, flag = _object_fields(text.split(), where)
        except AnnotationError:
            if not lenient:
                raise
            skipped += 1
            continue
        if name not in index and skip_unknown:
            unknown[name] = unknown.get(name, 0) + 1
            continue
        if name not in index:
            raise AnnotationError(f"{where}: class: unknown class {name!r} (known: {', '.join(classes)})")
        polys.append(coords)
        labels.append(index[name])
        difficult.append(flag)
    return DotaAnnotation(polygons=np.asarray(polys, dtype=np.float32).reshape(-1, 8), labels=labels,
                          difficult=difficult, classes=classes, source=headers.get("imagesource"),
                          gsd=headers.get("gsd"), skipped=skipped, unknown=unknown)


def parse_dota_label(path: PathLike, classes: Sequence[str] = DOTA_V2_CLASSES,
                     lenient: bool = False, skip_unknown: bool = False) -> DotaAnnotation:
    """Read one ``labelTxt/<id>.txt`` file. See :func:`parse_dota_lines`.

    Raises:
        DataError: no such file.
        AnnotationError: see :func:`parse_dota_lines`; also a file that is not UTF-8 text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, which some editors add, is dropped
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_dota_lines(text.splitlines(), str(path), classes, lenient, skip_unknown)


def load_dota_labels(label_dir: PathLike, classes: Sequence[str] = DOTA_V2_CLASSES,
                     lenient: bool = False) -> Dict[str, DotaAnnotation]:
    """Read every ``*.txt`` of ``label_dir``: ``{image id (file stem): annotation}``, sorted by id.

    Raises:
        DataError: ``label_dir`` is not a folder.
        AnnotationError: see :func:`parse_dota_lines`.
    """
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: no such folder (expected DOTA labelTxt files)")
    return {p.stem: parse_dota_label(p, classes, lenient) for p in sorted(label_dir.glob("*.txt"))}


def format_coordinates(values: np.ndarray) -> List[str]:
    """Coordinates as text with at most 3 decimals, trailing zeros trimmed (``12``, ``12.5``)."""
    out = []
    for v in np.asarray(values, dtype=np.float64).reshape(-1):
        s = f"{v:.3f}".rstrip("0").rstrip(".")
        out.append("0" if s in ("-0", "") else s)
    return out


def format_dota_label(ann: DotaAnnotation) -> str:
    """The text of a label file: header lines (when known), then one object per line."""
    lines = []
    if ann.source is not None:
        lines.append(f"imagesource:{ann.source}")
    if ann.gsd is not None:
        lines.append(f"gsd:{ann.gsd!r}")
    coords = format_coordinates(ann.polygons)
    for i, (label, flag) in enumerate(zip(ann.labels, ann.difficult)):
        lines.append(" ".join(coords[8 * i: 8 * i + 8] + [ann.classes[label], str(int(flag))]))
    return "".join(line + "\n" for line in lines)


def write_dota_label(path: PathLike, ann: DotaAnnotation) -> None:
    """Write ``ann`` as a DOTA label file (LF line endings, UTF-8)."""
    Path(path).write_text(format_dota_label(ann), encoding="utf-8")


@dataclass
class Detections:
    """Oriented detections of one class, over many images (one Task1 file).

    Attributes:
        image_ids: ``str [D]`` image of each detection.
        scores: ``float64 [D]`` confidences.
        polygons: ``float64 [D, 8]`` corners ``x1 y1 ... x4 y4``.
    """

    image_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    polygons: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=str).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.polygons = np.asarray(self.polygons, dtype=np.float64).reshape(-1, 8)
        if not len(self.image_ids) == len(self.scores) == len(self.polygons):
            raise ValueError(f"image_ids/scores/polygons: lengths differ ({len(self.image_ids)}, "
                             f"{len(self.scores)}, {len(self.polygons)})")

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, index: np.ndarray) -> "Detections":
        """The detections at ``index`` (integer indices or a boolean mask)."""
        return Detections(self.image_ids[index], self.scores[index], self.polygons[index])

    @staticmethod
    def concat(parts: Sequence["Detections"]) -> "Detections":
        """All detections of ``parts``, in order."""
        if not parts:
            return Detections()
        return Detections(np.concatenate([p.image_ids for p in parts]),
                          np.concatenate([p.scores for p in parts]),
                          np.concatenate([p.polygons for p in parts]))


def parse_task1_lines(lines: Iterable[str], source_name: str) -> Detections:
    """Parse the lines of a Task1 result file (``image score x1 y1 ... x4 y4``); blank lines skipped.

    Raises:
        AnnotationError: a line without exactly 10 fields, or a non-finite score/coordinate.
    """
    ids: List[str] = []
    values: List[List[float]] = []
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{source_name}:{lineno}"
        if len(parts) != 10:
            raise AnnotationError(f"{where}: expected 10 fields (image score x1 y1 ... x4 y4), "
                                  f"got {len(parts)}")
        row = []
        for name, text in zip(("score", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4"), parts[1:]):
            try:
                v = float(text)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise AnnotationError(f"{where}: {name}: not a finite number: {text!r}")
            row.append(v)
        ids.append(parts[0])
        values.append(row)
    arr = np.asarray(values, dtype=np.float64).reshape(-1, 9)
    return Detections(np.asarray(ids, dtype=str), arr[:, 0], arr[:, 1:])


def read_task1_file(path: PathLike) -> Detections:
    """Read one ``Task1_<class>.txt`` file. See :func:`parse_task1_lines`."""
    path = Path(path)
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark, which some editors add, is dropped
        return parse_task1_lines(f, str(path))


def read_task1_dir(det_dir: PathLike, classes: Sequence[str]) -> Dict[str, Detections]:
    """Read ``det_dir/Task1_<class>.txt`` for every class: ``{class: detections}``.

    A class without a file has no detections. Files ``Task1_*.txt`` naming a class outside
    ``classes`` are an error (most often the wrong ``--dataset``).

    Raises:
        DataError: ``det_dir`` is not a folder.
        AnnotationError: a malformed file, or a file for an unknown class.
    """
    det_dir = Path(det_dir)
    if not det_dir.is_dir():
        raise DataError(f"{det_dir}: no such folder (expected Task1_<class>.txt files)")
    known = set(classes)
    for path in sorted(det_dir.glob(f"{TASK1_PREFIX}*.txt")):
        name = path.stem[len(TASK1_PREFIX):]
        if name not in known:
            raise AnnotationError(f"{path}: class: unknown class {name!r} (known: {', '.join(classes)})")
    out = {}
    for name in classes:
        path = det_dir / f"{TASK1_PREFIX}{name}.txt"
        out[name] = read_task1_file(path) if path.is_file() else Detections()
    return out


def format_task1_lines(dets: Detections) -> str:
    """The text of a Task1 file: scores at full precision, coordinates to 3 decimals."""
    coords = format_coordinates(dets.polygons)
    return "".join(
        f"{image} {float(score)!r} {' '.join(coords[8 * i: 8 * i + 8])}\n"
        for i, (image, score) in enumerate(zip(dets.image_ids, dets.scores)))


def write_task1_dir(det_dir: PathLike, detections: Mapping[str, Detections],
                    classes: Optional[Sequence[str]] = None) -> List[Path]:
    """Write ``det_dir/Task1_<class>.txt`` per class (an empty file for a class without detections).

    Args:
        det_dir: output folder, created if missing.
        detections: ``{class: detections}``.
        classes: classes to write (default: the keys of ``detections``); the evaluation server
            expects one file per class of the dataset.

    Returns:
        The files written, in class order.
    """
    det_dir = Path(det_dir)
    det_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (classes if classes is not None else list(detections)):
        path = det_dir / f"{TASK1_PREFIX}{name}.txt"
        path.write_text(format_task1_lines(detections.get(name, Detections())), encoding="utf-8")
        written.append(path)
    return written
