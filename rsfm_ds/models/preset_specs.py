"""The backbone presets as data: architecture, parameters' provenance, FLOPs (no torch).

Presets follow the paper (docs/models.md): depth stays at 12 while width, MLP size, heads and the
number of parallel branches grow. Parameter counts exclude the fixed sin-cos position table (a
buffer) and use no qkv bias; with those rules ``vit_l12x4`` has exactly 605,261,824 parameters,
which pins the family down. ``vit_1b3`` and ``vit_2b4`` widths are reconstructed from the
published totals.

Kept apart from :mod:`rsfm_ds.models.presets` (which builds the models and registers them with
timm) so that the planner and the command line read the presets without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class ViTPreset:
    """Architecture of one backbone preset.

    Attributes:
        name: registry key.
        embed_dim: token width.
        mlp_dim: hidden width of each MLP branch.
        num_heads: attention heads per branch.
        depth: number of layers.
        num_branches: parallel attention/MLP branches per layer.
        patch_size: patch side in pixels.
        decoder: MAE decoder (width, depth, heads) used with this preset.
        global_attn_indexes: ViTDet blocks with global attention (the rest use windows): the
            last block of each quarter of the depth, as ViTDet does for ViT-B/L.
        notes: provenance of the numbers.
    """

    name: str
    embed_dim: int
    mlp_dim: int
    num_heads: int
    depth: int
    num_branches: int
    patch_size: int = 16
    decoder: Tuple[int, int, int] = (512, 8, 16)
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    notes: str = ""

    def vit_kwargs(self) -> Dict[str, int]:
        return dict(embed_dim=self.embed_dim, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                    depth=self.depth, num_branches=self.num_branches, patch_size=self.patch_size)


PRESETS: Dict[str, ViTPreset] = {p.name: p for p in [
    # The CPU scaling study needs a family of tiny models that grows the way the paper's does
    # (width and parallel branches at fixed depth): debug_s < debug < debug_l.
    ViTPreset("debug_s", embed_dim=64, mlp_dim=256, num_heads=2, depth=4, num_branches=1,
              decoder=(64, 2, 4), global_attn_indexes=(1, 3),
              notes="smallest of the CPU scaling family"),
    ViTPreset("debug", embed_dim=128, mlp_dim=512, num_heads=4, depth=4, num_branches=2,
              decoder=(64, 2, 4), global_attn_indexes=(1, 3),
              notes="tiny preset exercising every code path on CPU"),
    ViTPreset("debug_l", embed_dim=192, mlp_dim=768, num_heads=6, depth=4, num_branches=4,
              decoder=(64, 2, 4), global_attn_indexes=(1, 3),
              notes="largest of the CPU scaling family"),
    # Plain counterparts of parallel presets for the ablation of parallel vs plain blocks (docs/study.md):
    # k parallel branches of a layer hold the parameters of k plain layers (each branch has its own
    # norms), so depth x k at one branch matches the count exactly; global blocks stay the last of
    # each quarter of the depth.
    ViTPreset("debug_plain", embed_dim=128, mlp_dim=512, num_heads=4, depth=8, num_branches=1,
              decoder=(64, 2, 4), global_attn_indexes=(1, 3, 5, 7),
              notes="plain counterpart of debug (8 x 1 vs 4 x 2, equal parameters)"),
    ViTPreset("vit_b12x1", embed_dim=768, mlp_dim=3072, num_heads=12, depth=12, num_branches=1,
              notes="ViT-B/16, the paper's 86M model"),
    ViTPreset("vit_l12x4", embed_dim=1024, mlp_dim=4096, num_heads=16, depth=12, num_branches=4,
              notes="605.26M, exact match with the paper"),
    ViTPreset("vit_l48x1", embed_dim=1024, mlp_dim=4096, num_heads=16, depth=48, num_branches=1,
              global_attn_indexes=(11, 23, 35, 47),
              notes="plain counterpart of vit_l12x4 (48 x 1 vs 12 x 4, equal parameters)"),
    ViTPreset("vit_1b3", embed_dim=1536, mlp_dim=6144, num_heads=16, depth=12, num_branches=4,
              notes="reconstructed from the published 1.3B total"),
    ViTPreset("vit_2b4", embed_dim=2048, mlp_dim=8192, num_heads=16, depth=12, num_branches=4,
              notes="ViT-G12X4; width reconstructed from the published 2.4B total"),
]}


def get_preset(name: str) -> ViTPreset:
    """The preset called ``name``; a clear error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def encoder_flops(preset: str, img_size: int = 224, keep_ratio: float = 1.0,
                  class_token: bool = True, in_chans: int = 3) -> int:
    """Forward FLOPs (2 x multiply-adds) of the encoder on one image.

    Counts the matrix products (patch projection, qkv, attention scores, attention-weighted values,
    output projection, MLP); norms, activations and softmax are below 1% and left out, as fvcore
    and torch's FlopCounterMode do. ``keep_ratio`` is the fraction of patch tokens that enter the
    encoder (0.25 for MAE at 75% masking); ``in_chans`` the bands of the patch projection.
    """
    p = get_preset(preset)
    d, m = p.embed_dim, p.mlp_dim
    patches = (img_size // p.patch_size) ** 2
    n = round(patches * keep_ratio) + (1 if class_token else 0)
    embed = 2 * patches * (in_chans * p.patch_size ** 2) * d  # the projection runs before masking
    attn = 2 * n * d * 3 * d + 2 * n * n * d * 2 + 2 * n * d * d
    mlp = 2 * n * d * m * 2
    return embed + p.depth * p.num_branches * (attn + mlp)


def mae_train_flops(preset: str, img_size: int = 224, mask_ratio: float = 0.75,
                    decoder: Optional[Tuple[int, int, int]] = None, in_chans: int = 3) -> int:
    """Model FLOPs of one MAE training sample: 3 x forward (backward = 2 x forward), encoder on the
    visible tokens plus the decoder on all tokens; recomputation by activation checkpointing is
    not counted (the MFU convention)."""
    p = get_preset(preset)
    dim, depth, _ = decoder or p.decoder
    patches = (img_size // p.patch_size) ** 2
    kept = int(round(patches * (1 - mask_ratio))) + 1
    n = patches + 1
    block = 2 * n * dim * 3 * dim + 4 * n * n * dim + 2 * n * dim * dim + 2 * n * dim * 4 * dim * 2
    dec = 2 * kept * p.embed_dim * dim + depth * block + 2 * patches * dim * p.patch_size ** 2 * in_chans
    return 3 * (encoder_flops(preset, img_size, keep_ratio=1 - mask_ratio, in_chans=in_chans) + dec)


__all__ = ["PRESETS", "ViTPreset", "get_preset", "encoder_flops", "mae_train_flops"]
