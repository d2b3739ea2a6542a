"""Device profiles: how a kind of device spends memory beyond the tensors a model asks for.

The planner (:mod:`rsfm_ds.planning.memory`) adds a profile's overhead and applies its allocator
behaviour; docs/planning.md says where each number comes from.
"""
from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
GiB = 2 ** 30


@dataclass(frozen=True)
class DeviceProfile:
    """How a kind of device spends memory beyond the tensors a model asks for.

    Attributes:
        name: profile name (``gpu`` or ``cpu``).
        overhead_bytes: memory taken before the model exists: CUDA context, NCCL buffers and
            library workspaces on a GPU; the Python + torch + DeepSpeed + process-group resident
            set on a CPU.
        buffers_touched_only: an allocated but never written buffer costs nothing (true on a CPU,
            where resident memory is counted by written page; false on a GPU, where the caching
            allocator reserves the whole buffer).
        heap_retention: multiplier on the forward/backward working set that stays resident while
            the optimizer step allocates its temporaries; 0 when freed memory is reused (the CUDA
            caching allocator: the step peak is then the larger of the two, not their sum).
        fused_attention_stores_scores: whether ``scaled_dot_product_attention`` stores the
            ``heads x L x L`` probabilities for the backward pass on this device (false where a
            flash / memory-efficient kernel serves the dtype, which is the case for bf16, fp16
            and fp32 on CUDA (memory-efficient kernel for fp32) and on CPU (flash-attention CPU
            kernel) in torch 2.x; explicit-softmax attention always stores them).
        masked_attention_is_math: whether ``scaled_dot_product_attention`` with a float mask that
            needs a gradient (ViTDet's relative position) runs the math path, storing the
            probabilities (true on a CPU, measured; CUDA's memory-efficient kernel takes the mask).
        margin: fraction of the device kept free for allocator fragmentation when deciding what
            fits.
        step_overhead_bytes: runtime memory that appears with the first training step (kernel
            code paged in, allocator arenas of the autograd and communication threads, touched
            communication segments), on top of ``overhead_bytes``.
        host_is_device: the model is built in the device's own memory (a CPU rank); on a GPU it
            is built in host memory and reaches the device already partitioned / cast.
        notes: where the numbers come from.
    """

    name: str
    overhead_bytes: float
    buffers_touched_only: bool
    heap_retention: float
    fused_attention_stores_scores: bool = False
    masked_attention_is_math: bool = False
    margin: float = 0.05
    step_overhead_bytes: float = 0.0
    host_is_device: bool = False
    notes: str = ""


# Not measured in this project (no GPU was lent to the session that wrote this): CUDA context with
# lazy module loading (~0.5 GB on H100), NCCL communicators and buffers for 8 ranks (~0.5 GB), and
# cuBLAS / cuDNN workspaces and PyTorch's own (~0.5 GB). bench/mae_mfu.py prints the measured value.
GPU_PROFILE = DeviceProfile(
    name="gpu", overhead_bytes=1.5 * GiB, buffers_touched_only=False, heap_retention=0.0,
    margin=0.05, notes="CUDA context + NCCL + workspaces assumed 1.5 GiB (not measured here)")

# Measured with rsfm_ds.planning.measure on the project machine (torch 2.14, DeepSpeed 0.19.8,
# 2 ranks, gloo, docs/planning.md has the runs): the resident set of a rank once the process group
# is up is 0.79-0.83 GB; the first step adds ~0.07 GB that no tensor accounts for (the debug
# preset's step peak minus its predicted tensors); the forward/backward working set stays resident
# during the optimizer step at ~1.4x its live size after 3 or more steps (fitted on vit_b12x1;
# glibc's heap statistics show 1.3-1.6x).
CPU_PROFILE = DeviceProfile(
    name="cpu", overhead_bytes=0.80 * GB, buffers_touched_only=True, heap_retention=1.4,
    margin=0.05, step_overhead_bytes=0.07 * GB, host_is_device=True, masked_attention_is_math=True,
    notes="runtime RSS of a rank, measured on the project machine")

PROFILES = {"gpu": GPU_PROFILE, "cpu": CPU_PROFILE}


__all__ = ["DeviceProfile", "GPU_PROFILE", "CPU_PROFILE", "PROFILES", "GB", "GiB"]
