"""``rsfm predict det|seg``: a fine-tuned model run over images and scenes of any size.

A scene (GeoTIFF, TIFF, JPEG, PNG: :mod:`rsfm_ds.data.raster`) is cut into tiles of the model's
input size with overlap (:class:`~rsfm_ds.evaluation.scene_tiling.TileGrid`: the DOTA devkit's
split grid, mmseg's sliding windows); each tile is read from the file by itself (a raster window,
so a large scene is never held whole at full precision), normalised as the model was trained
(``(raw - mean) / std`` per band in raw units), padded with zeros (the mean) to the tile size
where the scene is smaller, and tiles go through the model ``batch_size`` at a time.

* Detection: boxes move from tile to scene pixels and are merged across tiles by per-class rotated
  NMS at IoU 0.1, as mmrotate's ``inference_detector_by_patches`` / ``merge_results``
  (``mmrotate/apis/inference.py``) and the DOTA devkit's ``ResultMerge_multi_process.py`` do
  (:func:`~rsfm_ds.evaluation.scene_tiling.merge_tile_detections`).
* Segmentation: logits of overlapping tiles are averaged (sum of logits / number of tiles
  covering a pixel), mmseg's ``slide_inference`` as
  :func:`~rsfm_ds.evaluation.sliding_window.sliding_window_inference` computes it, but band by
  band: the rows above the next row of tiles are final once that row starts, so only one band of
  logits (``K x tile x width``) is held, whatever the scene's height. Pixels where every band holds
  the scene's declared nodata value enter the model as zeros and come out as :data:`NODATA_CLASS`.

The per-scene steps are in :mod:`rsfm_ds.engine.scene_prediction`; several ranks sharing the
scenes: :mod:`rsfm_ds.engine.predict_ranks`. Output files and their formats:
:mod:`rsfm_ds.evaluation.scene_outputs` and docs/predict.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import check
from ..data.raster import RASTERIO_SUFFIXES, BandNormalization, read_raster
from ..errors import ConfigError, DataError, RunError, check_output_is_not_input
from ..evaluation.scene_outputs import (detections_geojson, dota_lines, mask_path, probabilities_writer,
                                         write_json_atomic, write_mask, write_text_atomic)
from .inference import InferenceOptions
from .loop import collective_failure
from .predict_ranks import PredictWorld, share_by_size
from .scene_prediction import (NODATA_CLASS, SceneDetections, SceneInput, SceneSegmentation, check_input,
                               list_inputs, predict_scene_detections, predict_scene_segmentation)

PathLike = Union[str, Path]
DOTA_GAP_FRACTION = 200 / 1024
"""Default detection overlap as a fraction of the tile: mmrotate's ``demo/huge_image_demo.py``
runs 1024 px patches every 824 px, the gap of 200 of the DOTA devkit's ``ImgSplit_multi_process.py``."""
SUMMARY = "predictions.json"
_PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
SUMMARY_VERSION = 1


@dataclass(frozen=True)
class PredictOptions:
    """How ``rsfm predict`` tiles, runs and writes (per process; several processes share the
    scenes: :mod:`rsfm_ds.engine.predict_ranks`)."""

    tile: Optional[int] = None
    """Tile side in pixels; null: the size the model was trained on (detection:
    ``backbone.img_size``; segmentation: ``data.crop_size``)."""
    overlap: Optional[int] = None
    """Pixels shared by neighbouring tiles; null: detection ``round(tile * 200 / 1024)`` (the
    DOTA split's gap), segmentation ``crop_size - eval_stride`` (the evaluation's windows)."""
    batch_size: int = 4
    """Tiles per forward pass."""
    device: Optional[str] = None
    """cpu, cuda or cuda:N; null: a GPU if there is one."""
    precision: Optional[str] = None
    """fp32, bf16 or fp16; null: the config's train.precision on a GPU, fp32 on the CPU."""
    score_thr: Optional[float] = None
    """Detection: keep (box, class) pairs scoring above this (the config's model.roi.score_thr,
    mmrotate's 0.05, when null)."""
    iou_thr: float = 0.1
    """Detection: rotated IoU of the cross-tile merge (the DOTA devkit's 0.1)."""
    bands: Optional[Tuple[int, ...]] = None
    """1-based bands read from every input, in the model's order; null: the config's (data.bands),
    else all of the file's."""
    overwrite: bool = False
    """Replace existing outputs; otherwise an input whose outputs all exist is skipped and only the
    missing outputs of the others are written."""
    probabilities: bool = False
    """Segmentation: also write ``<stem>_probs.tif``, class probabilities (uint8, x255)."""
    overlay: bool = True
    """Write ``<stem>_overlay.png``."""
    overlay_max_side: int = 4096
    """Longest side of the overlay picture; larger scenes are shown reduced."""
    progress: bool = True
    """A progress bar over the tiles of each input (stderr)."""

    def __post_init__(self) -> None:
        check(self.tile is None or self.tile >= 32, "tile", f"must be >= 32 px, got {self.tile}")
        check(self.overlap is None or self.overlap >= 0, "overlap", f"must be >= 0, got {self.overlap}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.score_thr is None or 0.0 <= self.score_thr < 1.0, "score_thr",
              f"must be in [0, 1), got {self.score_thr}")
        check(0.0 <= self.iou_thr <= 1.0, "iou_thr", f"must be in [0, 1], got {self.iou_thr}")
        check(self.bands is None or (len(self.bands) > 0 and min(self.bands) >= 1), "bands",
              f"1-based band numbers, got {self.bands}")
        check(self.overlay_max_side >= 16, "overlay_max_side", f"must be >= 16, got {self.overlay_max_side}")
        InferenceOptions(device=self.device, precision=self.precision)  # validates both

    def inference(self, local_rank: Optional[int] = None) -> InferenceOptions:
        """The model's options; ``local_rank`` (one of several ranks on a node) makes ``cuda``,
        or the default on a GPU machine, ``cuda:<local_rank>``."""
        device = self.device
        if local_rank is not None and device in (None, "cuda") and torch.cuda.is_available():
            # A launcher that gives each rank only its own GPU makes it device 0 of one.
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
        return InferenceOptions(device=device, precision=self.precision, batch_size=self.batch_size, workers=0)


# ---------------------------------------------------------------------------- what the task says


def task_inputs(task) -> Tuple[BandNormalization, Optional[Tuple[int, ...]], bool]:
    """``(normalisation, 1-based bands or None for all, 8-bit input required)`` of the task
    (``FinetuneTask.inputs()``: the config's data.bands / band_mean / band_std / band_stats)."""
    inputs = task.inputs()
    bands = tuple(inputs.bands) if inputs.bands is not None else None
    return inputs.normalization, bands, bool(inputs.require_8bit)


def task_classes(task) -> Tuple[str, ...]:
    """The class names, in the model's order."""
    return tuple(task.class_names())


def model_in_chans(cfg) -> int:
    """Input channels of the config's backbone."""
    return int(cfg.backbone.in_chans)


def default_tiling(task_name: str, cfg, options: PredictOptions) -> Tuple[int, int]:
    """``(tile, overlap)`` of ``options``, defaults from the run config (:class:`PredictOptions`)."""
    if task_name == "det":
        tile = options.tile or cfg.backbone.img_size
        overlap = options.overlap if options.overlap is not None else int(round(tile * DOTA_GAP_FRACTION))
    else:
        tile = options.tile or cfg.data.crop_size
        if options.overlap is not None:
            overlap = options.overlap
        else:
            overlap = max(cfg.data.crop_size - cfg.data.eval_stride, 0) if tile == cfg.data.crop_size else 0
    check(overlap < tile, "overlap", f"{overlap} must be smaller than the tile ({tile} px)")
    return tile, overlap


# ---------------------------------------------------------------------------- files


def output_paths(task_name: str, scene: SceneInput, out_dir: Path, options: PredictOptions) -> Dict[str, Path]:
    """The files written for ``scene`` (docs/predict.md) by kind (``txt``, ``geojson``, ``mask``,
    ``probs``, ``overlay``), the prediction's own first. Writers are chosen by kind, not by file
    name, which a scene's own name (``x_overlay.png``) could imitate."""
    stem = scene.path.stem
    if task_name == "det":
        paths = {"txt": out_dir / f"{stem}.txt", "geojson": out_dir / f"{stem}.geojson"}
    else:
        paths = {"mask": mask_path(out_dir / stem, scene.info.georef)}
        if options.probabilities:
            paths["probs"] = out_dir / f"{stem}_probs.tif"
    if options.overlay:
        paths["overlay"] = out_dir / f"{stem}_overlay.png"
    return paths


def check_output_names(plans: Sequence[Tuple[SceneInput, Dict[str, Path]]]) -> None:
    """Refuse two inputs whose outputs share a file name (``a.tif``'s ``a_overlay.png`` and the
    mask of ``a_overlay.png``): one would overwrite the other, or be skipped as done.

    Raises:
        DataError: naming both inputs and the file.
    """
    owner: Dict[Path, Path] = {}
    for scene, paths in plans:
        for path in paths.values():
            if path in owner and owner[path] != scene.path:
                raise DataError(f"{scene.path}: its output {path.name} is also an output of {owner[path]}; "
                                f"rename one of them or predict them into different --out folders")
            owner[path] = scene.path


def _display_bands(scene: SceneInput) -> Optional[Tuple[int, int, int]]:
    """0-based positions of the red, green and blue bands among those read, when the file names
    them; None (the first three) otherwise."""
    read = scene.bands or tuple(range(1, scene.info.count + 1))
    names = [scene.info.band_names[b - 1].lower() if b - 1 < len(scene.info.band_names) else "" for b in read]
    if all(c in names for c in ("red", "green", "blue")):
        return names.index("red"), names.index("green"), names.index("blue")
    return None


def _overview(scene: SceneInput, max_side: int) -> Tuple[np.ndarray, int]:
    """``(raw [C, h, w], step)``: the scene's pixels every ``step``-th row and column, so the
    longest side is at most ``max_side`` (read decimated by GDAL for rasters it reads)."""
    info = scene.info
    step = max(1, math.ceil(max(info.height, info.width) / max_side))
    if step == 1:
        return read_raster(scene.path, bands=scene.bands), 1
    shape = (-(-info.height // step), -(-info.width // step))
    if scene.path.suffix.lower() in RASTERIO_SUFFIXES:
        import rasterio

        with rasterio.open(scene.path) as src:
            index = list(scene.bands) if scene.bands else list(range(1, src.count + 1))
            return src.read(index, out_shape=(len(index),) + shape), step
    return read_raster(scene.path, bands=scene.bands)[:, ::step, ::step], step


def _overlay(scene: SceneInput, options: PredictOptions, classes: Sequence[str],
             dets: Optional[SceneDetections], seg: Optional[SceneSegmentation]) -> np.ndarray:
    from ..evaluation.overlays import blend_mask, class_palette, display_rgb, draw_polygons

    raw, step = _overview(scene, options.overlay_max_side)
    picture = display_rgb(raw, _display_bands(scene), scene.info.nodata)
    if dets is not None:
        return draw_polygons(picture, dets.polygons / step, dets.labels, classes, dets.scores)
    return blend_mask(picture, seg.mask[::step, ::step], class_palette(len(classes)), 0.5, NODATA_CLASS)


def _write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    from ..evaluation.overlays import write_png

    tmp = path.with_name(f".{path.stem}.tmp.png")
    write_png(tmp, rgb)
    tmp.replace(path)


def _write_outputs(task_name: str, scene: SceneInput, result, classes: Sequence[str], todo: Dict[str, Path],
                   options: PredictOptions) -> None:
    """Write the outputs of ``scene`` in ``todo`` (kind -> path, :func:`output_paths`), each atomically."""
    georef = scene.info.georef
    for kind, path in todo.items():
        if kind == "overlay":
            dets, seg = (result, None) if task_name == "det" else (None, result)
            _write_png_atomic(path, _overlay(scene, options, classes, dets, seg))
        elif kind == "txt":
            write_text_atomic(path, dota_lines(result.polygons, result.labels, result.scores, classes))
        elif kind == "geojson":
            write_json_atomic(path, detections_geojson(result.polygons, result.labels, result.scores, classes,
                                                       georef, name=scene.path.stem), indent=None)
        elif kind == "probs":
            continue  # written while predicting (predict_files)
        else:
            write_mask(path.with_suffix(""), result.mask, georef,
                       NODATA_CLASS if scene.info.nodata is not None else None, classes)


def _counts(task_name: str, result, classes: Sequence[str]) -> Dict[str, int]:
    """Detections (det) or pixels (seg) per class, every class listed."""
    values = result.labels if task_name == "det" else result.mask[result.mask != NODATA_CLASS]
    n = np.bincount(np.asarray(values, dtype=np.int64).ravel(), minlength=len(classes))
    return {c: int(v) for c, v in zip(classes, n)}


@dataclass
class PredictReport:
    """What :func:`predict_files` did; ``summary`` is the ``predictions.json`` it wrote (rank 0
    writes it; every rank's report holds it)."""

    out_dir: Path
    summary: Dict[str, Any]
    rank: int = 0

    @property
    def predicted(self) -> int:
        return sum(1 for r in self.summary["inputs"] if not r.get("skipped"))

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.summary["inputs"] if r.get("skipped"))


def predict_files(task_name: str, config: PathLike, weights: PathLike, inputs: Sequence[PathLike],
                  out_dir: PathLike, overrides: Sequence[str] = (), tag: Optional[str] = None,
                  options: PredictOptions = PredictOptions()) -> PredictReport:
    """Run the fine-tuned ``weights`` of the run config ``config`` over ``inputs`` (files, or
    folders of rasters) and write every input's outputs and ``predictions.json`` to ``out_dir``.

    Every input is checked (readable, band count = the model's) before the model is loaded, so a
    bad input stops the run before any work. An input whose outputs all exist is skipped (noted in
    the summary) unless ``options.overwrite``; re-running an interrupted run resumes it. Under a
    launcher the ranks share the scenes (:mod:`rsfm_ds.engine.predict_ranks`).

    Raises:
        ConfigError: a config of the other task, a bad option.
        DataError: a missing or unreadable input, one with the wrong band count.
        CheckpointError: weights that do not fit the config's model.
    """
    from .inference import load_task_config
    from .tasks import get_task

    if task_name == "seg" and options.score_thr is not None:
        raise ConfigError("score_thr: a detection option; segmentation has no scores to threshold")
    extra = [f"model.roi.score_thr={options.score_thr}"] if options.score_thr is not None else []
    cfg = load_task_config(task_name, config, list(overrides) + extra)
    files = list_inputs(inputs)
    out_dir = Path(out_dir)
    check_output_is_not_input(out_dir, list(files) + [p for p in map(Path, inputs) if p.is_dir()])
    task = get_task(task_name).build(cfg)
    classes = task_classes(task)
    normalization, bands, require_8bit = task_inputs(task)
    bands = options.bands if options.bands is not None else bands
    scenes = [check_input(f, bands, normalization, model_in_chans(cfg), require_8bit) for f in files]
    tile, overlap = default_tiling(task_name, cfg, options)
    plans = [(s, output_paths(task_name, s, out_dir, options)) for s in scenes]
    check_output_names(plans)
    world = PredictWorld.from_environment()
    try:
        report = _predict_plans(task_name, cfg, config, weights, tag, options, plans, classes, tile, overlap,
                                out_dir, world)
    except BaseException as e:
        lost = collective_failure(e, world.timeout_s, "rsfm predict's wait for the other ranks", heartbeats=False) \
            if world.size > 1 and isinstance(e, RuntimeError) else None
        world.close(together=False)  # the others may never reach a barrier
        if lost:  # another rank failed (its own error says why) or was killed
            raise RunError(f"{lost}; the outputs written are complete: the same command finishes the rest") from e
        raise
    world.close()
    return report


def _predict_plans(task_name: str, cfg, config: PathLike, weights: PathLike, tag: Optional[str],
                   options: PredictOptions, plans: Sequence[Tuple[SceneInput, Dict[str, Path]]],
                   classes: Sequence[str], tile: int, overlap: int, out_dir: Path,
                   world: PredictWorld) -> PredictReport:
    """This rank's share of ``plans``, then the summary (:func:`predict_files`)."""
    from .inference import load_finetuned_model

    # One progress bar: rank 0's (several ranks writing bars to one terminal garble each other).
    progress = options.progress and world.rank == 0
    # Rank 0 alone looks at what exists, before any rank writes: every rank then agrees on the work.
    inputs, todos = world.from_rank0(None if world.rank else (
        [str(s.path) for s, _ in plans],
        [paths if options.overwrite else {k: p for k, p in paths.items() if not p.exists()} for _, paths in plans]))
    if inputs != [str(s.path) for s, _ in plans]:
        raise DataError(f"rank {world.rank} found {len(plans)} inputs but rank 0 {len(inputs)} (or others): the "
                        f"input folders changed while the ranks listed them, or differ between nodes")
    owner = share_by_size([s.info.width * s.info.height if todo else 0 for (s, _), todo in zip(plans, todos)],
                          world.size)
    out_dir.mkdir(parents=True, exist_ok=True)

    loaded = None
    records: List[Tuple[int, Dict[str, Any]]] = []  # (input index, record)
    start = time.perf_counter()
    for index, ((scene, paths), todo) in enumerate(zip(plans, todos)):
        if owner[index] != world.rank:
            continue
        info = scene.info
        record: Dict[str, Any] = {"input": str(scene.path), "width": info.width, "height": info.height,
                                  "bands": len(scene.bands) if scene.bands else info.count,
                                  "georeferenced": info.georef.is_georeferenced, "crs": info.georef.crs,
                                  "outputs": [p.name for p in paths.values()]}
        if not todo:
            record.update(skipped=True, note="outputs exist; --overwrite replaces them")
            records.append((index, record))
            continue
        if loaded is None:
            inference = options.inference(world.local_rank if world.size > 1 else None)
            device = inference.resolve_device()
            if device.type == "cuda" and device.index is not None:
                torch.cuda.set_device(device)  # else every rank also opens a context on GPU 0
            loaded = load_finetuned_model(task_name, cfg, weights, tag, inference)
        t0 = time.perf_counter()
        if task_name == "det":
            result = predict_scene_detections(loaded, scene, tile, overlap, options.batch_size, options.iou_thr,
                                              progress)
            record["detections_before_merge"] = result.before_merge
        elif "probs" in todo:
            # Written as the rows are finished, renamed into place only when the scene completes.
            with probabilities_writer(todo["probs"], len(classes), info.height, info.width, info.georef,
                                      classes) as probs:
                result = predict_scene_segmentation(loaded, scene, len(classes), tile, overlap,
                                                    options.batch_size, probs.write_rows, progress)
        else:
            result = predict_scene_segmentation(loaded, scene, len(classes), tile, overlap, options.batch_size,
                                                progress=progress)
        seconds = time.perf_counter() - t0
        _write_outputs(task_name, scene, result, classes, todo, options)
        mpx = info.width * info.height / 1e6
        record.update(tiles=result.tiles, seconds=round(seconds, 3), megapixels=round(mpx, 4),
                      megapixels_per_s=round(mpx / seconds, 4) if seconds > 0 else None,
                      counts=_counts(task_name, result, classes), written=[p.name for p in todo.values()])
        if world.size > 1:
            record["rank"] = world.rank
        records.append((index, record))
    device = (str(loaded.device), _PRECISION_NAMES.get(loaded.dtype)) if loaded else (None, None)
    gathered = world.gather([(records, device)])
    total = time.perf_counter() - start  # every rank is done: the gather waited for the last
    records = sorted(r for part, _ in gathered for r in part)
    inputs = [record for _, record in records]
    megapixels = sum(r.get("megapixels", 0.0) for r in inputs if not r.get("skipped"))
    devices = list(dict.fromkeys(d for _, (d, _) in gathered if d))  # in rank order
    precision = next((p for _, (d, p) in gathered if d), None)
    summary: Dict[str, Any] = {
        "version": SUMMARY_VERSION, "task": task_name, "config": str(config), "weights": str(weights),
        "tile": tile, "overlap": overlap, "batch_size": options.batch_size,
        "device": ",".join(devices) or None,
        "precision": precision, "ranks": world.size,
        "classes": list(classes), "inputs": inputs, "seconds": round(total, 3),
        "megapixels": round(megapixels, 4),
        "megapixels_per_s": round(megapixels / total, 4) if megapixels and total > 0 else None}
    if task_name == "det":
        summary.update(score_thr=cfg.model.roi.score_thr, iou_thr=options.iou_thr)
    if world.rank == 0:
        write_json_atomic(out_dir / SUMMARY, summary)
    return PredictReport(out_dir, summary, world.rank)


__all__ = ["PredictOptions", "PredictReport", "task_inputs", "task_classes", "model_in_chans", "default_tiling",
           "output_paths", "check_output_names", "predict_files", "SUMMARY", "SUMMARY_VERSION", "DOTA_GAP_FRACTION"]
