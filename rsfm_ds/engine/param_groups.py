"""Optimizer parameter groups: weight decay exemptions and layer-wise learning-rate decay.

No weight decay on norms, biases, tokens and position/bias tables (1-D tensors and names listed in
``NO_DECAY_KEYWORDS``). With ``layer_decay`` set, the learning rate of a parameter is scaled by
``layer_decay ** (num_layers + 1 - layer_id)``, where the layer id is 0 for the stem (patch
embedding, tokens), ``i + 1`` for ``blocks.i`` (every branch of a parallel layer shares its layer's
rate), and ``num_layers + 1`` for everything after the backbone (necks, heads), which thus trains at
the full rate. Groups are built once, by (layer id, decay) pair, and carry an ``lr_scale`` that the
schedule multiplies in.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

import torch.nn as nn

NO_DECAY_KEYWORDS = ("cls_token", "mask_token", "pos_embed", "rel_pos", "relative_position")
_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_STEM = ("patch_embed", "cls_token", "pos_embed", "mask_token")


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases, tokens and position tables are not decayed."""
    return param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in NO_DECAY_KEYWORDS)


def layer_id(name: str, num_layers: int, backbone_prefix: str = "") -> int:
    """Layer index of a parameter for layer-wise decay (see the module docstring)."""
    if backbone_prefix and not name.startswith(backbone_prefix):
        return num_layers + 1
    local = name[len(backbone_prefix):]
    if local.startswith(_STEM):
        return 0
    match = _BLOCK_INDEX.search("." + local)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def build_param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None,
                       num_layers: Optional[int] = None, backbone_prefix: str = "",
                       ) -> List[Dict]:
    """Parameter groups for AdamW.

    Args:
        model: the model whose trainable parameters are grouped (frozen ones are left out).
        weight_decay: decay for the decayed groups.
        layer_decay: per-layer lr multiplier (e.g. 0.75); None for no layer-wise decay.
        num_layers: backbone depth; required with ``layer_decay``.
        backbone_prefix: name prefix of the backbone inside ``model`` (e.g. ``"backbone."``);
            parameters outside it count as heads.

    Returns:
        A list of dicts with ``params``, ``weight_decay``, ``lr_scale`` and ``names`` (the
        parameter names, for inspection and tests; torch optimizers ignore extra keys).
    """
    if layer_decay is not None and num_layers is None:
        raise ValueError("layer_decay needs num_layers (the backbone depth)")
    groups: Dict[Tuple[int, bool], Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = is_no_decay(name, param)
        lid = layer_id(name, num_layers, backbone_prefix) if layer_decay is not None else 0
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if layer_decay is not None else 1.0
            groups[key] = dict(params=[], names=[], weight_decay=0.0 if no_decay else weight_decay,
                               lr_scale=scale)
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def describe_groups(groups: Iterable[Dict]) -> str:
    """One line per group: lr scale, weight decay, number of tensors."""
    return "\n".join(f"lr_scale {g['lr_scale']:.4f}  wd {g['weight_decay']:.3f}  "
                     f"{len(g['params'])} tensors" for g in groups)
