"""Two copies DeepSpeed's ZeRO-3 optimizer makes every step that give the same values without them.

Both are exact: a step with them gives the same bits as a step without (tests/test_zero3_fastpaths.py
trains with and without and compares every weight).

1. **Gradient partitions handed to the optimizer as a view.** Before each optimizer sub-group's
   step, ``DeepSpeedZeroOptimizer_Stage3._prepare_fp32_grad_for_sub_group`` flattens the
   sub-group's gradient partitions with ``torch.cat`` into a new tensor that becomes the fp32
   master's ``.grad``. Those partitions are already consecutive slices of one flat buffer
   (``grad_partitions_flat_buffer``, laid out in the sub-group's order), so the concatenation
   equals a view of that buffer's span; where they are not adjacent (a frozen parameter's zeros,
   another layout) DeepSpeed's own flatten runs. The buffer is overwritten by the next step's
   first micro-step, so the optimizer's in-place unscaling of ``.grad`` changes nothing that is
   read again. Saves a copy of the whole gradient partition per step at any world size (in
   bf16/fp16 the cast to fp32 is still one copy, instead of a concatenation and a cast).
2. **No reduce-scatter in a world of one.** Each reduce bucket is concatenated, divided by the
   world size and reduce-scattered (``reduce_scatter_coalesced``); with one rank in the
   partition group the result is the bucket itself (``x / 1`` is exact), so the gradients are
   passed on as views and the concatenation and the collective's copy are skipped.

Measured on one rank, ``vit_b12x1`` batch 4 fp32, one thread: the two concatenations and the
collective's copy were 0.50 s of a 4.3 s step. They cost more than their bytes suggest on CPU:
each concatenation writes a fresh buffer above glibc's mmap threshold, so every 4 KiB page of it
is a page fault that the kernel zeroes. They are installed by
:func:`rsfm_ds.engine.deepspeed_setup.initialize`
for the DeepSpeed versions they were checked against (:data:`CHECKED_VERSIONS`); another version
runs DeepSpeed unchanged and logs why. ``RSFM_ZERO3_FASTPATHS=0`` turns them off.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, List, Sequence

import torch

log = logging.getLogger(__name__)

CHECKED_VERSIONS = ("0.19.",)
ENV = "RSFM_ZERO3_FASTPATHS"

_installed = False
_enabled = True
# How often each path was taken since installation (tests read them).
taken = {"grad_view": 0, "grad_flatten": 0, "world1_reduce_scatter": 0}


def adjacent_span(tensors: Sequence[torch.Tensor]):
    """A 1-D view equal to ``torch.cat([t.view(-1) for t in tensors])``, or None when there is none.

    There is one when every tensor is contiguous, of one dtype and device, in one storage, and each
    starts where the previous one ends.
    """
    if not tensors:
        return None
    first = tensors[0]
    storage = first.untyped_storage().data_ptr()
    end = first.storage_offset()
    for t in tensors:
        if (t.dtype != first.dtype or t.device != first.device or not t.is_contiguous()
                or t.untyped_storage().data_ptr() != storage or t.storage_offset() != end):
            return None
        end += t.numel()
    return first.as_strided((end - first.storage_offset(),), (1,), first.storage_offset())


def _flatten_or_view(original_flatten):
    def flatten(tensors: List[torch.Tensor]) -> torch.Tensor:
        span = adjacent_span(tensors) if _enabled else None
        if span is None:
            taken["grad_flatten"] += 1
            return original_flatten(tensors)
        taken["grad_view"] += 1
        return span
    return flatten


def _install_grad_view(stage3) -> None:
    cls = stage3.DeepSpeedZeroOptimizer_Stage3
    original = cls._prepare_fp32_grad_for_sub_group

    def _prepare_fp32_grad_for_sub_group(self, sub_group_id):
        # The method's only use of self.flatten is the gradient concatenation; it is swapped for
        # the call alone, since the other uses (building the flat fp32 masters) need real copies.
        saved = self.__dict__.get("flatten", stage3._flatten_dense_tensors)
        self.flatten = _flatten_or_view(saved)
        try:
            return original(self, sub_group_id)
        finally:
            self.flatten = saved

    _prepare_fp32_grad_for_sub_group.__wrapped__ = original
    cls._prepare_fp32_grad_for_sub_group = _prepare_fp32_grad_for_sub_group


def _install_world1_reduce_scatter(stage3) -> None:
    from deepspeed import comm as dist

    original = stage3.reduce_scatter_coalesced

    def reduce_scatter_coalesced(tensors, group=None):
        if _enabled and dist.get_world_size(group) == 1:
            taken["world1_reduce_scatter"] += 1
            return [t.view(-1) for t in tensors]  # DeepSpeed's result: the same values, flat
        return original(tensors, group)

    reduce_scatter_coalesced.__wrapped__ = original
    stage3.reduce_scatter_coalesced = reduce_scatter_coalesced


def install() -> bool:
    """Install both paths once per process; False (DeepSpeed unchanged) when turned off or unchecked."""
    global _installed
    if _installed:
        return True
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    import deepspeed
    from deepspeed.runtime.zero import stage3

    if not deepspeed.__version__.startswith(CHECKED_VERSIONS):
        log.info("ZeRO-3 fast paths not installed: checked for DeepSpeed %s, found %s",
                 "/".join(v + "x" for v in CHECKED_VERSIONS), deepspeed.__version__)
        return False
    cls = getattr(stage3, "DeepSpeedZeroOptimizer_Stage3", None)
    if cls is None or not hasattr(cls, "_prepare_fp32_grad_for_sub_group") \
            or not hasattr(stage3, "reduce_scatter_coalesced"):
        log.info("ZeRO-3 fast paths not installed: DeepSpeed's stage3 module lacks what they replace")
        return False
    _install_grad_view(stage3)
    _install_world1_reduce_scatter(stage3)
    _installed = True
    return True


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """DeepSpeed's own code paths inside the block (for comparisons in one process)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before
