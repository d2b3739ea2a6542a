"""``load_backbone``: pretrained weights into a backbone, plain or ZeRO-3 partitioned, strictly.

Reads anything :func:`~rsfm_ds.checkpoint.sources.open_source` reads (a converted file, a ZeRO
checkpoint directory, a timm file) and maps keys with the rules of
:func:`~rsfm_ds.checkpoint.backbone.map_to_backbone`, then:

* checks shapes first, in the model's key order, and fails on the first mismatch naming the key
  and both shapes (a checkpoint of another preset fails there);
* is strict for the backbone: every backbone key must come from the checkpoint, except the
  backbone's *new* parameters (``ViTDetBackbone``'s pyramid and relative-position tables, a
  ``VisionTransformer``'s classifier ``head``); keys of the model outside ``prefix`` (detection or
  segmentation heads) are never expected. Checkpoint keys with no place in the backbone are
  unexpected (an error when strict), except those dropped by design (MAE decoder, mask token,
  classifier head, the class token for backbones without one, and a stored position table for
  backbones whose table is fixed);
* fills a backbone's trainable position table (``ViTDetBackbone`` with ``abs_pos="interpolate"``)
  from a stored ``pos_embed``, dropping a class-token row and resizing it bicubically to the
  backbone's table grid (:func:`~rsfm_ds.checkpoint.backbone.fit_pos_embed`); without one in the
  checkpoint the table keeps its sin-cos start;
* adapts a patch embedding pretrained on another band count (a 3-band RGB checkpoint into a
  4-band model, or the reverse) with :func:`adapt_input_channels`, timm's ``adapt_input_conv``
  rule (``timm/models/_manipulate.py``), when ``patch_embed_adapt="timm"``; ``"error"`` refuses
  the checkpoint. The decision is taken on every rank from the shapes alone (an error on one rank
  alone would leave the others waiting); the adapted tensor is computed where it is copied (rank
  0 under ZeRO-3), and the report's ``notes`` say what was adapted;
* copies per module. Under ZeRO-3 each parameter holds only its rank's partition (``numel()`` is
  0 and ``load_state_dict`` fails with "size mismatch ... [0]"), so for each module with
  partitioned parameters all ranks enter ``deepspeed.zero.GatheredParameters(params,
  modifier_rank=0)``, rank 0 copies the tensors in, and DeepSpeed re-partitions rank 0's values on
  exit; only rank 0 reads checkpoint data. Peak memory is one module's parameters.

Call it before ``deepspeed.initialize``: the ZeRO optimizer takes its fp32 master copy of the
parameters at initialisation, and a later load would be overwritten by the first step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn

from ..errors import CheckpointError, few
from .backbone import fit_pos_embed, map_to_backbone, pos_embed_key
from .sources import TensorSource, open_source


@dataclass
class LoadReport:
    """What :func:`load_backbone` did; key names are the model's (with ``prefix``) unless noted.

    Attributes:
        source: the path read.
        loaded: model keys filled from the checkpoint.
        missing_keys: model keys under ``prefix`` the checkpoint did not fill (the backbone's new
            parameters; anything else is an error when strict).
        unexpected_keys: checkpoint keys, in backbone names, with no place in the backbone.
        dropped_keys: checkpoint keys (their own names) left out by design.
        metadata: provenance of the checkpoint (preset, step, samples seen...).
        notes: one line per adaptation made (the patch embedding's band count).
    """

    source: str
    loaded: List[str] = field(default_factory=list)
    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    dropped_keys: List[str] = field(default_factory=list)
    metadata: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


PATCH_EMBED_KEY = "patch_embed.proj.weight"
"""The patch embedding's convolution weight ``[D, C, p, p]``: its ``C`` is the band count."""
ADAPT_RULES = ("timm", "error")


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A patch-embedding weight ``[D, C, p, p]`` pretrained on ``C`` bands, for ``in_chans`` bands.

    timm's ``adapt_input_conv`` (``timm/models/_manipulate.py``) with the checkpoint's band count
    as its ``base_chans``: one band takes the sum over the ``C`` pretrained bands (a grey image
    then gives the response an image of ``C`` equal bands gave); otherwise the ``C`` band filters
    are repeated cyclically, the first ``in_chans`` kept, and all scaled by ``C / in_chans``, so
    that an image whose bands are all alike gives the response it gave before. Computed in
    float32 and returned in ``weight``'s dtype.
    """
    if weight.ndim != 4:
        raise CheckpointError(f"{PATCH_EMBED_KEY}: expected a [D, C, p, p] convolution weight, got "
                              f"shape {tuple(weight.shape)}")
    base = weight.shape[1]
    if in_chans == base:
        return weight
    w = weight.float()
    if in_chans == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_chans // base)
        out = w.repeat(1, repeat, 1, 1)[:, :in_chans] * (base / float(in_chans))
    return out.to(weight.dtype)


def new_backbone_keys(backbone: nn.Module) -> Set[str]:
    """Keys of ``backbone`` that no pretrained encoder provides (allowed to stay missing)."""
    from ..models.vit import VisionTransformer
    from ..models.vitdet import ViTDetBackbone, new_parameter_names

    if isinstance(backbone, ViTDetBackbone):
        return set(new_parameter_names(backbone))
    if isinstance(backbone, VisionTransformer):
        return {k for k in backbone.state_dict(keep_vars=True) if k.startswith("head.")}
    return set()


def _shape(t: torch.Tensor) -> Tuple[int, ...]:
    """Full shape of a tensor, also when it is a ZeRO-3 partition (``ds_shape``)."""
    return tuple(getattr(t, "ds_shape", t.shape))


def load_backbone(model: nn.Module, path: Union[str, Path], strict_backbone: bool = True, prefix: str = "",
                  tag: Optional[str] = None, patch_embed_adapt: str = "timm") -> LoadReport:
    """Load pretrained backbone weights into ``model`` (or into its submodule ``prefix``).

    Args:
        model: the model; plain, or built under ``deepspeed.zero.Init`` (ZeRO-3), in which case
            every rank must call this (it is collective).
        path: converted safetensors file / index / folder, ZeRO tag directory or checkpoints folder,
            or a timm ``.safetensors`` / ``.pth`` file.
        strict_backbone: raise when a backbone key is missing or a checkpoint key is unexpected.
        prefix: where the backbone lives in ``model`` (e.g. ``"backbone."``); empty when ``model``
            is the backbone.
        tag: tag within a checkpoints folder (default: newest complete).
        patch_embed_adapt: a patch embedding of another band count: ``"timm"`` adapts it
            (:func:`adapt_input_channels`), ``"error"`` raises.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointError: a shape mismatch (first mismatched key, both shapes), or, when strict, missing
            backbone keys / unexpected checkpoint keys (listed); with ``patch_embed_adapt="error"``,
            a patch embedding of another band count.
    """
    if patch_embed_adapt not in ADAPT_RULES:
        raise CheckpointError(f"patch_embed_adapt: expected one of {', '.join(ADAPT_RULES)}, got {patch_embed_adapt!r}")
    prefix = prefix if not prefix or prefix.endswith(".") else prefix + "."
    backbone = model.get_submodule(prefix[:-1]) if prefix else model
    source = open_source(path, tag)
    infos = source.infos()
    mapping, dropped = map_to_backbone(infos)
    targets = backbone.state_dict(keep_vars=True)  # persistent entries only: what a checkpoint holds
    report = LoadReport(source=str(path), metadata=dict(source.metadata))

    provided: Dict[str, str] = {}  # backbone key -> source key
    for src, dst in mapping.items():
        if dst in targets:
            provided[dst] = src
        elif dst == "cls_token":  # windowed backbones have no class token: dropped by design
            dropped.append(src)
        else:
            report.unexpected_keys.append(dst)
    # A stored position table fills a backbone that trains one (ViTDet's "interpolate" table),
    # resized to its grid; backbones with a fixed table keep dropping it.
    pos_key = pos_embed_key(infos)
    if pos_key is not None and "pos_embed" in targets:
        dropped.remove(pos_key)
        provided["pos_embed"] = pos_key
    report.dropped_keys = dropped

    adapt: Set[str] = set()  # keys whose band count is adapted in the copy
    for key, tensor in targets.items():
        if key == PATCH_EMBED_KEY and key in provided and _adaptable(tuple(infos[provided[key]].shape), _shape(tensor)):
            have, want = tuple(infos[provided[key]].shape)[1], _shape(tensor)[1]
            if patch_embed_adapt == "error":
                raise CheckpointError(f"{path}: the checkpoint's patch embedding takes {have} bands but the model "
                                      f"{want} (backbone.in_chans); set backbone.patch_embed_adapt=timm to adapt it")
            adapt.add(key)
            report.notes.append(f"patch embedding adapted from {have} to {want} bands (timm adapt_input_conv rule: "
                                + ("sum over the pretrained bands)" if want == 1 else
                                   f"bands repeated cyclically, scaled by {have}/{want})"))
        elif key == "pos_embed" and key in provided:  # any grid: only the width must agree
            have = tuple(infos[provided[key]].shape)
            if have[-1] != _shape(tensor)[-1]:
                raise CheckpointError(f"{path}: backbone key {prefix + key!r} has shape {have} in the checkpoint "
                                      f"but {_shape(tensor)} in the model: another width")
            # The layout check on every rank, on a shape alone: under ZeRO-3 only rank 0 copies,
            # and an error there alone would leave the other ranks waiting in the next collective.
            try:
                fit_pos_embed(torch.empty(have, device="meta"), _shape(tensor))
            except CheckpointError as e:
                raise CheckpointError(f"{path}: backbone key {prefix + key!r}: {e}") from None
        elif key in provided and tuple(infos[provided[key]].shape) != _shape(tensor):
            preset = source.metadata.get("preset")
            raise CheckpointError(
                f"{path}: backbone key {prefix + key!r} has shape {tuple(infos[provided[key]].shape)} in the "
                f"checkpoint{f' (preset {preset})' if preset else ''} but {_shape(tensor)} in the model; "
                f"the checkpoint is of another preset or architecture")
    new = new_backbone_keys(backbone)
    report.missing_keys = [prefix + k for k in targets if k not in provided]
    lacking = [k for k in targets if k not in provided and k not in new]
    if strict_backbone and (lacking or report.unexpected_keys):
        raise CheckpointError(f"{path}: the checkpoint does not fit the backbone{f' at {prefix!r}' if prefix else ''}: "
                              f"missing backbone keys {few(lacking, 8)}, unexpected checkpoint keys "
                              f"{few(report.unexpected_keys, 8)}")

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for module_name, module in backbone.named_modules():
        local = f"{module_name}." if module_name else ""
        params = [(n, p) for n, p in module.named_parameters(recurse=False) if local + n in provided]
        buffers = [(n, b) for n, b in module.named_buffers(recurse=False) if local + n in provided]
        zero3 = [(n, p) for n, p in params if hasattr(p, "ds_id")]
        if zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in zero3], modifier_rank=0):
                if rank == 0:
                    _copy(zero3, local, provided, source, adapt)
        # Replicated parameters and buffers (never partitioned): every rank copies its own.
        _copy([(n, p) for n, p in params if not hasattr(p, "ds_id")] + buffers, local, provided, source, adapt)
        report.loaded += [prefix + local + n for n, _ in params + buffers]
    return report


def _adaptable(have: Tuple[int, ...], want: Tuple[int, ...]) -> bool:
    """Two patch-embedding weights that differ in their band count alone."""
    return len(have) == len(want) == 4 and have[1] != want[1] and have[:1] + have[2:] == want[:1] + want[2:]


def _copy(tensors: List[Tuple[str, torch.Tensor]], local: str, provided: Dict[str, str],
          source: TensorSource, adapt: Set[str]) -> None:
    with torch.no_grad():
        for name, tensor in tensors:
            value = source.get(provided[local + name])
            if local + name == "pos_embed":
                value = fit_pos_embed(value, _shape(tensor))
            elif local + name in adapt:
                value = adapt_input_channels(value, _shape(tensor)[1])
            tensor.data.copy_(value)


__all__ = ["LoadReport", "load_backbone", "new_backbone_keys", "adapt_input_channels", "PATCH_EMBED_KEY"]
