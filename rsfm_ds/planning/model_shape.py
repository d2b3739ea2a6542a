"""What the planner needs to know about a model's parameters, counted on the real models built on
the meta device (no memory, even for the 2.4B preset)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

from ..models.preset_specs import get_preset


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about a model's parameters.

    Attributes:
        params: trainable parameters (``ds_numel``-style: the full count).
        backbone_params: trainable parameters of the preset's plain encoder at 224 px (what the
            fine-tuning engine's ZeRO-stage rule counts).
        numels: element count of every trainable parameter tensor, descending.
        largest_module: most parameters owned directly by one module (ZeRO-3 gathers per module).
    """

    params: int
    backbone_params: int
    numels: Tuple[int, ...]
    largest_module: int

    def persistent(self, threshold: float) -> int:
        """Elements in parameters ZeRO-3 keeps whole (``numel <= threshold``)."""
        return sum(n for n in self.numels if n <= threshold)


def encoder_params(preset: str, patch_size: Optional[int] = None, in_chans: int = 3) -> int:
    """Closed-form trainable parameters of a preset's plain ViT encoder (no qkv bias, class token,
    fixed sin-cos positions): patch projection ``3 p^2 D + D``, class token ``D``, final norm
    ``2D``, and per layer and branch an attention ``2D`` (norm) ``+ 3D^2`` (qkv) ``+ D^2 + D``
    (projection) and an MLP ``2D + DM + M + MD + D``."""
    p = get_preset(preset)
    d, m, ps = p.embed_dim, p.mlp_dim, patch_size or p.patch_size
    attn = 2 * d + 3 * d * d + d * d + d
    mlp = 2 * d + d * m + m + m * d + d
    return in_chans * ps * ps * d + d + d + 2 * d + p.depth * p.num_branches * (attn + mlp)


@functools.lru_cache(maxsize=64)
def model_shape(preset: str, task: str, img_size: int, window_size: int = 14,
                num_classes: int = 6) -> ModelShape:
    """Parameter statistics of the model a task trains, counted on the models the engines build
    (with their configs' defaults for everything but the arguments), on the meta device (no
    memory): the MAE for ``pretrain``, ViTDet + Oriented R-CNN for ``det`` (with the stride-64
    level), ViTDet + UperNet + FCN for ``seg``."""
    import torch

    from ..models.heads import OrientedRCNN, SegmentationModel
    from ..models.mae import MAEConfig, build_mae
    from ..models.presets import count_trainable, create_vit
    from ..models.vitdet import ViTDetConfig

    with torch.device("meta"):
        if task == "pretrain":
            model = build_mae(MAEConfig(preset=preset, img_size=img_size))
        elif task == "det":
            model = OrientedRCNN.build(ViTDetConfig(preset=preset, img_size=img_size, window_size=window_size),
                                       num_classes)
        else:
            model = SegmentationModel.build(ViTDetConfig(preset=preset, img_size=img_size, window_size=window_size),
                                            num_classes)
        backbone_params = count_trainable(create_vit(preset))
    numels = tuple(sorted((p.numel() for p in model.parameters() if p.requires_grad), reverse=True))
    largest = max(sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad)
                  for m in model.modules())
    return ModelShape(params=sum(numels), backbone_params=backbone_params, numels=numels,
                      largest_module=largest)


__all__ = ["ModelShape", "encoder_params", "model_shape"]
