"""The backbone presets as models: building one, counting its parameters, the preset table.

The presets themselves (architecture, FLOPs) are data in :mod:`rsfm_ds.models.preset_specs`,
re-exported here.

Every preset is also registered with timm as ``rsfm_<preset>`` so that
``timm.create_model('rsfm_vit_l12x4', pretrained=True, pretrained_cfg_overlay=dict(file=...))``
builds it (and loads a converted file).
"""
from __future__ import annotations

import timm
from timm.models import register_model

from .preset_specs import PRESETS, ViTPreset, encoder_flops, get_preset
from .vit import VisionTransformer


def create_vit(preset: str, **overrides) -> VisionTransformer:
    """Build the encoder of ``preset``; keyword arguments override :class:`VisionTransformer`'s."""
    kwargs = dict(get_preset(preset).vit_kwargs())
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)


def count_trainable(model) -> int:
    """Trainable parameters, correct for ZeRO-3 partitioned models too (``ds_numel``)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def preset_table(img_size: int = 224, mask_ratio: float = 0.75) -> list[dict]:
    """One row per preset: architecture, trainable parameters and GFLOPs (full / MAE encoder).

    Models are built on the meta device, so even the 2.4B preset costs no memory.
    """
    import torch

    rows = []
    for name, p in PRESETS.items():
        with torch.device("meta"):
            params = count_trainable(create_vit(name, img_size=img_size))
        rows.append(dict(
            preset=name, width=p.embed_dim, mlp=p.mlp_dim, heads=p.num_heads,
            layers_x_branches=f"{p.depth} x {p.num_branches}", params_m=params / 1e6,
            params=params, gflops=encoder_flops(name, img_size) / 1e9,
            mae_gflops=encoder_flops(name, img_size, keep_ratio=1 - mask_ratio) / 1e9))
    return rows


def format_preset_table(rows: list[dict]) -> str:
    w = max([len("preset")] + [len(r["preset"]) for r in rows])  # the longest name sets the column
    header = (f"{'preset':<{w}} {'width':>6} {'MLP':>6} {'heads':>5} {'layers x br':>11} "
              f"{'params (M)':>11} {'GFLOPs':>8} {'MAE enc GFLOPs':>15}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['preset']:<{w}} {r['width']:>6} {r['mlp']:>6} {r['heads']:>5} "
                     f"{r['layers_x_branches']:>11} {r['params_m']:>11.2f} {r['gflops']:>8.2f} "
                     f"{r['mae_gflops']:>15.2f}")
    return "\n".join(lines)


def _timm_factory(preset_name: str):
    def factory(pretrained: bool = False, **kwargs) -> VisionTransformer:
        from timm.models import build_model_with_cfg

        return build_model_with_cfg(VisionTransformer, f"rsfm_{preset_name}", pretrained,
                                    **{**get_preset(preset_name).vit_kwargs(), **kwargs})

    factory.__name__ = f"rsfm_{preset_name}"
    factory.__doc__ = f"rsfm-ds preset {preset_name!r} as a timm model."
    return factory


# timm reads a pretrained config (input size, normalisation) per registered name.
default_cfgs = {f"rsfm_{name}": dict(url="", num_classes=0, input_size=(3, 224, 224),
                                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
                for name in PRESETS}
for _name in PRESETS:
    if not timm.is_model(f"rsfm_{_name}"):
        register_model(_timm_factory(_name))

__all__ = ["PRESETS", "ViTPreset", "get_preset", "create_vit", "count_trainable", "encoder_flops",
           "preset_table", "format_preset_table"]
