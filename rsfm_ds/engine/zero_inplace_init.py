"""Initialise a model built under ``deepspeed.zero.Init`` in place, each rank its own partitions.

Under ``zero.Init`` every parameter is partitioned as soon as its module is built, so the
constructors' initialisation ran on empty shards. Gathering each module, initialising it on one
rank and re-partitioning costs a broadcast of the whole model (190 s for vit_2b4 on two CPU
ranks, docs/benchmarks.md). Here each rank writes only the slice it owns, with the values
:mod:`rsfm_ds.models.seeded_init` defines for that slice, without any communication: the result
equals, bit for bit, the same seed's plain build (:meth:`SeededInit.init_weights`) at any world
size.

Partition layout (DeepSpeed 0.19, ``deepspeed/runtime/zero/partition_parameters.py``,
``_partition_param``): the flattened parameter of ``ds_numel`` values is padded to a multiple of
the partition world size; rank ``r`` of the parameter's process group (``ds_process_group``) owns
``param.ds_tensor``, ``ds_tensor.ds_numel`` values starting at flat index ``r * ds_tensor.ds_numel``;
the part past ``ds_numel`` is padding (zeroed here, as DeepSpeed zeroes it in its secondary
partitions). Layouts this does not cover (hpZ secondary partitions, partitions swapped to NVMe)
are reported by :func:`supports_inplace` so the caller can fall back to gathering.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch.nn as nn

from ..models.seeded_init import Rule, SeededInit, fill_flat


def _rules(model: SeededInit) -> Iterator[Tuple[str, nn.Parameter, Rule]]:
    """``(qualified name, parameter, rule)`` for every rule the model declares."""
    for prefix, module in model.named_modules():
        for local, rule in model.init_rules(module).items():
            yield (f"{prefix}.{local}" if prefix else local), module._parameters[local], rule


def supports_inplace(model: nn.Module) -> bool:
    """True when ``model`` declares rules (:class:`SeededInit`) and every parameter is a plain
    ZeRO-3 partition in memory (no hpZ secondary copy, not on NVMe)."""
    if not isinstance(model, SeededInit):
        return False
    for p in model.parameters():
        if not hasattr(p, "ds_tensor") or getattr(p, "ds_secondary_tensor", None) is not None:
            return False
        if str(getattr(p.ds_tensor, "final_location", None)).endswith("nvme"):
            return False
    return True


def init_partitions_in_place(model: SeededInit, seed: int) -> int:
    """Write this rank's partition of every parameter from ``seed``; returns the values written.

    Raises ``RuntimeError`` naming a parameter the model's rules do not cover (it would keep
    uninitialised memory).
    """
    import deepspeed.comm as dist

    covered, written = set(), 0
    for name, p, rule in _rules(model):
        covered.add(id(p))
        part = p.ds_tensor
        size = part.ds_numel
        start = dist.get_rank(group=p.ds_process_group) * size
        valid = max(0, min(p.ds_numel - start, size))
        flat = part.data.view(-1)
        fill_flat(flat[:valid], rule, seed, name, p.ds_numel, min(start, p.ds_numel))
        flat[valid:].zero_()
        written += valid
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise RuntimeError(f"{type(model).__name__}.init_rules covers no rule for parameters "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return written


__all__ = ["init_partitions_in_place", "supports_inplace"]
