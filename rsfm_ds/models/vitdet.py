"""ViTDet backbone: the pretrained plain / parallel ViT at detection resolution, plus scale blocks.

Li et al. 2022 ("Exploring plain vision transformer backbones for object detection") keep the
pretrained ViT unchanged and adapt it in three ways, all reproduced here:

* **Window attention.** At 1024 px a 16 px patch grid holds 4096 tokens; global attention in every
  block is quadratic in that. All blocks but a few attend within non-overlapping ``w x w`` windows
  (tokens are padded to a multiple of ``w`` and cropped back); the blocks in
  ``global_attn_indexes`` attend globally and propagate information across windows. In a parallel
  layer every branch of a global layer is global (the choice is per layer, not per branch).
  Padding tokens are zeros after the block's norm and are *attended*, not masked, as in ViTDet and
  SAM: with no qkv bias a padding token has key and value 0, so it adds ``exp(0)`` to every
  softmax denominator of its window and nothing to the numerators.
* **Absolute position table stretched to the input grid** (``abs_pos="interpolate"``, the
  default, as detectron2's ``detectron2/modeling/backbone/vit.py`` with ``utils.py:get_abs_pos``).
  The backbone holds the pretrained table at the *pretraining* grid
  (``pretrain_img_size / patch_size`` a side, class-token row dropped) as a trainable parameter and
  resizes it bicubically (``align_corners=False``) to the grid of every input. From scratch, and
  when a checkpoint carries no table (this project's MAE keeps its fixed table as a buffer), it
  starts from the 2-D sin-cos table of the pretraining grid, which is what the encoder was
  pretrained with. ``abs_pos="sincos"`` instead recomputes the fixed sin-cos function exactly for
  the input grid (a buffer, never trained, never loaded).
* **Simple feature pyramid** ("scale blocks") from the last block's output: stride 4 by two 2x2
  transposed convolutions (norm + GELU between), stride 8 by one, stride 16 as is, stride 32 by 2x2
  max-pooling, each followed by a 1x1 and a 3x3 convolution, each with a channel LayerNorm, to a
  common width; an optional stride-64 level max-pools the stride-32 map (for RPN anchors).

Decomposed relative position bias (MViTv2 / SAM; detectron2's ``utils.py:add_decomposed_rel_pos``)
in every attention, window and global (``use_rel_pos``): tables sized for the window in window
blocks and for the ``img_size`` grid in global blocks, zero-initialised so that turning it on starts
from the pretrained function (MAE weights have none), and resampled linearly when a global block
runs on another grid (``utils.py:get_rel_pos``). :class:`ViTDetConfig` turns it on, as the ViTDet
recipes do (detectron2's ``configs/common/models/mask_rcnn_vitdet.py``); the constructor's
default is off, as detectron2's ``ViT`` class.

The class token of the pretrained encoder is dropped (windows have no place for it). The final
encoder ``norm`` is kept and applied before the pyramid, as RVSA / MTP do for MAE backbones
(detectron2's ViTDet drops it); the pyramid's own norms follow.

Pretrained weights are loaded by :func:`rsfm_ds.checkpoint.loading.load_backbone` (its module
docstring has the key mapping); :func:`new_parameter_names` lists what no pretrained encoder has.

timm's ``vision_transformer_sam.py`` and detectron2's ViTDet were the references; the window and
relative-position code is written here because timm's version is tied to its own SAM blocks and
our blocks take the attention class as an argument (``make_block(..., attn_layer=...)``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, PatchEmbed

from .model_configs import PYRAMID_SCALES, ViTDetConfig
from .presets import get_preset
from .seeded_init import Constant, Rule, SeededInit, Values, fan_in_uniform, kaiming_normal, xavier_uniform
from .vit import Attention, VisionTransformer, linear_norm_rules, make_block, sincos_pos_embed_2d


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Split a token grid into non-overlapping windows, zero-padding bottom and right.

    Args:
        x: ``[B, H, W, C]`` tokens.
        window_size: window side ``w``.

    Returns:
        ``[B * nh * nw, w, w, C]`` windows in row-major window order, and the padded grid
        ``(nh * w, nw * w)``.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window_size, (-w) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    return x.transpose(2, 3).reshape(-1, window_size, window_size, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window_size: int, padded_hw: Tuple[int, int],
                       hw: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B * nh * nw, w, w, C] -> [B, H, W, C]``, cropping
    the padding away."""
    hp, wp = padded_hw
    nh, nw = hp // window_size, wp // window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, nh, nw, window_size, window_size, c).transpose(2, 3)
    x = x.reshape(-1, hp, wp, c)
    return x[:, :hw[0], :hw[1], :].contiguous()


ABS_POS_MODES = ("interpolate", "sincos")


def resample_pos_table(table: torch.Tensor, grid_hw: Sequence[int]) -> torch.Tensor:
    """Resize a position table to another patch grid, as detectron2's ``utils.py:get_abs_pos``.

    Bicubic with ``align_corners=False`` and no antialiasing (timm's ``resample_abs_pos_embed``
    with ``antialias=False``; timm's default ``antialias=True`` uses another cubic kernel). The
    interpolation runs in fp32 (bicubic kernels need it on some devices) and the result has the
    table's dtype; gradients flow back to the table.

    Args:
        table: ``[1, h, w, D]``.
        grid_hw: ``(gh, gw)``.

    Returns:
        ``[1, gh, gw, D]``; ``table`` itself when the grid is already ``(h, w)``.
    """
    grid = (int(grid_hw[0]), int(grid_hw[1]))
    if tuple(table.shape[1:3]) == grid:
        return table
    out = F.interpolate(table.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic",
                        align_corners=False)  # [1, D, gh, gw]
    return out.permute(0, 2, 3, 1).to(table.dtype)


def relative_position_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Embeddings of every query/key offset along one axis of length ``size``.

    Args:
        rel_pos: ``[L, head_dim]`` table over offsets ``-(L-1)/2 .. (L-1)/2``; resampled linearly
            when ``L != 2 * size - 1`` (a global block run at another resolution than built for).

    Returns:
        ``[size, size, head_dim]`` whose ``[i, j]`` entry embeds the offset ``i - j``.
    """
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[coords[:, None] - coords[None, :] + size - 1]


def decomposed_rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                            grid_hw: Tuple[int, int]) -> torch.Tensor:
    """Decomposed relative position bias of MViTv2 / SAM: ``q . R_h[dy] + q . R_w[dx]``.

    Args:
        q: ``[B, heads, h*w, head_dim]`` unscaled queries over a row-major ``h x w`` grid.
        rel_pos_h, rel_pos_w: ``[L, head_dim]`` tables along rows and columns.
        grid_hw: ``(h, w)``.

    Returns:
        Additive attention bias ``[B, heads, h*w, h*w]`` in ``q``'s dtype.
    """
    h, w = grid_hw
    b, heads, _, dim = q.shape
    r_q = q.reshape(b, heads, h, w, dim)
    table_h = relative_position_table(rel_pos_h, h).to(q.dtype)  # [h, h, head_dim]
    table_w = relative_position_table(rel_pos_w, w).to(q.dtype)  # [w, w, head_dim]
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, table_h)
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, table_w)
    # bias: [B, heads, h, w, kh, kw], the key grid flattened row-major like the queries.
    bias = bias_h[..., :, None] + bias_w[..., None, :]
    return bias.reshape(b, heads, h * w, h * w)


class ViTDetAttention(Attention):
    """Window or global attention over a ``[B, H, W, C]`` token grid, :class:`Attention`'s weights.

    Plugs into :class:`~rsfm_ds.models.vit.Block` and ``ParallelBlock`` through ``attn_layer``
    (norms and MLPs act on the last dimension, so the blocks run unchanged on the 4-D grid).

    Args:
        dim: token width C.
        num_heads: heads; ``dim`` must divide evenly.
        qkv_bias: bias on the fused qkv projection.
        fused_attn: ``scaled_dot_product_attention`` (True) or explicit softmax (False).
        window_size: window side in tokens; 0 for global attention over the whole grid.
        use_rel_pos: add a decomposed relative position bias (zero-initialised tables).
        rel_pos_grid: ``(h, w)`` the tables are sized for: the window for window blocks, the
            training grid for global blocks (other grids resample the tables linearly).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, fused_attn: bool = True,
                 window_size: int = 0, use_rel_pos: bool = False,
                 rel_pos_grid: Optional[Tuple[int, int]] = None):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, fused_attn=fused_attn)
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0 = global attention), got {window_size}")
        self.window_size = window_size
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if window_size:
                rel_pos_grid = (window_size, window_size)
            elif rel_pos_grid is None:
                raise ValueError("a global ViTDetAttention with use_rel_pos needs rel_pos_grid")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_grid[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_grid[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, H, W, C] -> [B, H, W, C]``."""
        B, H, W, C = x.shape
        if self.window_size:
            x, padded_hw = window_partition(x, self.window_size)  # [B * windows, w, w, C]
        b, h, w, _ = x.shape
        # qkv: [3, b, heads, h*w, head_dim]
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        x = self.attend(q, k, v, bias).transpose(1, 2).reshape(b, h, w, C)
        if self.window_size:
            x = window_unpartition(x, self.window_size, padded_hw, (H, W))
        # The output projection is per token, so it runs after cropping, on real tokens only.
        return self.proj(x)


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    # No conv bias: the LayerNorm that follows has its own.
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                           bias=False)),
        ("norm", LayerNorm2d(out_channels)),
    ]))


class ScaleBlock(nn.Module):
    """One pyramid level: resample the ViT map, then 1x1 conv + norm, 3x3 conv + norm.

    Args:
        in_dim: ViT width D.
        out_channels: pyramid width.
        scale: 4 (ConvT 2x2 s2 -> norm -> GELU -> ConvT 2x2 s2), 2 (ConvT 2x2 s2),
            1 (identity) or 0.5 (max-pool 2x2).
    """

    def __init__(self, in_dim: int, out_channels: int, scale: float):
        super().__init__()
        if scale == 4:
            self.resample = nn.Sequential(
                nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2), LayerNorm2d(in_dim // 2),
                nn.GELU(),
                nn.ConvTranspose2d(in_dim // 2, in_dim // 4, 2, stride=2))
            width = in_dim // 4
        elif scale == 2:
            self.resample = nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2)
            width = in_dim // 2
        elif scale == 1:
            self.resample = nn.Identity()
            width = in_dim
        elif scale == 0.5:
            self.resample = nn.MaxPool2d(2, stride=2)
            width = in_dim
        else:
            raise ValueError(f"scale must be one of 4, 2, 1, 0.5, got {scale}")
        self.lateral = _conv_norm(width, out_channels, 1)
        self.output = _conv_norm(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, h, w] -> [B, out_channels, h * scale, w * scale]`` (floor for 0.5)."""
        return self.output(self.lateral(self.resample(x)))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid over a single stride-``patch_size`` map.

    Args:
        in_dim: ViT width D.
        out_channels: width of every level.
        patch_size: stride of the input map; a power of two >= 4 so every level has an integer
            stride and a name ``p{log2(stride)}`` (patch 16: p2, p3, p4, p5).
        extra_p6: add a level at twice the coarsest stride by 1x1 max-pooling with stride 2 of the
            coarsest output (no parameters), as detectron2's ``LastLevelMaxPool``.
        scale_factors: the levels to build, finest first: a descending subset of ``SCALES``
            that holds 1.0, as the ``scale_factors`` argument of detectron2's
            ``SimpleFeaturePyramid`` (``detectron2/modeling/backbone/vit.py``). ``(1.0,)`` is the
            single-scale ablation: one stride-``patch_size`` map (ViTDet paper, Table 1's
            no-pyramid baseline).

    Attributes:
        out_strides: level name -> stride in input pixels, finest first.
        out_channels: width of every level.

    Its parameters are initialised by :meth:`ViTDetBackbone.init_module` (standalone they keep
    PyTorch's defaults).
    """

    SCALES = PYRAMID_SCALES

    def __init__(self, in_dim: int, out_channels: int = 256, patch_size: int = 16,
                 extra_p6: bool = False, scale_factors: Sequence[float] = SCALES):
        super().__init__()
        scale_factors = tuple(float(s) for s in scale_factors)
        if (not set(scale_factors) <= set(self.SCALES) or 1.0 not in scale_factors
                or list(scale_factors) != sorted(set(scale_factors), reverse=True)):
            raise ValueError(f"scale_factors must be a descending subset of {self.SCALES} holding 1.0, "
                             f"got {scale_factors}")
        if patch_size < 4 or patch_size & (patch_size - 1):
            raise ValueError(f"patch_size must be a power of two >= 4 for the pyramid, "
                             f"got {patch_size}")
        if in_dim % 4:
            raise ValueError(f"the x4 scale block halves the width twice: in_dim {in_dim} is not "
                             f"a multiple of 4")
        strides = [int(patch_size / s) for s in scale_factors]
        self.levels = nn.ModuleDict({
            f"p{int(math.log2(stride))}": ScaleBlock(in_dim, out_channels, scale)
            for stride, scale in zip(strides, scale_factors)})
        self.out_strides: Dict[str, int] = {f"p{int(math.log2(s))}": s for s in strides}
        self.extra_p6 = extra_p6
        if extra_p6:
            self.extra_name = f"p{int(math.log2(strides[-1])) + 1}"
            self.out_strides[self.extra_name] = 2 * strides[-1]
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``x: [B, D, h, w]`` -> ``{name: [B, out_channels, s * h, s * w]}`` for s = 4, 2, 1, 1/2
        (floor), and the extra level at ``ceil(floor(h/2) / 2)``."""
        out = {name: level(x) for name, level in self.levels.items()}
        if self.extra_p6:
            out[self.extra_name] = F.max_pool2d(out[list(self.levels)[-1]], kernel_size=1, stride=2)
        return out


class ViTDetBackbone(SeededInit, nn.Module):
    """Plain or parallel ViT with window / global attention and a simple feature pyramid.

    Input ``[B, in_chans, H, W]``; an image whose sides are not multiples of ``patch_size`` is
    zero-padded at the bottom and right to the next multiple (as detection pipelines pad batches),
    so the token grid is ``(ceil(H/p), ceil(W/p))``. Output: ``{"p2": [B, out_channels, 4gh, 4gw],
    "p3": 2g, "p4": g, "p5": floor(g/2)[, "p6": ceil(floor(g/2)/2)]}`` for patch 16, i.e. strides
    4, 8, 16, 32 (, 64) and exactly ``H/stride`` when ``H`` is a multiple of the coarsest stride.

    Args:
        img_size: fine-tuning resolution: the global blocks' relative-position tables are sized
            for its grid (other input sizes resample them); with ``abs_pos="sincos"`` also the
            grid of the registered table.
        patch_size: patch side in pixels.
        in_chans: input channels.
        embed_dim: token width D.
        depth: number of layers.
        num_heads: attention heads per branch.
        mlp_dim: hidden width of each MLP branch.
        num_branches: parallel branches per layer (1 = standard ViT).
        qkv_bias: bias on qkv projections (the presets have none).
        drop_path_rate: stochastic depth of the last layer, linear from 0 at the first.
        window_size: window side in tokens for the non-global layers.
        global_attn_indexes: layers with global attention (every branch of such a layer).
        use_rel_pos: decomposed relative position bias in every attention (zero-initialised).
        fused_attn: ``scaled_dot_product_attention`` (True) or explicit softmax (False).
        out_channels: width of every pyramid level.
        extra_p6: add the stride-64 max-pooled level (detection).
        abs_pos: ``"interpolate"``: a trainable table ``pos_embed [1, pg, pg, D]`` at the
            pretraining grid ``pg = pretrain_img_size / patch_size``, resized bicubically to each
            input grid (detectron2's ViTDet); ``"sincos"``: the fixed sin-cos table computed for
            each input grid (a buffer, not trained).
        pretrain_img_size: pretraining resolution, which sets the grid of the ``interpolate``
            table (224 as detectron2's ``ViT``); match the checkpoint's so that its table loads
            without resampling.
        scale_factors: pyramid levels (:class:`SimpleFeaturePyramid`); ``(1.0,)`` outputs the
            single stride-16 level ``p4`` (and ``p5`` with ``extra_p6``).
    """

    # Reused as is: both act on ``self.blocks`` and do not care about the token layout.
    set_grad_checkpointing = VisionTransformer.set_grad_checkpointing
    run_blocks = VisionTransformer.run_blocks

    def __init__(self, img_size: int = 1024, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 num_branches: int = 1, qkv_bias: bool = False, drop_path_rate: float = 0.1,
                 window_size: int = 14, global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
                 use_rel_pos: bool = False, fused_attn: bool = True, out_channels: int = 256,
                 extra_p6: bool = False, abs_pos: str = "interpolate", pretrain_img_size: int = 224,
                 scale_factors: Sequence[float] = SimpleFeaturePyramid.SCALES):
        super().__init__()
        if abs_pos not in ABS_POS_MODES:
            raise ValueError(f"abs_pos must be one of {ABS_POS_MODES}, got {abs_pos!r}")
        if pretrain_img_size < patch_size:
            raise ValueError(f"pretrain_img_size {pretrain_img_size} is smaller than a patch ({patch_size})")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} are outside the {depth} layers")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_branches = num_branches
        self.window_size = window_size
        self.global_attn_indexes = tuple(sorted(set(global_attn_indexes)))
        self.grad_checkpointing = False
        self.checkpoint_use_reentrant = False

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, output_fmt="NHWC", strict_img_size=False,
                                      dynamic_img_pad=True)
        grid = tuple(self.patch_embed.grid_size)
        self.abs_pos = abs_pos
        self.pretrain_grid = (pretrain_img_size // patch_size,) * 2
        # Built on the default device so that a model created under ``torch.device(...)`` (meta
        # included) has its table there too.
        if abs_pos == "interpolate":
            # A parameter, trained in fine-tuning as in ViTDet, at the pretraining grid so that a
            # pretrained table loads as is; forward resizes it to the input grid.
            self.pos_embed = nn.Parameter(self._table(self.pretrain_grid).to(torch.get_default_device()))
        else:
            # Not persistent: a pure function of the grid.
            self.register_buffer("pos_embed", self._table(grid).to(torch.get_default_device()),
                                 persistent=False)
        dpr = np.linspace(0, drop_path_rate, depth).tolist()
        # Global layers get window_size 0; every branch of a layer shares its attn_layer.
        self.blocks = nn.ModuleList([
            make_block(embed_dim, num_heads, mlp_dim, num_branches, qkv_bias=qkv_bias,
                       drop_path=dpr[i], fused_attn=fused_attn,
                       attn_layer=partial(
                           ViTDetAttention, use_rel_pos=use_rel_pos, rel_pos_grid=grid,
                           window_size=0 if i in self.global_attn_indexes else window_size))
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.pyramid = SimpleFeaturePyramid(embed_dim, out_channels, patch_size, extra_p6=extra_p6,
                                            scale_factors=scale_factors)
        self.out_strides: Dict[str, int] = dict(self.pyramid.out_strides)
        self.out_channels = out_channels
        self.init_weights()

    def init_rules(self, m: nn.Module) -> Dict[str, Rule]:
        """Initialisation of the parameters that ``m`` owns directly (not its children's).

        Encoder: MAE's rules (:meth:`VisionTransformer.init_rules`: patch projection and linear
        layers xavier-uniform with zero bias, norms at identity); the ``interpolate`` position
        table the sin-cos table of the pretraining grid (the fixed table MAE pretrains with;
        detectron2's ``vit.py`` draws it from a truncated normal of std 0.02 instead); relative
        position tables zero. Pyramid: 1x1 / 3x3 convolutions as detectron2's ``c2_msra_fill``
        (kaiming normal, fan out, ReLU gain); transposed convolutions at PyTorch's default
        (``ConvTranspose2d.reset_parameters``: ``U(+-1/sqrt(fan_in))`` for weight and bias).
        Values are drawn by :mod:`rsfm_ds.models.seeded_init`; ``init_module(m)`` (from
        :class:`~rsfm_ds.models.seeded_init.SeededInit`) applies these rules to one module.
        """
        if m is self:
            if self.abs_pos == "interpolate":
                return {"pos_embed": Values(self._table(self.pretrain_grid))}
            return {}
        if m is self.patch_embed.proj:
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            rules: Dict[str, Rule] = {"weight": xavier_uniform(fan_in, m.out_channels)}
            return {**rules, "bias": Constant(0.0)} if m.bias is not None else rules
        shared = linear_norm_rules(m)
        if shared:
            return shared
        if isinstance(m, ViTDetAttention):
            return {"rel_pos_h": Constant(0.0), "rel_pos_w": Constant(0.0)} if m.use_rel_pos else {}
        if isinstance(m, nn.Conv2d):
            receptive = m.kernel_size[0] * m.kernel_size[1]
            rules = {"weight": kaiming_normal(m.out_channels * receptive)}
            if m.bias is not None:  # c2_msra_fill zeroes it; our convs have none (a norm follows)
                rules["bias"] = Constant(0.0)
            return rules
        if isinstance(m, nn.ConvTranspose2d):
            # Weight [in, out / groups, kh, kw]: PyTorch's fan_in is dim 1 times the kernel.
            bound = fan_in_uniform(m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
            return {"weight": bound, "bias": bound} if m.bias is not None else {"weight": bound}
        return {}

    def _table(self, grid_hw: Tuple[int, int]) -> torch.Tensor:
        table = sincos_pos_embed_2d(self.embed_dim, grid_hw)  # [1, gh*gw, D], row-major
        return table.reshape(1, grid_hw[0], grid_hw[1], self.embed_dim)

    def pos_embed_for(self, grid_hw: Sequence[int]) -> torch.Tensor:
        """Position table ``[1, gh, gw, D]`` for a patch grid, on the table's device: the
        ``interpolate`` parameter resized bicubically (:func:`resample_pos_table`), or the sin-cos
        table of the grid."""
        if self.abs_pos == "interpolate":
            return resample_pos_table(self.pos_embed, grid_hw)
        if tuple(grid_hw) == tuple(self.pos_embed.shape[1:3]):
            return self.pos_embed
        return self._table(tuple(grid_hw)).to(self.pos_embed.device)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, gh, gw, D]``: the normalised last-layer tokens on their grid."""
        x = self.patch_embed(x)  # x: [B, gh, gw, D]
        x = x + self.pos_embed_for(x.shape[1:3]).to(x.dtype)
        return self.norm(self.run_blocks(x))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``[B, C, H, W]`` -> ``{name: [B, out_channels, H / stride, W / stride]}``, finest first
        (see the class docstring for sizes that are not multiples of the strides)."""
        return self.pyramid(self.forward_tokens(x).permute(0, 3, 1, 2))


def build_vitdet(cfg: ViTDetConfig, extra_p6: bool = False) -> "ViTDetBackbone":
    """The backbone a run config's ``backbone:`` section describes; ``extra_p6`` adds the
    stride-64 level (detection)."""
    return create_vitdet(cfg.preset, cfg.img_size, window_size=cfg.window_size,
                         global_attn_indexes=cfg.global_attn_indexes, drop_path_rate=cfg.drop_path_rate,
                         out_channels=cfg.out_channels, use_rel_pos=cfg.use_rel_pos, extra_p6=extra_p6,
                         abs_pos=cfg.abs_pos, pretrain_img_size=cfg.pretrain_img_size,
                         in_chans=cfg.in_chans, scale_factors=cfg.scale_factors)


def create_vitdet(preset: str, img_size: int, window_size: int = 14,
                  global_attn_indexes: Optional[Sequence[int]] = None, drop_path_rate: float = 0.1,
                  out_channels: int = 256, use_rel_pos: bool = False, extra_p6: bool = False,
                  **overrides) -> ViTDetBackbone:
    """ViTDet backbone of a registered preset.

    Args:
        preset: preset name (``debug``, ``vit_b12x1``, ``vit_l12x4``, ``vit_1b3``, ``vit_2b4``).
        img_size: fine-tuning resolution (1024 for DOTA, 800 for DIOR-R, 512 for segmentation).
        window_size: window side in tokens (14 as ViTDet; 7 as RVSA / MTP).
        global_attn_indexes: global layers; default the preset's (the last layer of each quarter
            of the depth: 2, 5, 8, 11 for the 12-layer presets, 1, 3 for ``debug``).
        drop_path_rate: stochastic depth at the last layer.
        out_channels: pyramid width.
        use_rel_pos: decomposed relative position bias (new, zero-initialised parameters).
        extra_p6: add the stride-64 level.
        **overrides: any other :class:`ViTDetBackbone` argument (``qkv_bias``, ``fused_attn``,
            ``abs_pos``, ``pretrain_img_size``...).
    """
    p = get_preset(preset)
    if global_attn_indexes is None:
        global_attn_indexes = p.global_attn_indexes
    kwargs = dict(p.vit_kwargs(), img_size=img_size, window_size=window_size,
                  global_attn_indexes=global_attn_indexes, drop_path_rate=drop_path_rate,
                  out_channels=out_channels, use_rel_pos=use_rel_pos, extra_p6=extra_p6)
    kwargs.update(overrides)
    return ViTDetBackbone(**kwargs)


def new_parameter_names(model: ViTDetBackbone) -> List[str]:
    """Backbone keys a pretrained encoder need not provide: the pyramid, the relative-position
    tables and the ``interpolate`` position table (this project's encoders keep their fixed table
    as a buffer, so their checkpoints hold none; the backbone then keeps its sin-cos start)."""
    return [k for k in model.state_dict()
            if k.startswith("pyramid.") or ".rel_pos_" in k or k == "pos_embed"]


__all__ = ["ViTDetConfig", "build_vitdet", "ViTDetAttention", "ViTDetBackbone", "SimpleFeaturePyramid", "ScaleBlock",
           "create_vitdet", "new_parameter_names",
           "window_partition", "window_unpartition", "decomposed_rel_pos_bias",
           "relative_position_table", "resample_pos_table", "ABS_POS_MODES"]
