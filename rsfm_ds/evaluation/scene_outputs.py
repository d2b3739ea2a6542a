"""The files ``rsfm predict`` writes for a scene: DOTA-style detections, GeoJSON, index masks.

Every writer writes to a hidden temporary name next to the target and renames it, so a file under
the target name is always complete (an interrupted run leaves no half file that a re-run would take
for done). Formats (docs/predict.md):

* ``<stem>.txt``: one detection per line, ``x1 y1 x2 y2 x3 y3 x4 y4 class score``, the corners in
  scene pixels (column, row of the pixel grid's corners, the DOTA label convention) with two
  decimals, the score with four. The DOTA label format (the devkit's ``dota_utils.parse_dota_poly``)
  ends a line with ``class difficult``; here the last field is the score.
* ``<stem>.geojson``: a FeatureCollection, one Polygon Feature per detection (the four corners,
  closed, counter-clockwise in the output coordinates as RFC 7946 asks), properties ``class`` and
  ``score``. Georeferenced scenes: map coordinates in the scene's CRS, named by a ``crs`` member
  as GDAL's GeoJSON driver writes one for a CRS other than WGS 84
  (``{"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32618"}}``). Scenes without
  georeference: pixel coordinates, ``"coordinates": "pixel"`` on the collection and every feature.
* ``<stem>.tif`` (georeferenced) or ``<stem>.png`` (not): the class index mask, uint8; the GeoTIFF
  keeps the scene's CRS and transform and declares the no-data value when the scene has one.
* ``<stem>_probs.tif``: class probabilities x 255 (uint8), one band per class, written row band
  by row band as the prediction finishes them (never held for the whole scene).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ..data.images import write_image
from ..data.raster import Georef, GeoTiffRowWriter, write_geotiff
from ..errors import DataError, writing

PathLike = Union[str, Path]
WGS84 = "EPSG:4326"


def _tmp(path: Path) -> Path:
    # The suffix stays last so format-by-suffix writers (OpenCV) pick the right format.
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = _tmp(path)
    with writing(path):
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


def write_json_atomic(path: PathLike, payload: Any, indent: Optional[int] = 2) -> Path:
    """``payload`` as JSON in ``path`` (atomically); ``indent`` None writes it on one line."""
    return write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")


def dota_lines(polygons: np.ndarray, labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> str:
    """The ``<stem>.txt`` text of detections ``polygons float [N, 8]``, ``labels int [N]``,
    ``scores [N]`` (module docstring); '' for none."""
    if len(polygons) == 0:
        return ""
    coords = np.char.mod("%.2f", np.asarray(polygons, dtype=np.float64))
    names = np.asarray(class_names, dtype=object)[np.asarray(labels, dtype=np.int64)]
    fields = np.column_stack([coords, names.astype(str), np.char.mod("%.4f", np.asarray(scores, np.float64))])
    return "\n".join(" ".join(row) for row in fields) + "\n"


def geojson_crs(crs: Optional[str]) -> Optional[Dict[str, Any]]:
    """The GeoJSON ``crs`` member GDAL writes for ``crs`` (``EPSG:<code>`` or WKT); None for WGS 84
    (the GeoJSON default) or no CRS. A CRS without an EPSG code is named by its WKT."""
    if crs is None or crs.upper() == WGS84:
        return None
    name = f"urn:ogc:def:crs:EPSG::{crs.split(':', 1)[1]}" if crs.upper().startswith("EPSG:") else crs
    return {"type": "name", "properties": {"name": name}}


def detections_geojson(polygons: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                       class_names: Sequence[str], georef: Georef, name: str = "") -> Dict[str, Any]:
    """A FeatureCollection of detections ``polygons float [N, 8]`` (scene pixels) in map
    coordinates through ``georef`` (pixel coordinates when it has no transform)."""
    corners = georef.pixel_to_map(np.asarray(polygons, dtype=np.float64).reshape(-1, 4, 2))  # [N, 4, 2]
    # Shoelace sign per polygon: reverse the ones that are clockwise in the output coordinates
    # (a north-up raster flips pixel orientation), so every ring is counter-clockwise.
    x, y = corners[..., 0], corners[..., 1]
    area2 = (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)
    corners = np.where((area2 < 0)[:, None, None], corners[:, ::-1], corners)
    rings = np.concatenate([corners, corners[:, :1]], axis=1)  # closed: [N, 5, 2]
    pixel = not georef.is_georeferenced
    names = [str(n) for n in class_names]
    features = []
    for ring, label, score in zip(rings.tolist(), np.asarray(labels).tolist(), np.asarray(scores).tolist()):
        props: Dict[str, Any] = {"class": names[label], "score": round(float(score), 6)}
        if pixel:
            props["coordinates"] = "pixel"
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": props})
    out: Dict[str, Any] = {"type": "FeatureCollection"}
    if name:
        out["name"] = name
    crs = geojson_crs(georef.crs) if not pixel else None
    if crs is not None:
        out["crs"] = crs
    out["coordinates"] = "pixel" if pixel else "map"
    out["features"] = features
    return out


def mask_path(out_stem: PathLike, georef: Georef) -> Path:
    """Where :func:`write_mask` writes the mask of ``out_stem``: ``.tif`` when georeferenced, else ``.png``."""
    out_stem = Path(out_stem)
    return out_stem.with_name(out_stem.name + (".tif" if georef.is_georeferenced else ".png"))


def write_mask(out_stem: PathLike, mask: np.ndarray, georef: Georef, nodata: Optional[int] = None,
               class_names: Sequence[str] = ()) -> Path:
    """Write the class index mask ``uint8 [H, W]`` as ``<out_stem>.tif`` (with ``georef``) or
    ``<out_stem>.png``; returns the path. ``nodata``: the GeoTIFF's declared no-data value."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DataError(f"{out_stem}: a mask is uint8 [H, W], got {mask.dtype} {mask.shape}")
    path = mask_path(out_stem, georef)
    if georef.is_georeferenced:
        with writing(path):
            return write_geotiff(path, mask, georef, nodata=nodata, band_names=("class",))
    tmp = _tmp(path)
    with writing(path):
        write_image(tmp, mask)
        os.replace(tmp, path)
    return path


def quantize_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] (float) as ``uint8`` x 255, rounded: a probability to 1/255, a
    quarter of float32's memory and file size."""
    return np.clip(np.rint(probabilities * 255.0), 0, 255).astype(np.uint8)


def probabilities_writer(path: PathLike, num_classes: int, height: int, width: int, georef: Georef,
                         class_names: Sequence[str]) -> GeoTiffRowWriter:
    """The writer of ``<stem>_probs.tif``: class probabilities as a K-band uint8 GeoTIFF (x 255,
    :func:`quantize_probabilities`; band descriptions: the class names), written a band of rows
    at a time as the scene's rows are finished (its ``write_rows`` is a
    :data:`~rsfm_ds.evaluation.scene_tiling.ProbabilitySink`); use it as a ``with`` block."""
    return GeoTiffRowWriter(path, num_classes, height, width, np.uint8, georef, band_names=tuple(class_names))


__all__ = ["write_text_atomic", "write_json_atomic", "dota_lines", "geojson_crs", "detections_geojson",
           "mask_path", "write_mask", "quantize_probabilities", "probabilities_writer"]
