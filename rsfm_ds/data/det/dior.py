"""DIOR-R on disk: oriented-box XML annotations, image sets and image folders.

Layout (docs/detection_data.md)::

    <root>/Annotations/Oriented Bounding Boxes/<id>.xml
    <root>/ImageSets/Main/{train,val,test}.txt      (the mmrotate sample ships trainval.txt)
    <root>/JPEGImages-trainval/<id>.jpg             (train and val images)
    <root>/JPEGImages-test/<id>.jpg

Each ``<object>`` holds ``<name>``, ``<difficult>`` and ``<robndbox>`` with the corners
``x_left_top y_left_top x_right_top y_right_top x_right_bottom y_right_bottom x_left_bottom
y_left_bottom`` plus ``<angle>``; ``<type>``, ``<pose>`` and ``<truncated>`` are not used. The
corners are the annotation; ``<angle>`` is kept as read (degrees, its convention undocumented
by the release) and used for nothing.

Class names vary in case and hyphenation across the release (``Expressway-Service-area``,
``expresswayservicearea``): :func:`normalize_dior_name` maps every spelling to the canonical
names of :data:`DIOR_CLASSES` (mmrotate's list and order).
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from xml.parsers import expat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from ...errors import ConfigError, DataError
from .dota import AnnotationError

PathLike = Union[str, Path]

DIOR_CLASSES: Tuple[str, ...] = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney",
    "expressway-service-area", "expressway-toll-station", "dam", "golffield", "groundtrackfield",
    "harbor", "overpass", "ship", "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle",
    "windmill")

ANNOTATION_SUBDIR = Path("Annotations") / "Oriented Bounding Boxes"
IMAGESET_SUBDIR = Path("ImageSets") / "Main"
TRAINVAL_IMAGE_SUBDIR = "JPEGImages-trainval"
TEST_IMAGE_SUBDIR = "JPEGImages-test"
SPLITS = ("train", "val", "trainval", "test")

CORNER_TAGS: Tuple[str, ...] = (
    "x_left_top", "y_left_top", "x_right_top", "y_right_top",
    "x_right_bottom", "y_right_bottom", "x_left_bottom", "y_left_bottom")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


_CANONICAL: Dict[str, str] = {_key(c): c for c in DIOR_CLASSES}


def normalize_dior_name(name: str) -> Optional[str]:
    """The canonical DIOR-R class of ``name``, ignoring case, hyphens, underscores and spaces.

    ``'Expressway-Service-area'``, ``'expresswayservicearea'`` -> ``'expressway-service-area'``;
    None for a name that is no DIOR-R class.
    """
    return _CANONICAL.get(_key(name))


@dataclass
class DiorAnnotation:
    """The objects of one DIOR-R image.

    Attributes:
        polygons: ``float32 [N, 8]`` corners in the order left-top, right-top, right-bottom,
            left-bottom (``x y`` each).
        labels: ``int64 [N]`` indices into :data:`DIOR_CLASSES`.
        difficult: ``int64 [N]`` the ``<difficult>`` flag (0 when the tag is absent).
        angles: ``float32 [N]`` the ``<angle>`` values (NaN when absent).
        width, height: ``<size>`` in pixels (None when absent).
        filename: ``<filename>`` (None when absent).
    """

    polygons: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    angles: np.ndarray
    width: Optional[int] = None
    height: Optional[int] = None
    filename: Optional[str] = None
    classes: Tuple[str, ...] = DIOR_CLASSES

    def __post_init__(self) -> None:
        self.polygons = np.asarray(self.polygons, dtype=np.float32).reshape(-1, 8)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.difficult = np.asarray(self.difficult, dtype=np.int64).reshape(-1)
        self.angles = np.asarray(self.angles, dtype=np.float32).reshape(-1)
        n = len(self.polygons)
        if not len(self.labels) == len(self.difficult) == len(self.angles) == n:
            raise ValueError(f"polygons/labels/difficult/angles: lengths differ ({n}, {len(self.labels)}, "
                             f"{len(self.difficult)}, {len(self.angles)})")

    def __len__(self) -> int:
        return len(self.polygons)

    @property
    def names(self) -> List[str]:
        """Canonical class name of each object."""
        return [self.classes[i] for i in self.labels]

    @property
    def is_difficult(self) -> np.ndarray:
        """``bool [N]``: flag >= 1."""
        return self.difficult >= 1


class _Element(ET.Element):
    """An XML element that remembers the line it starts on (for error messages)."""

    line = 0


def _parse_xml(path: Path) -> _Element:
    """Parse ``path`` into elements carrying their source line numbers."""
    parser = expat.ParserCreate()

    def element(tag: str, attrs: Dict[str, str]) -> _Element:
        e = _Element(tag, attrs)
        e.line = parser.CurrentLineNumber
        return e

    builder = ET.TreeBuilder(element_factory=element)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as e:
        raise AnnotationError(f"{path}:{e.lineno}: not well-formed XML ({expat.errors.messages[e.code]})"
                              ) from None
    return builder.close()


def _child(elem: _Element, tag: str, where: str, required: bool = True, name: Optional[str] = None
           ) -> Optional[_Element]:
    """``elem``'s child ``tag``; a missing required one is an error naming ``name`` (default ``tag``)."""
    child = elem.find(tag)
    if child is None and required:
        raise AnnotationError(f"{where.format(line=elem.line)}: {name or tag}: missing")
    return child


def _number(elem: _Element, where: str, tag: str) -> float:
    text = (elem.text or "").strip()
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise AnnotationError(f"{where.format(line=elem.line)}: {tag}: not a finite number: {text!r}")
    return v


def _count(elem: _Element, where: str, tag: str) -> int:
    text = (elem.text or "").strip()
    if not text.isdigit():
        raise AnnotationError(f"{where.format(line=elem.line)}: {tag}: expected a non-negative integer, "
                              f"got {text!r}")
    return int(text)


def parse_dior_xml(path: PathLike) -> DiorAnnotation:
    """Read one DIOR-R oriented-box XML file.

    Errors read ``<file>:<line>: object <k>: <tag>: <problem>`` (k 1-based in file order; the
    line of the offending element, or of its parent when the element is missing).

    Raises:
        DataError: no such file.
        AnnotationError: not well-formed XML, root not ``<annotation>``, an object without
            ``<name>`` / ``<robndbox>`` / a corner, a non-numeric value, an unknown class.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    root = _parse_xml(path)
    if root.tag != "annotation":
        raise AnnotationError(f"{path}:{root.line}: root element is <{root.tag}>, expected <annotation>")
    width = height = None
    size = root.find("size")
    if size is not None:
        where = f"{path}:{{line}}: size"
        width = _count(_child(size, "width", where), where, "width")
        height = _count(_child(size, "height", where), where, "height")
    polys, labels, difficult, angles = [], [], [], []
    for k, obj in enumerate(root.iter("object"), start=1):
        where = f"{path}:{{line}}: object {k}"
        name_elem = _child(obj, "name", where)
        name = (name_elem.text or "").strip()
        label = normalize_dior_name(name)
        if label is None:
            raise AnnotationError(f"{where.format(line=name_elem.line)}: name: unknown class {name!r} "
                                  f"(known: {', '.join(DIOR_CLASSES)})")
        box = _child(obj, "robndbox", where)
        polys.append([_number(_child(box, tag, where, name=f"robndbox/{tag}"), where, f"robndbox/{tag}")
                      for tag in CORNER_TAGS])
        flag = _child(obj, "difficult", where, required=False)
        difficult.append(0 if flag is None else _count(flag, where, "difficult"))
        # <angle> sits beside <robndbox> in the release; some converters put it inside.
        angle = _child(obj, "angle", where, required=False)
        if angle is None:
            angle = _child(box, "angle", where, required=False)
        angles.append(math.nan if angle is None else _number(angle, where, "angle"))
        labels.append(DIOR_CLASSES.index(label))
    return DiorAnnotation(polygons=np.asarray(polys, dtype=np.float32).reshape(-1, 8), labels=labels,
                          difficult=difficult, angles=angles, width=width, height=height,
                          filename=(root.findtext("filename") or "").strip() or None)


def annotation_dir(path: PathLike) -> Path:
    """The XML folder for ``path``: a DIOR-R root, its ``Annotations`` folder or the XML folder.

    Raises:
        DataError: none of those exists.
    """
    path = Path(path)
    for candidate in (path / ANNOTATION_SUBDIR, path / ANNOTATION_SUBDIR.name, path):
        if candidate.is_dir() and any(candidate.glob("*.xml")):
            return candidate
    raise DataError(f"{path}: no DIOR-R XML files here, in {ANNOTATION_SUBDIR.name}/ or in "
                    f"{ANNOTATION_SUBDIR}/")


def read_image_set(root: PathLike, split: str) -> List[str]:
    """Image ids of ``split`` from ``ImageSets/Main/<split>.txt`` (one id per line, order kept).

    ``trainval`` reads ``trainval.txt`` when present, else ``train.txt`` then ``val.txt``.

    Raises:
        ConfigError: ``split`` is not one of train, val, trainval, test.
        DataError: the image-set file(s) are missing.
    """
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    folder = Path(root) / IMAGESET_SUBDIR
    names = [split] if split != "trainval" or (folder / "trainval.txt").is_file() else ["train", "val"]
    ids: List[str] = []
    for name in names:
        path = folder / f"{name}.txt"
        if not path.is_file():
            raise DataError(f"{path}: no such image-set file")
        ids.extend(line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    return ids


def image_path(root: PathLike, image_id: str, split: str) -> Path:
    """Where the JPEG of ``image_id`` lives: ``JPEGImages-test/`` for test, else ``JPEGImages-trainval/``."""
    folder = TEST_IMAGE_SUBDIR if split == "test" else TRAINVAL_IMAGE_SUBDIR
    return Path(root) / folder / f"{image_id}.jpg"


def load_dior_annotations(path: PathLike, image_ids: Optional[Iterable[str]] = None
                          ) -> Dict[str, DiorAnnotation]:
    """Parse the XMLs under ``path`` (see :func:`annotation_dir`): ``{image id: annotation}``.

    Args:
        path: a DIOR-R root, its ``Annotations`` folder or the XML folder itself.
        image_ids: only these images (e.g. :func:`read_image_set`); default every XML, sorted.

    Raises:
        DataError: no XML folder, or an XML missing for a requested id.
        AnnotationError: see :func:`parse_dior_xml`.
    """
    folder = annotation_dir(path)
    if image_ids is None:
        return {p.stem: parse_dior_xml(p) for p in sorted(folder.glob("*.xml"))}
    out = {}
    for image_id in image_ids:
        xml = folder / f"{image_id}.xml"
        if not xml.is_file():
            raise DataError(f"{xml}: no annotation for image {image_id!r}")
        out[image_id] = parse_dior_xml(xml)
    return out
