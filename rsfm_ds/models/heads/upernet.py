"""UperNet decode head and FCN auxiliary head over a feature pyramid, with their loss.

Architecture as mmseg's ``UPerHead`` / ``FCNHead`` (Xiao et al. 2018, "Unified Perceptual Parsing"):

- PPM on the coarsest level: adaptive average pooling to 1, 2, 3, 6 cells, 1x1 conv-norm-ReLU each,
  upsampled back and concatenated with the input, fused by a 3x3 conv-norm-ReLU ("bottleneck");
- lateral 1x1 conv-norm-ReLU on the other levels, top-down path adding the upsampled coarser level;
- 3x3 conv-norm-ReLU on each summed lateral (FPN convs), all levels upsampled to the finest
  (stride 4 for the ViTDet pyramid), concatenated and fused by a 3x3 conv-norm-ReLU;
- ``Dropout2d(0.1)`` and a 1x1 classifier.
- The auxiliary FCN head (on ``p4``, stride 16): 3x3 conv-norm-ReLU, dropout, 1x1 classifier; its
  loss is weighted 0.4 and only used in training.

Input is the backbone's dict of feature maps (``{"p2": [B, C, H/4, W/4], ..., "p5": [B, C, H/32,
W/32]}`` from ``rsfm_ds.models.vitdet``); the head reads the levels named by ``in_keys``, finest first.
Logits come out at the finest level's resolution (stride 4); :func:`resize_logits` brings them to
the input or label size (bilinear, ``align_corners=False`` as mmseg).

Normalisation (``norm``): ``"syncbn"`` (default) is BatchNorm whose training statistics span the
micro-batches of all data-parallel ranks, mmseg's ``SyncBN`` (``norm_cfg = dict(type='SyncBN')`` in
mmseg's ``configs/_base_/models/upernet_*.py``), implemented in :mod:`rsfm_ds.models.sync_batchnorm`
so that it runs on CPU ranks under gloo as well as on GPUs; without ``torch.distributed`` (or in
eval mode) it is exactly ``BatchNorm2d``. ``"bn"`` is ``BatchNorm2d`` with per-rank statistics (at
micro-batch 2 these are noisy); ``"gn"`` is GroupNorm (32 groups), independent of the batch.
``"bn"`` and ``"syncbn"`` have the same parameter and buffer names, so a checkpoint loads under
either. BatchNorm in training needs more than one value per channel: the 1x1 PPM cell at
micro-batch 1 fails with ``"bn"`` and with ``"syncbn"`` on a single process, but trains with
``"syncbn"`` on 2 or more ranks (``world_size`` values per channel).

Losses live with the head: :meth:`UperNet.loss` returns ``{"loss_seg", "loss_aux"}``,
already weighted; the engine sums them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import check, check_choices
from ..sync_batchnorm import SyncBatchNorm

NORMS = ("syncbn", "bn", "gn")


@dataclass
class UperNetConfig:
    """The UperNet decode head and its auxiliary FCN head (defaults: mmseg's UperNet configs)."""

    channels: int = 512
    """UperNet width."""
    aux_weight: float = 0.4
    """Weight of the auxiliary FCN loss (0 disables the auxiliary head)."""
    aux_channels: int = 256
    """Auxiliary head width."""
    dropout: float = 0.1
    """Dropout before the classifiers."""
    norm: Literal["syncbn", "bn", "gn"] = "syncbn"
    """syncbn (BatchNorm with statistics over all ranks' micro-batches, mmseg's SyncBN; plain
    BatchNorm on one process), bn (BatchNorm, statistics per rank) or gn (GroupNorm, batch-size
    independent)."""
    pool_scales: Tuple[int, ...] = (1, 2, 3, 6)
    """Grid sizes of the pyramid pooling module."""

    def __post_init__(self):
        check_choices(self)
        check(self.channels > 0, "channels", f"must be positive, got {self.channels}")
        check(self.aux_weight >= 0, "aux_weight", f"must be >= 0, got {self.aux_weight}")
        check(self.aux_channels > 0, "aux_channels", f"must be positive, got {self.aux_channels}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(len(self.pool_scales) > 0 and all(s > 0 for s in self.pool_scales), "pool_scales",
              f"need one or more positive sizes, got {self.pool_scales}")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "syncbn":
        return SyncBatchNorm(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")


class ConvNormAct(nn.Sequential):
    """Conv (no bias: the norm has one) -> norm -> ReLU, as mmcv's ``ConvModule``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str = "syncbn"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )
        # ConvModule's initialisation: Kaiming normal, fan-out, for a ReLU.
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


def resize_logits(logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, K, h, w]`` logits to ``size = (H, W)`` (``align_corners=False``)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _classifier(channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, num_classes, 1)
    # mmseg's decode-head init: small normal weights, zero bias, so initial logits are near uniform.
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


class PPM(nn.Module):
    """Pyramid pooling: ``[B, C, h, w] -> [B, C + len(scales) * channels, h, w]``."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int], norm: str):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(in_channels, channels, 1, norm))
            for s in pool_scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
                  for stage in self.stages]
        return torch.cat([x] + pooled, dim=1)


class UperNetHead(nn.Module):
    """UperNet decode head: feature dict -> logits ``[B, num_classes, H/4, W/4]`` (finest level).

    Args:
        num_classes: output classes K.
        in_channels: channels of each input level (an int for all, or one per ``in_keys``).
        in_keys: names of the pyramid levels to use, finest first.
        channels: width of the head (mmseg: 512; 768 in RVSA's ViT-B configs).
        pool_scales: PPM output grid sizes on the coarsest level.
        dropout: ``Dropout2d`` rate before the classifier.
        norm: ``"syncbn"``, ``"bn"`` or ``"gn"`` (see module doc).
    """

    def __init__(self, num_classes: int, in_channels: Union[int, Sequence[int]] = 256,
                 in_keys: Sequence[str] = ("p2", "p3", "p4", "p5"), channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, norm: str = "syncbn"):
        super().__init__()
        self.in_keys = tuple(in_keys)
        ins = [in_channels] * len(self.in_keys) if isinstance(in_channels, int) else list(in_channels)
        if len(ins) != len(self.in_keys) or not self.in_keys:
            raise ValueError(f"in_channels: {len(ins)} entries for in_keys {self.in_keys}")
        if num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        self.ppm = PPM(ins[-1], channels, pool_scales, norm)
        self.bottleneck = ConvNormAct(ins[-1] + len(pool_scales) * channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1, norm) for c in ins[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3, norm) for _ in ins[:-1])
        self.fpn_bottleneck = ConvNormAct(len(ins) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = _classifier(channels, num_classes)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.in_keys if k not in features]
        if missing:
            raise KeyError(f"feature dict lacks {missing}; has {sorted(features)}")
        xs = [features[k] for k in self.in_keys]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, xs[:-1])]
        laterals.append(self.bottleneck(self.ppm(xs[-1])))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse context into finer levels
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        fused = self.fpn_bottleneck(torch.cat(outs, dim=1))  # [B, channels, H/4, W/4]
        return self.conv_seg(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary FCN head on one level: ``features[in_key]: [B, C, h, w] -> [B, num_classes, h, w]``.

    Args:
        num_classes: output classes K.
        in_channels: channels of the input level.
        in_key: the level to read (``"p4"``, stride 16, as mmseg's ``in_index=2`` on a 4-level pyramid).
        channels: width of the conv stack (mmseg: 256).
        num_convs: 3x3 conv-norm-ReLU layers.
        dropout: ``Dropout2d`` rate before the classifier.
        norm: ``"syncbn"``, ``"bn"`` or ``"gn"`` (see module doc).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, in_key: str = "p4", channels: int = 256,
                 num_convs: int = 1, dropout: float = 0.1, norm: str = "syncbn"):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs: must be >= 1, got {num_convs}")
        self.in_key = in_key
        self.convs = nn.Sequential(*(ConvNormAct(in_channels if i == 0 else channels, channels, 3, norm)
                                     for i in range(num_convs)))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = _classifier(channels, num_classes)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.in_key not in features:
            raise KeyError(f"feature dict lacks {self.in_key!r}; has {sorted(features)}")
        return self.conv_seg(self.dropout(self.convs(features[self.in_key])))


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel cross-entropy of ``logits: [B, K, h, w]`` against ``labels: int64 [B, H, W]``.

    Logits are first resized to the label size (bilinear). The mean runs over non-ignored pixels
    (mmseg's ``avg_non_ignore=True``; mmseg's default divides by all pixels, which shrinks the loss
    on crops with many ignored pixels). A batch with no scored pixel gives a zero loss that still
    depends on the logits, so every rank runs the same backward graph.
    """
    if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be [B, H, W] with B={logits.shape[0]}, got {tuple(labels.shape)}")
    logits = resize_logits(logits, tuple(labels.shape[-2:])).float()
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)


class UperNet(nn.Module):
    """UperNet + auxiliary FCN head: what the segmentation model puts on top of the backbone.

    ``forward(features)`` gives the main logits ``[B, K, H/4, W/4]``; ``predict(features, size)``
    the logits resized to ``size``; ``loss(features, labels)`` the loss dict for training.

    Args:
        num_classes: output classes K.
        in_channels: channels of each pyramid level (ViTDet: 256).
        cfg: widths, auxiliary head and its loss weight, dropout, norm, pooling
            (:class:`UperNetConfig`); the auxiliary head exists when ``cfg.aux_weight > 0``.
        ignore_index: label value excluded from the loss.
        in_keys: levels for the UperNet head, finest first.
        aux_key: level for the auxiliary FCN head (stride 16 as mmseg).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, cfg: Optional[UperNetConfig] = None,
                 ignore_index: int = 255, in_keys: Sequence[str] = ("p2", "p3", "p4", "p5"), aux_key: str = "p4"):
        super().__init__()
        cfg = cfg or UperNetConfig()
        self.decode = UperNetHead(num_classes, in_channels, in_keys, cfg.channels, cfg.pool_scales, cfg.dropout,
                                  cfg.norm)
        self.aux = (FCNHead(num_classes, in_channels, aux_key, cfg.aux_channels, 1, cfg.dropout, cfg.norm)
                    if cfg.aux_weight > 0 else None)
        self.aux_weight = cfg.aux_weight
        self.ignore_index = ignore_index

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.decode(features)

    def predict(self, features: Mapping[str, torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
        """Main logits resized to ``size = (H, W)``: ``[B, K, H, W]``."""
        return resize_logits(self.decode(features), size)

    def loss(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"loss_seg": CE(main), "loss_aux": aux_weight * CE(aux)}`` (no ``loss_aux`` without aux head).

        Args:
            features: the backbone's pyramid.
            labels: ``int64 [B, H, W]`` class indices at input resolution, ``ignore_index`` unscored.
        """
        losses = {"loss_seg": segmentation_loss(self.decode(features), labels, self.ignore_index)}
        if self.aux is not None:
            losses["loss_aux"] = self.aux_weight * segmentation_loss(self.aux(features), labels, self.ignore_index)
        return losses
