"""``rsfm convert mae-to-backbone``: MAE (or encoder) weights -> backbone safetensors + json sidecar.

Key mapping (the same rules :func:`~rsfm_ds.checkpoint.loading.load_backbone` applies):

==========================================  ===============================================
source key                                  backbone key
==========================================  ===============================================
MAE ``encoder.<key>``                       ``<key>`` (``cls_token``, ``patch_embed.proj.*``,
                                            ``blocks.{i}.*``, ``norm.*``)
MAE ``decoder_*``, ``mask_token``           dropped
``pos_embed``                               dropped here (see below); ``load_backbone`` puts
                                            it in a backbone that trains a table
``head.*``                                  dropped (a classifier is not part of a backbone)
an encoder / converted backbone ``<key>``   ``<key>``
==========================================  ===============================================

Position table: the MAE encoder's is a fixed 2-D sin-cos function of the patch grid
(:func:`~rsfm_ds.models.vit.sincos_pos_embed_2d`), a non-persistent buffer, so MAE checkpoints hold
none and by default the converted file stores none either. ``VisionTransformer`` and
``ViTDetBackbone(abs_pos="sincos")`` recompute it exactly for any grid; ``ViTDetBackbone(abs_pos=
"interpolate")`` (detectron2's ViTDet) trains a table at its pretraining grid that starts as the
sin-cos table of that grid, i.e. the MAE's own table when ``pretrain_img_size`` is the MAE's
resolution. ``with_pos_embed=True`` stores the table ``[1, 1 + g*g, D]`` (zero class row, the
MAE / timm layout) for the ``img_size`` grid, by default the pretraining resolution, i.e. exactly
the table the MAE used; ``load_backbone`` loads a stored table into an ``interpolate`` backbone,
dropping the class row and resizing it bicubically when its grid differs (:func:`fit_pos_embed`).
``img_size`` is recorded in the sidecar. :func:`resample_pos_embed` moves any ViT-layout table
between grids: a sin-cos table is recomputed, a learned one interpolated bicubically with timm's
``resample_abs_pos_embed``.

Sidecar ``<out>.json`` (format version 1): ``format``, ``format_version``, ``preset``, ``step``,
``samples_seen``, ``world_size``, ``source``, ``img_size``, ``patch_size``, ``grid``, ``dtype``,
``with_pos_embed``, ``num_tensors``, ``num_params``, ``pos_embed`` (how positions are handled),
``in_chans`` (input bands: ``patch_embed.proj.weight`` is ``[D, in_chans, p, p]``) and, when the
pretraining shards had them (own imagery, ``rsfm shards images``), ``band_names``, ``band_mean`` and
``band_std`` (the per-band normalisation in raw units a fine-tuning run must apply). The same
provenance is in the safetensors header, where every value is a string (the band fields JSON).
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import CheckpointError, ConfigError, check_output_is_not_input
from ..models.presets import PRESETS, create_vit, get_preset
from ..models.vit import sincos_pos_embed_2d
from .safetensors_io import (DTYPES, FORMAT_VERSION, ConversionResult, TensorInfo, provenance,
                             write_safetensors)
from .sources import open_source

BAND_FIELDS = ("band_names", "band_mean", "band_std")
"""Metadata of a backbone pretrained on own imagery: JSON lists, one entry per input band."""

POS_EMBED_NOTE = ("not stored: a fixed 2-D sin-cos function of the patch grid, recomputed exactly by the "
                  "backbone for any input size")


def map_to_backbone(names: Iterable[str]) -> Tuple[Dict[str, str], List[str]]:
    """Source name -> backbone name for the names a backbone keeps, and the names dropped by design.

    A source with any ``encoder.`` key is read as a :class:`~rsfm_ds.models.mae.MaskedAutoencoder`.
    """
    names = list(names)
    is_mae = any(n.startswith("encoder.") for n in names)
    mapping: Dict[str, str] = {}
    dropped: List[str] = []
    for name in names:
        local = name
        if is_mae:
            if not name.startswith("encoder."):
                dropped.append(name)
                continue
            local = name[len("encoder."):]
        if local == "pos_embed" or local.startswith("head."):
            dropped.append(name)
            continue
        mapping[name] = local
    return mapping, dropped


@lru_cache(maxsize=None)
def _preset_shapes(preset: str, in_chans: int) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    with torch.device("meta"):  # no memory, even for the 2.4B preset
        model = create_vit(preset, class_token=True, in_chans=in_chans)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def preset_shapes(preset: str, in_chans: int = 3) -> Dict[str, Tuple[int, ...]]:
    """State-dict shapes of the :class:`VisionTransformer` of ``preset`` with ``in_chans`` input
    bands, in state-dict order."""
    return dict(_preset_shapes(preset, in_chans))


PATCH_WEIGHT = "patch_embed.proj.weight"


def in_chans_of(shapes: Dict[str, Tuple[int, ...]]) -> int:
    """Input bands of backbone ``shapes``: dim 1 of ``patch_embed.proj.weight`` ``[D, C, p, p]``
    (3 when the key is absent, for the error of :func:`check_preset` to name it)."""
    shape = shapes.get(PATCH_WEIGHT)
    return int(shape[1]) if shape is not None and len(shape) == 4 else 3


def first_mismatch(have: Dict[str, Tuple[int, ...]], want: Dict[str, Tuple[int, ...]]
                   ) -> Optional[Tuple[str, Optional[Tuple[int, ...]], Optional[Tuple[int, ...]]]]:
    """The first key of ``want`` (in its order) whose shape in ``have`` differs or is absent, then the
    first key of ``have`` that ``want`` lacks: ``(key, have_shape, want_shape)``, or None."""
    for key, shape in want.items():
        if have.get(key) != shape:
            return key, have.get(key), shape
    for key, shape in have.items():
        if key not in want:
            return key, shape, None
    return None


def infer_preset(shapes: Dict[str, Tuple[int, ...]]) -> Optional[str]:
    """The registered preset whose encoder (with the bands of ``shapes``) has exactly these
    backbone keys and shapes, if any."""
    for name in PRESETS:
        if first_mismatch(shapes, preset_shapes(name, in_chans_of(shapes))) is None:
            return name
    return None


def check_preset(shapes: Dict[str, Tuple[int, ...]], preset: Optional[str], source: str) -> str:
    """The preset of backbone ``shapes``: ``preset`` (verified) or inferred.

    Raises CheckpointError naming the first mismatched key and both shapes when the weights do not
    match ``preset``, or when no preset matches.
    """
    if preset is None:
        found = infer_preset(shapes)
        if found is None:
            raise CheckpointError(f"{source}: the backbone weights match no registered preset "
                                  f"({', '.join(PRESETS)})")
        return found
    get_preset(preset)
    mismatch = first_mismatch(shapes, preset_shapes(preset, in_chans_of(shapes)))
    if mismatch is not None:
        key, have, want = mismatch
        raise CheckpointError(f"{source}: does not match preset {preset!r}: key {key!r} has shape "
                              f"{_shape(have)} in the checkpoint, {_shape(want)} in the preset")
    return preset


def resample_pos_embed(pos_embed: torch.Tensor, dst_grid: Sequence[int], num_prefix_tokens: int = 1,
                       src_grid: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Move a position table ``[1, prefix + gh*gw, D]`` to the grid ``dst_grid``.

    Same grid: the input itself (the identity). A fixed sin-cos table (equal to
    :func:`sincos_pos_embed_2d` of its grid within 1e-6, prefix rows zero) is recomputed exactly for
    the new grid; any other (learned) table is interpolated bicubically with timm's
    ``resample_abs_pos_embed``. ``src_grid`` defaults to the square grid of the table's length.
    """
    length = pos_embed.shape[1] - num_prefix_tokens
    if src_grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"pos_embed has {length} patch rows, not a square grid; pass src_grid")
        src_grid = (side, side)
    src, dst = tuple(int(g) for g in src_grid), tuple(int(g) for g in dst_grid)
    if src == dst:
        return pos_embed
    dim = pos_embed.shape[-1]
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    fixed = sincos_pos_embed_2d(dim, src).to(patches)
    if torch.allclose(patches, fixed, rtol=0, atol=1e-6) and not prefix.any():
        table = sincos_pos_embed_2d(dim, dst).to(pos_embed)
        return torch.cat([prefix, table], dim=1)
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos_embed, new_size=list(dst), old_size=list(src),
                                  num_prefix_tokens=num_prefix_tokens)


def pos_embed_key(names: Iterable[str]) -> Optional[str]:
    """The key of a stored absolute position table (``pos_embed`` or MAE ``encoder.pos_embed``),
    if the source has one (files with ``with_pos_embed``, facebookresearch/mae and timm files)."""
    names = set(names)
    for key in ("pos_embed", "encoder.pos_embed"):
        if key in names:
            return key
    return None


def fit_pos_embed(pos_embed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A stored position table as a ViTDet table of ``shape`` ``[1, gh, gw, D]``.

    Accepts the ViT layout ``[1, (1 +) h*w, D]`` of MAE / timm (a class-token row, recognised by
    the length being one more than a square, is dropped, as detectron2's ``get_abs_pos`` does)
    and the ViTDet layout ``[1, h, w, D]``, then resizes the square grid bicubically to
    ``(gh, gw)`` (:func:`~rsfm_ds.models.vitdet.resample_pos_table`), as timm's
    ``checkpoint_filter_fn`` of ``vision_transformer_sam.py`` does on load.

    Raises:
        CheckpointError: the table is neither layout or its width is not ``D``.
    """
    from ..models.vitdet import resample_pos_table

    shape = tuple(int(s) for s in shape)
    table = pos_embed
    if table.ndim == 3 and table.shape[0] == 1:
        length = table.shape[1]
        side = math.isqrt(length)
        if side * side != length:
            side = math.isqrt(length - 1)
            if side * side != length - 1:
                raise CheckpointError(f"pos_embed of shape {tuple(table.shape)}: {length} rows are neither "
                                      f"a square grid nor a class token and a square grid")
            table = table[:, 1:]
        table = table.reshape(1, side, side, table.shape[-1])
    if table.ndim != 4 or table.shape[0] != 1 or table.shape[-1] != shape[-1]:
        raise CheckpointError(f"pos_embed of shape {tuple(pos_embed.shape)} does not fit the backbone's "
                              f"table {shape}")
    return resample_pos_table(table, shape[1:3]).contiguous()


def convert_backbone(src: Union[str, Path], out: Path, *, kind: str, tag: Optional[str] = None,
                     dtype: str = "fp32", img_size: Optional[int] = None, with_pos_embed: bool = False
                     ) -> ConversionResult:
    """Write the backbone of ``src`` to the safetensors file ``out`` and its sidecar ``out.json``.

    Shared by :func:`mae_to_backbone` and :func:`~rsfm_ds.checkpoint.timm_export.to_timm`
    (``kind`` is the ``rsfm_format`` written into the header; ``timm`` also records the timm model
    name as ``timm_model``).
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"{out}: the output must be a .safetensors file")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    source = open_source(src, tag)
    read = [source.path, *getattr(source, "files", ())]
    check_output_is_not_input(out, read)
    check_output_is_not_input(out.with_suffix(".json"), read)  # the sidecar
    infos = source.infos()
    mapping, _ = map_to_backbone(infos)
    if not mapping:
        raise CheckpointError(f"{source.path}: no backbone weights found (no encoder.* or ViT keys)")
    shapes = {local: infos[name].shape for name, local in mapping.items()}
    preset = check_preset(shapes, source.metadata.get("preset"), str(source.path))
    p = get_preset(preset)
    img_size = int(img_size or source.metadata.get("img_size") or 224)
    if img_size % p.patch_size:
        raise ConfigError(f"img_size {img_size} is not a multiple of the patch size {p.patch_size}")
    grid = (img_size // p.patch_size,) * 2
    torch_dtype = DTYPES[dtype]
    entries = [(local, TensorInfo(infos[name].shape, torch_dtype if infos[name].dtype.is_floating_point
                                  else infos[name].dtype)) for name, local in mapping.items()]
    source_of = {local: name for name, local in mapping.items()}
    table = sincos_pos_embed_2d(p.embed_dim, grid, cls_token=True)
    if with_pos_embed:
        entries.append(("pos_embed", TensorInfo(tuple(table.shape), torch_dtype)))
    fields = {k: v for k, v in source.metadata.items() if k in ("step", "samples_seen", "world_size")}
    in_chans = in_chans_of(shapes)
    bands = {k: v for k, v in source.metadata.items() if k in BAND_FIELDS}
    metadata = provenance(kind, preset=preset, **fields, source=str(source.path), img_size=img_size,
                          dtype=dtype, with_pos_embed=with_pos_embed,
                          timm_model=f"rsfm_{preset}" if kind == "timm" else None, in_chans=in_chans, **bands)

    def get(name: str) -> torch.Tensor:
        return table if name == "pos_embed" else source.get(source_of[name])

    write_safetensors(out, entries, get, metadata)
    num_params = sum(info.numel for _, info in entries)
    sidecar = out.with_suffix(".json")
    sidecar.write_text(json.dumps({
        "format": f"rsfm-{kind}", "format_version": FORMAT_VERSION, "preset": preset,
        "step": _int_or_none(fields.get("step")), "samples_seen": _int_or_none(fields.get("samples_seen")),
        "world_size": _int_or_none(fields.get("world_size")), "source": str(source.path),
        "img_size": img_size, "patch_size": p.patch_size, "grid": list(grid), "dtype": dtype,
        "with_pos_embed": with_pos_embed, "num_tensors": len(entries), "num_params": num_params,
        "pos_embed": f"stored for the {grid[0]}x{grid[1]} grid (sin-cos)" if with_pos_embed else POS_EMBED_NOTE,
        "in_chans": in_chans, **{k: json.loads(v) for k, v in bands.items()},
    }, indent=2) + "\n")
    return ConversionResult([out, sidecar], len(entries), num_params, metadata)


def mae_to_backbone(src: Union[str, Path], out: Union[str, Path], img_size: Optional[int] = None,
                    dtype: str = "fp32", with_pos_embed: bool = False, tag: Optional[str] = None
                    ) -> ConversionResult:
    """MAE checkpoint -> backbone weights: ``out`` (safetensors) plus ``out`` with ``.json``.

    Args:
        src: a ZeRO tag directory or checkpoints folder (newest complete tag, or ``tag``), our
            ``zero-to-fp32`` output (folder, ``model.safetensors`` or its index json), or any
            encoder / backbone file :func:`~rsfm_ds.checkpoint.sources.open_source` reads.
        out: output ``.safetensors`` file.
        img_size: resolution the backbone is meant for (default: the pretraining resolution);
            recorded, and the grid of the stored table with ``with_pos_embed``.
        dtype: ``fp32``, ``bf16`` or ``fp16`` for floating tensors.
        with_pos_embed: also store ``pos_embed [1, 1 + (img_size/p)^2, D]`` (sin-cos, zero class
            row) for tools that expect a stored table; our backbones do not need it.
        tag: tag within a checkpoints folder.

    Raises:
        CheckpointError: naming the key and both shapes when the weights do not fit their preset.
    """
    return convert_backbone(src, Path(out), kind="backbone", tag=tag, dtype=dtype, img_size=img_size,
                            with_pos_embed=with_pos_embed)


def _shape(shape: Optional[Tuple[int, ...]]) -> str:
    return "(absent)" if shape is None else str(tuple(shape))


def _int_or_none(value: Optional[str]) -> Optional[int]:
    return None if value is None else int(value)


__all__ = ["map_to_backbone", "preset_shapes", "first_mismatch", "infer_preset", "check_preset",
           "resample_pos_embed", "pos_embed_key", "fit_pos_embed", "convert_backbone", "mae_to_backbone",
           "POS_EMBED_NOTE", "BAND_FIELDS", "in_chans_of"]
