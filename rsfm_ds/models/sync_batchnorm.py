"""Synchronised BatchNorm that runs on any ``torch.distributed`` backend (gloo on CPU, nccl on GPU).

mmseg's UperNet configs normalise with ``SyncBN`` (``norm_cfg = dict(type='SyncBN', requires_grad=True)``
in ``configs/_base_/models/upernet_*.py``): in training, the batch statistics of every BatchNorm
layer are taken over the micro-batches of all ranks together, not per rank. PyTorch's
``torch.nn.SyncBatchNorm`` does this but refuses CPU tensors (its kernels ``batch_norm_stats`` /
``batch_norm_backward_reduce`` exist for CUDA only), so CPU ranks under gloo cannot use it; this
module is the same algorithm in plain tensor ops and ``torch.distributed`` collectives.

Semantics, as ``torch.nn.SyncBatchNorm`` (``torch/nn/modules/_functions.py``):

- training and distributed with more than one rank in the group: per channel, the mean and the
  biased variance over the union of all ranks' batches normalise the input; each rank's
  ``(count, mean, M2)`` is all-gathered and combined with Chan's parallel formula, which is
  numerically stable (no ``E[x^2] - E[x]^2``); a rank with an empty batch contributes nothing;
- running statistics are updated with the global mean and the global *unbiased* variance
  (``var * N / (N - 1)``, ``N`` the count over all ranks) with the layer's momentum, identically on
  every rank, so the buffers stay equal across ranks and a checkpoint written by rank 0 holds them;
- backward: ``sum(dy)`` and ``sum(dy * x_hat)`` per channel are all-reduced so the input gradient is
  the gradient of the *global* normalisation; ``weight`` / ``bias`` gradients are this rank's own
  share (the data-parallel engine sums or averages parameter gradients over ranks afterwards, as it
  does for every other parameter);
- otherwise (eval mode, a single process, or a group of one) it is ``nn.BatchNorm`` exactly: the
  module falls back to ``F.batch_norm``, as mmengine reverts SyncBN to BatchNorm when training is
  not distributed (``mmengine/runner/runner.py``, ``wrap_model``).

Statistics and the normalisation are computed in float32 whatever the input dtype (bf16/fp16 under
DeepSpeed), and the output is cast back to the input dtype; running buffers keep their own dtype.
Training needs more than one value per channel over all ranks together: with micro-batch 1 per rank
the 1x1 pyramid-pooling cell of UperNet has ``world_size`` values per channel, which is enough on 2
or more ranks (plain BatchNorm at micro-batch 1 fails there).

State-dict keys equal ``nn.BatchNorm2d``'s (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``), so checkpoints move freely between ``norm="bn"`` and ``norm="syncbn"``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm


def _reduce_dims(x: torch.Tensor) -> List[int]:
    """All dimensions of ``x: [B, C, *]`` but the channel one."""
    return [0] + list(range(2, x.dim()))


def _channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t: [C]`` shaped to broadcast against ``x: [B, C, *]``."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))


class _SyncBatchNormFunction(torch.autograd.Function):
    """Global-batch normalisation of ``x: [B, C, *]`` over every rank of ``group``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], eps: float,
                momentum: float, group, world_size: int) -> torch.Tensor:
        channels = x.shape[1]
        count = x.numel() // channels
        xf = x.float()
        if count > 0:
            var, mean = torch.var_mean(xf, dim=_reduce_dims(x), correction=0)
            local = torch.cat([mean, var * count, mean.new_full((1,), count)])
        else:  # an empty batch on this rank still joins the collective, with zero weight
            local = xf.new_zeros(2 * channels + 1)
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)  # [world, 2C + 1]: per-rank mean, M2, count
        means, m2s, counts = stats[:, :channels], stats[:, channels:2 * channels], stats[:, -1:]
        total = counts.sum()
        # Only a rank with at most one local value needs the check. Reading ``total`` would stall a
        # GPU stream at every step (UperNet's 1x1 pooling cell at micro-batch 1): assert on the device.
        if count <= 1:
            if total.device.type == "cpu":
                if total.item() <= 1:
                    raise ValueError(f"Expected more than 1 value per channel when training, got "
                                     f"{int(total.item())} over {world_size} ranks")
            else:
                torch._assert_async(total > 1, "Expected more than 1 value per channel when training")
        # Chan et al.'s pairwise combination of (count, mean, M2), vectorised over ranks.
        mean = (counts * means).sum(0) / total
        m2 = (m2s + counts * (means - mean) ** 2).sum(0)
        var = m2 / total  # biased: what the normalisation uses
        invstd = torch.rsqrt(var + eps)

        if running_mean is not None:
            running_mean.copy_((1 - momentum) * running_mean.float() + momentum * mean)
        if running_var is not None:
            unbiased = m2 / (total - 1)
            running_var.copy_((1 - momentum) * running_var.float() + momentum * unbiased)

        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.group, ctx.total = group, total
        w = None if weight is None else weight.float()
        b = None if bias is None else bias.float()
        # Inference-mode batch_norm with the global statistics as its "running" ones: one fused kernel.
        out = F.batch_norm(xf, mean, var, w, b, training=False, momentum=0.0, eps=eps)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        dims = _reduce_dims(x)
        dy = grad_out.float()
        x_hat = (x.float() - _channel_view(mean, x)) * _channel_view(invstd, x)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * x_hat).sum(dims)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            # The mean and variance depend on every rank's input: their gradient terms need the global sums.
            sums = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(sums, group=ctx.group)
            g_dy, g_dy_xhat = sums.chunk(2)
            scale = invstd if weight is None else invstd * weight.float()
            grad_x = _channel_view(scale, x) * (dy - _channel_view(g_dy / ctx.total, x)
                                                - x_hat * _channel_view(g_dy_xhat / ctx.total, x))
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over ``[B, C, *]`` whose training statistics span all ranks (see the module doc).

    Args:
        num_features: channels C.
        eps: added to the variance.
        momentum: running-statistics update factor; ``None`` for a cumulative average.
        affine: learn ``weight`` and ``bias``.
        track_running_stats: keep running statistics (used in eval mode).
        process_group: the ranks that share statistics; ``None`` for the default (world) group.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Optional[dist.ProcessGroup] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input [B, C, *] of 2 or more dimensions, got {x.dim()}")

    def _world_size(self) -> int:
        """Ranks to synchronise with; 1 when ``torch.distributed`` is not initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = self._world_size() if self.training else 1
        if world == 1:
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked.item())
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, running_mean, running_var, self.eps,
                                            momentum, group, world)


__all__ = ["SyncBatchNorm"]
