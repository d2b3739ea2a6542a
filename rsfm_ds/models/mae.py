"""Masked autoencoder (He et al. 2022) around the plain or parallel ViT encoder.

Per sample, a random subset of patches is kept (``round(L * (1 - mask_ratio))`` of ``L``); only
those enter the encoder, which is why MAE pretraining of billion-parameter encoders is cheap. A
light decoder sees the encoded tokens plus a shared mask token at every removed position and
predicts the pixels of each patch; the loss is the mean squared error on the *masked* patches only,
optionally against per-patch normalised pixels (``norm_pix_loss``), and is returned by ``forward``.

Any number of input bands (``in_chans``): the patch embedding takes ``C`` channels and the decoder
predicts ``p*p*C`` values per patch; the target of a patch covers all of its bands, and with
``norm_pix_loss`` it is normalised over all ``p*p*C`` values together, as facebookresearch/mae's
``models_mae.py`` (``patchify`` / ``forward_loss``) does with its ``in_chans``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .model_configs import MAEConfig
from .preset_specs import mae_train_flops  # noqa: F401  (re-exported)
from .presets import get_preset
from .seeded_init import Normal, Rule, SeededInit
from .vit import Block, VisionTransformer, sincos_pos_embed_2d


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, H, W] -> [N, L, p*p*C]`` with patches in row-major order, pixels (p, p, C)."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid_hw: Tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[N, L, p*p*C] -> [N, C, H, W]``."""
    p, (gh, gw) = patch_size, grid_hw
    x = x.reshape(x.shape[0], gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(x.shape[0], channels, gh * p, gw * p)


def random_masking(batch: int, length: int, mask_ratio: float, device: torch.device,
                   generator: Optional[torch.Generator] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise.

    Returns ``ids_keep [N, K]`` (kept patch indexes, K = round(L*(1-ratio))), ``mask [N, L]``
    (1 = removed, in the original patch order) and ``ids_restore [N, L]`` (unshuffles the
    [kept, removed] sequence back to patch order). The same generator state gives the same mask.
    """
    len_keep = int(round(length * (1 - mask_ratio)))
    if not 0 < len_keep <= length:
        raise ValueError(f"mask_ratio {mask_ratio} keeps {len_keep} of {length} patches")
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, length, generator=generator, device=gen_device).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(batch, length, device=device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return ids_keep, mask, ids_restore


class MaskedAutoencoder(SeededInit, nn.Module):
    """MAE with a :class:`VisionTransformer` encoder.

    Args:
        encoder: the backbone; it must have a class token (the decoder carries it through).
        decoder_dim: decoder token width.
        decoder_depth: decoder blocks (standard, with qkv bias as in the MAE release).
        decoder_heads: decoder attention heads.
        norm_pix_loss: regress per-patch normalised pixels (mean 0, var 1 within each patch).
        mask_ratio: default fraction of patches removed.
    """

    def __init__(self, encoder: VisionTransformer, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, norm_pix_loss: bool = True, mask_ratio: float = 0.75):
        super().__init__()
        if encoder.cls_token is None:
            raise ValueError("MaskedAutoencoder needs an encoder built with class_token=True")
        self.encoder = encoder
        self.patch_size = encoder.patch_size
        self.in_chans = encoder.patch_embed.proj.in_channels
        self.norm_pix_loss = norm_pix_loss
        self.mask_ratio = mask_ratio

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(
            decoder_dim, encoder.patch_embed.grid_size, cls_token=True), persistent=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_dim, decoder_heads, 4 * decoder_dim, qkv_bias=True)
            for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * self.in_chans)
        self.init_weights()

    def init_rules(self, m: nn.Module) -> Dict[str, Rule]:
        """The encoder's rules (:meth:`VisionTransformer.init_rules`) plus the mask token
        N(0, 0.02), as facebookresearch/mae's ``models_mae.py``; see
        :mod:`rsfm_ds.models.seeded_init` for how values follow from the seed."""
        if m is self:
            return {"mask_token": Normal(0.0, 0.02)}
        return self.encoder.init_rules(m)

    def set_grad_checkpointing(self, enable: bool = True, use_reentrant: bool = False) -> None:
        """Checkpoint the encoder blocks (the decoder is small and sees few tokens per FLOP)."""
        self.encoder.set_grad_checkpointing(enable, use_reentrant=use_reentrant)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float,
                        generator: Optional[torch.Generator] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the kept patches: returns ``latent [N, 1 + K, D]``, ``mask [N, L]``,
        ``ids_restore [N, L]``."""
        x = self.encoder.embed(imgs)  # x: [N, L, D]
        n, length, d = x.shape
        ids_keep, mask, ids_restore = random_masking(n, length, mask_ratio, x.device, generator)
        x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, d))  # [N, K, D]
        x = self.encoder.prepend_prefix(x)
        x = self.encoder.norm(self.encoder.run_blocks(x))
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                        grid_hw: Tuple[int, int]) -> torch.Tensor:
        """Predict every patch's pixels: ``[N, 1 + K, D] -> [N, L, p*p*C]``."""
        x = self.decoder_embed(latent)  # [N, 1 + K, Dd]
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # [N, L, Dd], kept then removed
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)  # [N, 1 + L, Dd], patch order
        if tuple(grid_hw) == tuple(self.encoder.patch_embed.grid_size):
            pos = self.decoder_pos_embed
        else:
            pos = sincos_pos_embed_2d(x.shape[-1], grid_hw, cls_token=True).to(x)
        x = x + pos.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Regression target ``[N, L, p*p*C]``: pixels, or per-patch normalised pixels."""
        target = patchify(imgs, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches of the batch."""
        per_patch = ((pred - self.target(imgs)) ** 2).mean(dim=-1)  # [N, L]
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: Optional[float] = None,
                generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``imgs [N, C, H, W]`` -> ``(loss, pred [N, L, p*p*C], mask [N, L])``."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore, grid)
        # The loss is computed in fp32 even when the model runs in bf16/fp16.
        loss = self.loss(imgs.float(), pred.float(), mask)
        return loss, pred, mask


def create_mae(preset: str, img_size: int = 224, norm_pix_loss: bool = True,
               mask_ratio: float = 0.75, drop_path_rate: float = 0.0, fused_attn: bool = True,
               decoder: Optional[Tuple[int, int, int]] = None, in_chans: int = 3) -> MaskedAutoencoder:
    """MAE for a registered preset and ``in_chans`` input bands; ``decoder=(width, depth, heads)``
    overrides the preset's."""
    from .presets import create_vit

    p = get_preset(preset)
    encoder = create_vit(preset, img_size=img_size, drop_path_rate=drop_path_rate,
                         fused_attn=fused_attn, class_token=True, in_chans=in_chans)
    dim, depth, heads = decoder or p.decoder
    return MaskedAutoencoder(encoder, decoder_dim=dim, decoder_depth=depth, decoder_heads=heads,
                             norm_pix_loss=norm_pix_loss, mask_ratio=mask_ratio)


def build_mae(cfg: MAEConfig) -> MaskedAutoencoder:
    """The MAE a run config's ``model:`` section describes."""
    return create_mae(cfg.preset, img_size=cfg.img_size, norm_pix_loss=cfg.norm_pix_loss, mask_ratio=cfg.mask_ratio,
                      drop_path_rate=cfg.drop_path_rate, fused_attn=cfg.fused_attn, decoder=cfg.decoder,
                      in_chans=cfg.in_chans)


__all__ = ["MAEConfig", "MaskedAutoencoder", "create_mae", "build_mae", "patchify", "unpatchify", "random_masking",
           "mae_train_flops"]
