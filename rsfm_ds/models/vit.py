"""Plain and parallel Vision Transformers.

A block is either the standard pre-norm block (``num_branches=1``: attention then MLP, each
residual) or the *parallel* block of Touvron et al. 2022 ("three things everyone should know about
ViTs"; timm's ``ParallelThingsBlock``): ``num_branches`` attention branches are summed into one
residual update, then ``num_branches`` MLP branches likewise, each branch with its own norm.
Widening through branches keeps the depth at 12 while the parameter count grows to billions, which
is how the paper scales to 2.4B.

The position embedding is a fixed 2-D sin-cos table (a buffer, never trained), so it can be
recomputed for any input grid instead of interpolated. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` so GPUs get flash / memory-efficient kernels;
``fused_attn=False`` selects the explicit softmax path (the reference the tests compare against).

Key names follow timm (``patch_embed.proj``, ``blocks.{i}.attn.qkv``, ``norm``...) so weights move
between the two without renaming; parallel blocks follow ``ParallelThingsBlock``
(``blocks.{i}.attns.{b}.norm`` / ``.attn``, ``blocks.{i}.mlps.{b}.norm`` / ``.mlp``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.layers import DropPath, Mlp, PatchEmbed

from .seeded_init import Constant, Normal, Rule, SeededInit, xavier_uniform


def sincos_pos_embed_2d(embed_dim: int, grid_hw: Sequence[int], cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position table as in MAE.

    Returns ``[1, (1 if cls_token) + gh * gw, embed_dim]`` (float32); the class-token row is zero.
    Half the channels encode the column (x) and half the row (y), which makes the table a function
    of the grid alone, so any resolution gets an exact table rather than an interpolated one.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for a 2-D sin-cos table, got {embed_dim}")
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))
    ys, xs = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # [gh*gw, D/4]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([encode(xs), encode(ys)], axis=1)  # [gh*gw, D]
    if cls_token:
        table = np.concatenate([np.zeros([1, embed_dim]), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


class Attention(nn.Module):
    """Multi-head self-attention over ``[B, N, C]`` tokens.

    Args:
        dim: token width C.
        num_heads: heads; ``dim`` must divide evenly.
        qkv_bias: bias on the fused qkv projection (off by default: the paper's presets have none).
        fused_attn: use ``scaled_dot_product_attention`` (True) or explicit softmax (False).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, fused_attn: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention of ``q, k, v: [B, heads, N, head_dim]`` with an optional additive bias
        broadcastable to ``[B, heads, N, N]``; returns ``[B, heads, N, head_dim]``."""
        if self.fused_attn:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if attn_bias is not None:
            attn = attn + attn_bias
        return attn.softmax(dim=-1) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # qkv: [3, B, heads, N, head_dim]
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = self.attend(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Standard pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool = False,
                 drop_path: float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 fused_attn: bool = True, attn_layer: Callable[..., nn.Module] = Attention):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias, fused_attn=fused_attn)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=mlp_dim, act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ParallelBlock(nn.Module):
    """Parallel block: ``x + sum_b attn_b(norm_b(x))`` then ``x + sum_b mlp_b(norm_b(x))``.

    Stochastic depth drops the summed update (not single branches), so one branch behaves exactly
    as :class:`Block`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, num_branches: int = 2,
                 qkv_bias: bool = False, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, fused_attn: bool = True,
                 attn_layer: Callable[..., nn.Module] = Attention):
        super().__init__()
        self.attns = nn.ModuleList([
            nn.Sequential(OrderedDict([
                ("norm", norm_layer(dim)),
                ("attn", attn_layer(dim, num_heads, qkv_bias=qkv_bias, fused_attn=fused_attn)),
            ])) for _ in range(num_branches)])
        self.mlps = nn.ModuleList([
            nn.Sequential(OrderedDict([
                ("norm", norm_layer(dim)),
                ("mlp", Mlp(dim, hidden_features=mlp_dim, act_layer=nn.GELU)),
            ])) for _ in range(num_branches)])
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(torch.stack([branch(x) for branch in self.attns]).sum(dim=0))
        return x + self.drop_path2(torch.stack([branch(x) for branch in self.mlps]).sum(dim=0))


def make_block(dim: int, num_heads: int, mlp_dim: int, num_branches: int, **kwargs) -> nn.Module:
    """A :class:`Block` for one branch, else a :class:`ParallelBlock`."""
    if num_branches == 1:
        return Block(dim, num_heads, mlp_dim, **kwargs)
    return ParallelBlock(dim, num_heads, mlp_dim, num_branches=num_branches, **kwargs)


def linear_norm_rules(m: nn.Module) -> Dict[str, Rule]:
    """MAE's rules for the layers every transformer shares: a linear layer xavier-uniform with zero
    bias, a LayerNorm (timm's LayerNorm2d included) at identity; ``{}`` for anything else."""
    if isinstance(m, nn.Linear):
        rules: Dict[str, Rule] = {"weight": xavier_uniform(m.in_features, m.out_features)}
        return {**rules, "bias": Constant(0.0)} if m.bias is not None else rules
    if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        rules = {"weight": Constant(1.0)}
        return {**rules, "bias": Constant(0.0)} if m.bias is not None else rules
    return {}


class VisionTransformer(SeededInit, nn.Module):
    """ViT encoder with plain or parallel blocks and a fixed sin-cos position table.

    Args:
        img_size: training resolution; fixes the size of the registered position table (other
            sizes are accepted at run time and get their own table).
        patch_size: square patch side in pixels.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of blocks (layers).
        num_heads: attention heads per branch.
        mlp_dim: hidden width of each MLP branch.
        num_branches: parallel attention/MLP branches per block (1 = standard ViT).
        qkv_bias: bias on qkv projections.
        class_token: prepend a learnable class token.
        drop_path_rate: stochastic depth at the last block, linearly increasing from 0.
        fused_attn: scaled-dot-product kernels (True) or explicit softmax (False).
        num_classes: size of a linear classification head on the pooled token (0 = none).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 num_branches: int = 1, qkv_bias: bool = False, class_token: bool = True,
                 drop_path_rate: float = 0.0, fused_attn: bool = True, num_classes: int = 0,
                 global_pool: str = "token"):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_branches = num_branches
        self.num_prefix_tokens = 1 if class_token else 0
        self.global_pool = global_pool
        self.grad_checkpointing = False
        self.checkpoint_use_reentrant = False

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        # Not persistent: the table is a pure function of the grid, so checkpoints need not carry it.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(
            embed_dim, self.patch_embed.grid_size, cls_token=class_token), persistent=False)
        dpr = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            make_block(embed_dim, num_heads, mlp_dim, num_branches, qkv_bias=qkv_bias,
                       drop_path=dpr[i], fused_attn=fused_attn)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_rules(self, m: nn.Module) -> Dict[str, Rule]:
        """Initialisation of the parameters that ``m`` owns directly (not its children's).

        facebookresearch/mae's ``models_mae.py`` (``initialize_weights`` / ``_init_weights``):
        patch projection xavier-uniform as a linear layer (over its ``[out, in * p * p]`` view),
        linear layers xavier-uniform with zero bias, norms at identity, class token N(0, 0.02).
        Values are drawn by :mod:`rsfm_ds.models.seeded_init`, so they are a function of the seed
        and the parameter names alone (not of the order modules are visited nor of ZeRO-3
        partitioning). Rules come from module attributes, not tensor shapes, because a module
        built under ``zero.Init`` holds empty shards.
        """
        if m is self:
            return {"cls_token": Normal(0.0, 0.02)} if self.cls_token is not None else {}
        if m is self.patch_embed.proj:
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            rules: Dict[str, Rule] = {"weight": xavier_uniform(fan_in, m.out_channels)}
            return {**rules, "bias": Constant(0.0)} if m.bias is not None else rules
        return linear_norm_rules(m)

    def set_grad_checkpointing(self, enable: bool = True, use_reentrant: bool = False) -> None:
        """Recompute each block in the backward pass instead of storing its activations.

        ``use_reentrant=True`` is needed with frozen parameters under ZeRO-3 (docs/deepspeed.md).
        """
        self.grad_checkpointing = enable
        self.checkpoint_use_reentrant = use_reentrant

    def pos_embed_for(self, grid_hw: Sequence[int]) -> torch.Tensor:
        """Position table ``[1, prefix + gh*gw, D]`` for a patch grid, on the model's device."""
        if tuple(grid_hw) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        table = sincos_pos_embed_2d(self.embed_dim, grid_hw, cls_token=self.cls_token is not None)
        return table.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def run_blocks(self, x: torch.Tensor, blocks: Optional[Sequence[nn.Module]] = None) -> torch.Tensor:
        """Apply ``blocks`` (default: all) to ``x: [B, N, D]``, with checkpointing when enabled."""
        for blk in (self.blocks if blocks is None else blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=self.checkpoint_use_reentrant)
            else:
                x = blk(x)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify and add positions: ``[B, C, H, W] -> [B, gh*gw, D]`` (no prefix token)."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = self.patch_embed(x)  # x: [B, L, D]
        # The table follows the activations' dtype: engines may cast parameters but not buffers.
        return x + self.pos_embed_for(grid)[:, self.num_prefix_tokens:, :].to(x.dtype)

    def prepend_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the class token (with its zero position) to ``x: [B, L, D]``."""
        if self.cls_token is None:
            return x
        cls = self.cls_token + self.pos_embed[:, :1, :].to(self.cls_token.dtype)
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, prefix + L, D]`` normalised tokens."""
        x = self.prepend_prefix(self.embed(x))
        return self.norm(self.run_blocks(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        else:
            x = x[:, 0]
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


__all__ = ["Attention", "Block", "ParallelBlock", "VisionTransformer", "make_block",
           "linear_norm_rules", "sincos_pos_embed_2d"]
