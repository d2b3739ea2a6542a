"""The ``model:`` / ``backbone:`` sections of run configs, without torch: commands that only read
configs (``rsfm study``, ``rsfm plan``, ``--help``) validate them without importing the models.
The models are built from them by :func:`rsfm_ds.models.mae.build_mae` and
:func:`rsfm_ds.models.vitdet.build_vitdet`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

from ..config import check, check_choices
from .preset_specs import PRESETS, mae_train_flops

# Levels of the simple feature pyramid relative to the stride-16 map (detectron2's ViTDet).
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)


@dataclass
class MAEConfig:
    """The MAE model being pretrained."""

    preset: str = "debug"
    """Backbone preset (rsfm models lists them)."""
    img_size: int = 224
    """Input side in pixels; must match data.img_size."""
    mask_ratio: float = 0.75
    """Fraction of patches removed per sample."""
    norm_pix_loss: bool = True
    """Regress per-patch normalised pixels."""
    drop_path_rate: float = 0.0
    """Stochastic depth at the last encoder block (MAE pretraining uses none)."""
    decoder: Optional[Tuple[int, int, int]] = None
    """MAE decoder (width, depth, heads); null takes the preset's."""
    fused_attn: bool = True
    """scaled_dot_product_attention kernels (flash / memory-efficient on GPU)."""
    in_chans: int = 3
    """Input bands; must equal the bands of the pretraining shards (3 for MillionAID, the
    manifest's ``samples.bands`` for shards of ``rsfm shards images``)."""

    def __post_init__(self):
        check(self.preset in PRESETS, "preset", f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        patch = PRESETS[self.preset].patch_size
        check(self.img_size > 0 and self.img_size % patch == 0, "img_size",
              f"must be a positive multiple of the patch size {patch}, got {self.img_size}")
        check(0.0 < self.mask_ratio < 1.0, "mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        check(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")
        check(self.in_chans >= 1, "in_chans", f"must be >= 1, got {self.in_chans}")

    def train_flops(self) -> int:
        """Model FLOPs of one training sample (:func:`~rsfm_ds.models.preset_specs.mae_train_flops`)."""
        return mae_train_flops(self.preset, self.img_size, self.mask_ratio, self.decoder, self.in_chans)


@dataclass
class ViTDetConfig:
    """The ViTDet backbone of a fine-tuning run."""

    preset: str = "debug"
    """Backbone preset (rsfm models lists them)."""
    img_size: int = 512
    """Training input side in pixels."""
    window_size: int = 14
    """Window side in tokens for the non-global blocks (7 in the RVSA/MTP recipes)."""
    global_attn_indexes: Optional[Tuple[int, ...]] = None
    """Blocks with global attention; null takes the preset's (the last block of each quarter)."""
    drop_path_rate: float = 0.1
    """Stochastic depth at the last block."""
    use_rel_pos: bool = True
    """Decomposed relative position bias in window and global blocks (new, zero-initialised
    parameters), on as in detectron2's configs/common/models/mask_rcnn_vitdet.py (the ViTDet
    recipes). The paper's available text does not say whether its fine-tuning uses it; false
    runs the plain MAE encoder."""
    out_channels: int = 256
    """Width of every pyramid level."""
    abs_pos: Literal["interpolate", "sincos"] = "interpolate"
    """Absolute position table: "interpolate" keeps the pretrained table at the pretraining grid
    as a trainable parameter and resizes it bicubically to the input grid (detectron2's
    get_abs_pos); "sincos" computes the fixed sin-cos table of the input grid (never trained)."""
    pretrain_img_size: int = 224
    """Pretraining resolution in pixels: the grid of the "interpolate" table (224 as detectron2's
    ViT); set it to the MAE run's img_size so that the pretrained table is used as it was."""
    in_chans: int = 3
    """Input channels of the patch embedding: the band count of the images after data.bands
    (3 for RGB; e.g. 4 for RGB + near infrared). A pretrained backbone of another band count is
    adapted (backbone.patch_embed_adapt, docs/checkpoints.md)."""
    scale_factors: Tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    """Levels of the simple feature pyramid relative to the stride-16 map, finest first (the
    ``scale_factors`` of detectron2's ViTDet ``SimpleFeaturePyramid``): the default builds p2..p5;
    ``[1.0]`` is the single-scale ablation (one stride-16 level, p4), which the segmentation
    head accepts and Oriented R-CNN (five levels) does not. A descending subset of
    (4, 2, 1, 0.5) holding 1."""

    def __post_init__(self):
        check(self.preset in PRESETS, "preset", f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        check(self.img_size > 0 and self.img_size % 32 == 0, "img_size",
              f"must be a positive multiple of 32 (the coarsest pyramid stride), got {self.img_size}")
        check(self.window_size > 0, "window_size", f"must be positive, got {self.window_size}")
        depth = PRESETS[self.preset].depth
        if self.global_attn_indexes is not None:
            check(all(0 <= i < depth for i in self.global_attn_indexes), "global_attn_indexes",
                  f"must be block indexes in [0, {depth}), got {self.global_attn_indexes}")
        check(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")
        check_choices(self)
        patch = PRESETS[self.preset].patch_size
        check(self.pretrain_img_size > 0 and self.pretrain_img_size % patch == 0, "pretrain_img_size",
              f"must be a positive multiple of the patch size {patch}, got {self.pretrain_img_size}")
        check(self.in_chans >= 1, "in_chans", f"must be >= 1, got {self.in_chans}")
        scales = PYRAMID_SCALES
        check(set(self.scale_factors) <= set(scales) and 1.0 in self.scale_factors
              and list(self.scale_factors) == sorted(set(self.scale_factors), reverse=True), "scale_factors",
              f"must be a descending subset of {list(scales)} holding 1.0, got {list(self.scale_factors)}")


__all__ = ["MAEConfig", "ViTDetConfig", "PYRAMID_SCALES"]
