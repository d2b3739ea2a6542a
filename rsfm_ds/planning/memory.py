"""Per-device memory planner for rsfm-ds runs: MAE pretraining and ViTDet fine-tuning under ZeRO.

:func:`plan_memory` predicts what one rank holds at its peak, term by term, for a preset, task,
number of devices, micro batch and DeepSpeed config; :func:`max_micro_batch` finds the largest
micro batch that fits; :func:`recommend` picks a ZeRO stage and offload. Every term is a formula of
the architecture and the config, with the reason in a comment; what was measured to check it is in
docs/planning.md (and ``tests/test_planning.py`` repeats the checks that are cheap).

Terms, per rank (``P`` trainable parameters, ``N`` ranks, ``b`` bytes per element of the training
dtype: 2 in bf16/fp16, 4 in fp32):

* **framework overhead**: CUDA context, NCCL and library workspaces on a GPU (an assumed constant);
  on a CPU the resident set of a Python process with torch, DeepSpeed and the process group up
  (measured by :mod:`rsfm_ds.planning.measure`).
* **model states** under the ZeRO stage: 16-bit (or fp32) parameters ``b``, gradients ``b``
  (DeepSpeed accumulates in the model dtype unless ``data_types.grad_accum_dtype`` says
  otherwise), an fp32 master copy ``4`` (DeepSpeed 0.19 keeps a separate one even in fp32) and
  Adam's two fp32 moments ``8``: 16 bytes per parameter in mixed precision, 20 in fp32. ZeRO-1
  partitions the last two over the ranks, ZeRO-2 the gradients too, ZeRO-3 everything; small
  parameters (``stage3_param_persistence_threshold``) stay whole on every rank under ZeRO-3.
  With ``offload_optimizer`` the master copy, the moments and an fp32 gradient live in host memory.
* **gathered parameters** (ZeRO-3): the full parameters of the modules running now, plus those
  kept because they are used again within ``stage3_max_reuse_distance`` elements, plus the
  prefetch (``stage3_prefetch_bucket_size``, capped by ``stage3_max_live_parameters``).
* **communication buffers**: the gradient bucket (``reduce_bucket_size`` elements, allocated once)
  and, while it is reduced, a flattened copy of it; ZeRO-1/2 all-gather updated parameters in
  ``allgather_bucket_size`` chunks after the step. A CPU only pays for pages that are written, so
  there a bucket costs at most what fills it.
* **activations**: :mod:`rsfm_ds.planning.activations` (saved tensors derived layer by layer, and
  the working memory of the worst moment of the step).
* **optimizer step**: the sub-group's gradient flattened and cast to fp32, and the temporaries of
  ``torch.optim.AdamW`` (``sqrt(v)`` and its quotient: 8 bytes per element) when the config asks
  for it (``torch_adam``); DeepSpeed's fused Adam updates in place.

How they add up depends on the allocator (:class:`DeviceProfile`): PyTorch's CUDA caching
allocator reuses freed blocks, so the step's peak is the larger of the forward/backward working set
and the optimizer step; glibc keeps freed heap memory resident (chunks up to its 32 MiB dynamic
mmap threshold, and fragments it), so on a CPU the forward/backward working set stays resident
while the optimizer step allocates, scaled by a fragmentation factor measured on this machine.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import ConfigError, check
from ..models.presets import PRESETS, get_preset
from .activations import (ActivationEstimate, Elems, LayerSpec, finetune_activations,
                          forward_only_activations, mae_activations, vitdet_layers)

GB = 1e9
GiB = 2 ** 30
ROOT = Path(__file__).resolve().parents[2]
TASKS = ("pretrain", "det", "seg")
DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4}
DEVICES = ("gpu", "cpu")
MODES = ("train", "forward")

# --------------------------------------------------------------------------------------------
# Device profiles
# --------------------------------------------------------------------------------------------


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
    margin=0.05, step_overhead_bytes=0.07 * GB, host_is_device=True,
    notes="runtime RSS of a rank, measured on the project machine")

PROFILES = {"gpu": GPU_PROFILE, "cpu": CPU_PROFILE}

# --------------------------------------------------------------------------------------------
# ZeRO settings from a DeepSpeed config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZeroSettings:
    """The DeepSpeed knobs that decide memory, with DeepSpeed 0.19's defaults.

    Attributes:
        stage: ZeRO stage 0..3.
        reduce_bucket_size: gradient bucket, elements.
        allgather_bucket_size: ZeRO-1/2 parameter all-gather chunk, elements.
        prefetch_bucket_size: ZeRO-3 parameters fetched ahead, elements.
        max_live_parameters: ZeRO-3 cap on gathered parameters that prefetching respects.
        max_reuse_distance: ZeRO-3 keeps a gathered parameter if it is used again within this many
            elements of the parameter trace.
        param_persistence_threshold: ZeRO-3 parameters with at most this many elements stay whole.
        sub_group_size: ZeRO-3 optimizer step granularity, elements.
        offload_optimizer: optimizer states (and fp32 gradients) in host memory.
        offload_param: ZeRO-3 parameter partitions in host memory too.
        torch_adam: the optimizer is ``torch.optim.AdamW`` (whose step allocates ``sqrt(v)``-sized
            temporaries) rather than DeepSpeed's in-place fused / CPU Adam.
        source: the DeepSpeed config file these came from.
    """

    stage: int = 3
    reduce_bucket_size: float = 5e8
    allgather_bucket_size: float = 5e8
    prefetch_bucket_size: float = 5e7
    max_live_parameters: float = 1e9
    max_reuse_distance: float = 1e9
    param_persistence_threshold: float = 1e5
    sub_group_size: float = 1e9
    offload_optimizer: bool = False
    offload_param: bool = False
    torch_adam: bool = False
    source: str = "DeepSpeed defaults"


def resolve_path(path: str) -> Path:
    """``path`` as given, or relative to the repository root (where ``ds_configs/`` lives)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    return ROOT / p


def zero_settings(ds_config: Dict[str, Any], source: str = "DeepSpeed config",
                  stage: Optional[int] = None) -> ZeroSettings:
    """Read the memory-relevant ZeRO settings from a DeepSpeed config dict.

    ``stage`` overrides the config's (which may be absent: the fine-tuning engine fills it).
    """
    z = ds_config.get("zero_optimization", {})
    d = ZeroSettings()
    opt = ds_config.get("optimizer", {})
    off_opt = str(z.get("offload_optimizer", {}).get("device", "none")).lower()
    off_par = str(z.get("offload_param", {}).get("device", "none")).lower()
    return ZeroSettings(
        stage=int(stage if stage is not None else z.get("stage", d.stage)),
        reduce_bucket_size=float(z.get("reduce_bucket_size", d.reduce_bucket_size)),
        allgather_bucket_size=float(z.get("allgather_bucket_size", d.allgather_bucket_size)),
        prefetch_bucket_size=float(z.get("stage3_prefetch_bucket_size", d.prefetch_bucket_size)),
        max_live_parameters=float(z.get("stage3_max_live_parameters", d.max_live_parameters)),
        max_reuse_distance=float(z.get("stage3_max_reuse_distance", d.max_reuse_distance)),
        param_persistence_threshold=float(z.get("stage3_param_persistence_threshold",
                                                d.param_persistence_threshold)),
        sub_group_size=float(z.get("sub_group_size", d.sub_group_size)),
        offload_optimizer=off_opt in ("cpu", "nvme"),
        offload_param=off_par in ("cpu", "nvme"),
        torch_adam=bool(opt.get("params", {}).get("torch_adam", False)),
        source=source)


def load_zero_settings(path: str, stage: Optional[int] = None) -> ZeroSettings:
    """:func:`zero_settings` of a DeepSpeed JSON file; a missing or invalid file is a ConfigError."""
    p = resolve_path(path)
    if not p.is_file():
        raise ConfigError(f"ds_config: DeepSpeed config {path} not found")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"ds_config: {path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    return zero_settings(cfg, source=str(path), stage=stage)


# --------------------------------------------------------------------------------------------
# Model shape: parameter counts from the real models, built on the meta device
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about a model's parameters.

    Attributes:
        params: trainable parameters (``ds_numel``-style: the full count).
        backbone_params: trainable parameters of the preset's plain encoder at 224 px (what the
            fine-tuning engine's ZeRO-stage rule counts).
        numels: element count of every trainable parameter tensor, descending.
        largest_module: most parameters owned directly by one module (ZeRO-3 gathers per module).
    """

    params: int
    backbone_params: int
    numels: Tuple[int, ...]
    largest_module: int

    def persistent(self, threshold: float) -> int:
        """Elements in parameters ZeRO-3 keeps whole (``numel <= threshold``)."""
        return sum(n for n in self.numels if n <= threshold)


def encoder_params(preset: str, patch_size: Optional[int] = None, in_chans: int = 3) -> int:
    """Closed-form trainable parameters of a preset's plain ViT encoder (no qkv bias, class token,
    fixed sin-cos positions): patch projection ``3 p^2 D + D``, class token ``D``, final norm
    ``2D``, and per layer and branch an attention ``2D`` (norm) ``+ 3D^2`` (qkv) ``+ D^2 + D``
    (projection) and an MLP ``2D + DM + M + MD + D``."""
    p = get_preset(preset)
    d, m, ps = p.embed_dim, p.mlp_dim, patch_size or p.patch_size
    attn = 2 * d + 3 * d * d + d * d + d
    mlp = 2 * d + d * m + m + m * d + d
    return in_chans * ps * ps * d + d + d + 2 * d + p.depth * p.num_branches * (attn + mlp)


@functools.lru_cache(maxsize=64)
def model_shape(preset: str, task: str, img_size: int, window_size: int = 14,
                num_classes: int = 6) -> ModelShape:
    """Parameter statistics of the model a task trains, counted on the real modules built on the
    meta device (no memory): the MAE for ``pretrain``, ViTDet + Oriented R-CNN for ``det``
    (with the stride-64 level), ViTDet + UperNet + FCN for ``seg``."""
    import torch

    from ..models.mae import create_mae
    from ..models.presets import count_trainable, create_vit

    with torch.device("meta"):
        if task == "pretrain":
            model = create_mae(preset, img_size=img_size)
        else:
            from ..models.vitdet import create_vitdet

            backbone = create_vitdet(preset, img_size, window_size=window_size,
                                     extra_p6=task == "det")
            if task == "det":
                from ..models.heads.oriented_rcnn import OrientedRCNN

                model = OrientedRCNN(backbone, num_classes)
            else:
                from ..models.heads.upernet import UperNet

                model = torch.nn.ModuleDict({"backbone": backbone,
                                             "head": UperNet(num_classes, in_channels=256)})
        backbone_params = count_trainable(create_vit(preset))
    numels = tuple(sorted((p.numel() for p in model.parameters() if p.requires_grad), reverse=True))
    largest = max(sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad)
                  for m in model.modules())
    return ModelShape(params=sum(numels), backbone_params=backbone_params, numels=numels,
                      largest_module=largest)


# --------------------------------------------------------------------------------------------
# The request and the plan
# --------------------------------------------------------------------------------------------

TASK_DEFAULTS = {  # from configs/: pretrain/base.yaml, det/recipe.yaml, seg/base.yaml
    "pretrain": dict(img_size=224, window_size=0, num_classes=0),
    "det": dict(img_size=1024, window_size=7, num_classes=18),   # DOTA v2.0, 18 classes
    "seg": dict(img_size=512, window_size=14, num_classes=6),    # Potsdam, 6-class protocol
}


def default_ds_config(task: str, device: str, dtype: str, offload: bool) -> str:
    """The DeepSpeed config the shipped run configs use for this task and device."""
    if device == "cpu":
        return "ds_configs/cpu_debug.json" if task == "pretrain" else "ds_configs/finetune_cpu.json"
    if task == "pretrain":
        if offload:
            return "ds_configs/zero3_offload.json"
        return "ds_configs/zero3_fp16.json" if dtype == "fp16" else "ds_configs/zero3_bf16.json"
    return "ds_configs/finetune_bf16.json"


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for. Fields left ``None`` take the shipped configs' values.

    Attributes:
        preset: backbone preset (``rsfm models`` lists them).
        task: ``pretrain`` (MAE), ``det`` (Oriented R-CNN) or ``seg`` (UperNet).
        gpus: data-parallel ranks (devices) the model states are partitioned over.
        gpu_mem_gb: memory of one device in GB (1e9 bytes); on ``device="cpu"`` the host memory
            one rank may use.
        micro_batch: samples per rank per forward/backward; ``None`` plans the largest that fits.
        img_size: input side in pixels (224 pretrain, 1024 det, 512 seg by default).
        checkpointing: activation checkpointing of the encoder / backbone blocks.
        dtype: training precision, ``bf16``, ``fp16`` or ``fp32``.
        offload: ZeRO optimizer-state offload to host memory (overrides the DeepSpeed config).
        device: ``gpu`` or ``cpu`` (which :class:`DeviceProfile` applies).
        ds_config: DeepSpeed JSON; ``None`` takes the task's default for the device.
        zero_stage: ZeRO stage; ``None``: the DeepSpeed config's, else (fine-tuning) 2 up to 700M
            backbone parameters and 3 above, as the fine-tuning engine decides.
        fused_attn: ``scaled_dot_product_attention`` (True) or explicit softmax.
        zero_init: model built under ``deepspeed.zero.Init``; ``None``: as the shipped configs (on
            above 700M backbone parameters).
        window_size: ViTDet window side in tokens (7 det, 14 seg by default).
        num_classes: classes of the fine-tuning head (18 det: DOTA v2.0; 6 seg: Potsdam).
        objects: ground-truth boxes per image in the detector's anchor assignment.
        overhead_gb: framework overhead per device in GB; ``None`` takes the profile's.
        mode: ``train`` (forward, backward, optimizer step) or ``forward`` (no gradients and no
            optimizer, as an evaluation or the ``zero.Init`` + forward scale check).
    """

    preset: str
    task: str = "pretrain"
    gpus: int = 1
    gpu_mem_gb: float = 80.0
    micro_batch: Optional[int] = None
    img_size: Optional[int] = None
    checkpointing: bool = True
    dtype: str = "bf16"
    offload: bool = False
    device: str = "gpu"
    ds_config: Optional[str] = None
    zero_stage: Optional[int] = None
    fused_attn: bool = True
    zero_init: Optional[bool] = None
    window_size: Optional[int] = None
    num_classes: Optional[int] = None
    objects: int = 100
    overhead_gb: Optional[float] = None
    mode: str = "train"

    def __post_init__(self):
        check(self.preset in PRESETS, "preset",
              f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        check(self.task in TASKS, "task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        check(self.gpus >= 1, "gpus", f"must be >= 1, got {self.gpus}")
        check(self.gpu_mem_gb > 0, "gpu_mem_gb", f"must be positive, got {self.gpu_mem_gb}")
        check(self.micro_batch is None or self.micro_batch >= 1, "micro_batch",
              f"must be >= 1, got {self.micro_batch}")
        patch = PRESETS[self.preset].patch_size
        if self.img_size is not None:
            multiple = patch if self.task == "pretrain" else 32
            check(self.img_size > 0 and self.img_size % multiple == 0, "img_size",
                  f"must be a positive multiple of {multiple} for task {self.task}, "
                  f"got {self.img_size}")
        check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check(self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        check(self.zero_stage is None or self.zero_stage in (0, 1, 2, 3), "zero_stage",
              f"must be 0..3, got {self.zero_stage}")
        check(self.window_size is None or self.window_size >= 1, "window_size",
              f"must be >= 1, got {self.window_size}")
        check(self.num_classes is None or self.num_classes >= 1, "num_classes",
              f"must be >= 1, got {self.num_classes}")
        check(self.objects >= 0, "objects", f"must be >= 0, got {self.objects}")
        check(self.overhead_gb is None or self.overhead_gb >= 0, "overhead_gb",
              f"must be >= 0, got {self.overhead_gb}")
        check(self.mode in MODES, "mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.offload:
            check(self.mode == "train", "offload", "offloads optimizer states: needs mode 'train'")

    def resolved(self, key: str):
        """A field's value, or the task default when it is ``None``."""
        value = getattr(self, key)
        return TASK_DEFAULTS[self.task][key] if value is None else value


@dataclass(frozen=True)
class Line:
    """One term of a plan.

    Attributes:
        name: what it is.
        bytes: per device.
        detail: the formula with its numbers.
    """

    name: str
    bytes: float
    detail: str = ""


@dataclass
class MemoryPlan:
    """The prediction for one request.

    Attributes:
        request: what was planned.
        stage: ZeRO stage in use.
        offload: optimizer states in host memory.
        zero_init: model built partitioned (``zero.Init``).
        ds_config: the DeepSpeed config read.
        params: trainable parameters.
        micro_batch: the micro batch the totals are for.
        lines: the step-peak terms per device; ``total`` is their sum.
        total: predicted peak per device over the training step, bytes.
        phase_peaks: peak per phase (``build``, ``initialize``, ``step``), bytes.
        peak: the largest phase peak, bytes (what a device must hold).
        capacity: usable device memory (capacity minus the profile's margin), bytes.
        fits: ``peak <= capacity``.
        activation_phase: the moment of the step where activations peak.
        activation_bytes_per_sample: activation bytes per sample at that moment.
        activation_constant_bytes: activation bytes at that moment that do not grow with the
            micro batch (work done one image at a time, e.g. the RPN's anchor assignment).
        max_micro_batch: the largest micro batch that fits (0: not even one).
        host_bytes_per_rank: host memory per rank for offloaded states and the model build.
        assumptions: what the numbers assume.
    """

    request: PlanRequest
    stage: int
    offload: bool
    zero_init: bool
    ds_config: str
    params: int
    micro_batch: int
    lines: List[Line]
    total: float
    phase_peaks: Dict[str, float]
    peak: float
    capacity: float
    fits: bool
    activation_phase: str
    activation_bytes_per_sample: float
    activation_constant_bytes: float = 0.0
    max_micro_batch: int = 0
    host_bytes_per_rank: float = 0.0
    assumptions: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["lines"] = [asdict(line) for line in self.lines]
        return d


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _activations(req: PlanRequest, profile: DeviceProfile) -> ActivationEstimate:
    p = get_preset(req.preset)
    img = req.resolved("img_size")
    stores = profile.fused_attention_stores_scores
    if req.task == "pretrain":
        if req.mode == "forward":
            kept = int(round((img // p.patch_size) ** 2 * 0.25)) + 1
            layer = LayerSpec(kept, p.embed_dim, p.mlp_dim, p.num_heads, p.num_branches,
                              fused=req.fused_attn, stores_scores=stores)
            return forward_only_activations([layer], Elems(act=3 * img * img))
        return mae_activations(dim=p.embed_dim, mlp=p.mlp_dim, heads=p.num_heads, depth=p.depth,
                               branches=p.num_branches, patch_size=p.patch_size,
                               decoder=p.decoder, img_size=img, checkpointing=req.checkpointing,
                               fused=req.fused_attn, stores_scores=stores)
    layers = vitdet_layers(img_size=img, patch_size=p.patch_size, dim=p.embed_dim, mlp=p.mlp_dim,
                           heads=p.num_heads, depth=p.depth, branches=p.num_branches,
                           window=req.resolved("window_size"),
                           global_layers=p.global_attn_indexes, fused=req.fused_attn,
                           stores_scores=stores)
    if req.mode == "forward":
        return forward_only_activations(layers, Elems(act=3 * img * img))
    return finetune_activations(req.task, layers, img_size=img, patch_size=p.patch_size,
                                dim=p.embed_dim, checkpointing=req.checkpointing,
                                num_classes=req.resolved("num_classes"), objects=req.objects)


def _stage_for(req: PlanRequest, shape: ModelShape, settings_stage: Optional[int]) -> int:
    """The ZeRO stage the engines would use (see :class:`PlanRequest`.zero_stage)."""
    if req.zero_stage is not None:
        return req.zero_stage
    if settings_stage is not None:
        return settings_stage
    from ..engine.finetune import ZERO3_ABOVE_PARAMS

    return 3 if shape.backbone_params > ZERO3_ABOVE_PARAMS else 2


def _fmt(b: float) -> str:
    return f"{b / GB:.2f} GB"


def plan_memory(req: PlanRequest, settings: Optional[ZeroSettings] = None,
                profile: Optional[DeviceProfile] = None) -> MemoryPlan:
    """Predict the per-device memory of ``req`` (see the module docstring for the terms).

    ``settings`` replaces the DeepSpeed config file (tests pass hand-made ones); ``profile``
    replaces the device's default profile. With ``req.micro_batch`` unset, the totals are for the
    largest micro batch that fits (1 if none does).
    """
    profile = profile or PROFILES[req.device]
    if req.overhead_gb is not None:
        profile = replace(profile, overhead_bytes=req.overhead_gb * GB)
    ds_path = req.ds_config or default_ds_config(req.task, req.device, req.dtype, req.offload)
    if settings is None:
        raw = load_zero_settings(ds_path)
        cfg_stage = json.loads(resolve_path(ds_path).read_text()).get(
            "zero_optimization", {}).get("stage")
    else:
        raw, cfg_stage = settings, settings.stage
    img = req.resolved("img_size")
    shape = model_shape(req.preset, req.task, img, req.resolved("window_size") or 14,
                        req.resolved("num_classes") or 6)
    stage = _stage_for(req, shape, cfg_stage)
    offload = req.offload or raw.offload_optimizer
    z = replace(raw, stage=stage, offload_optimizer=offload)
    if req.zero_init:
        check(stage == 3, "zero_init", f"needs ZeRO stage 3, the plan uses stage {stage}")
    from ..engine.finetune import ZERO3_ABOVE_PARAMS

    zero_init = (req.zero_init if req.zero_init is not None
                 else stage == 3 and shape.backbone_params > ZERO3_ABOVE_PARAMS)
    acts = _activations(req, profile)
    terms = _Terms(req, z, profile, shape, acts, zero_init)
    mb = req.micro_batch
    max_mb = terms.max_micro_batch()
    if mb is None:
        mb = max(1, max_mb)
    plan = terms.plan(mb)
    plan.ds_config = str(ds_path) if settings is None else settings.source
    plan.max_micro_batch = max_mb
    return plan


class _Terms:
    """The formulas of :func:`plan_memory` for one request, evaluated at any micro batch."""

    def __init__(self, req: PlanRequest, z: ZeroSettings, profile: DeviceProfile,
                 shape: ModelShape, acts: ActivationEstimate, zero_init: bool):
        self.req, self.z, self.profile, self.shape, self.acts = req, z, profile, shape, acts
        self.zero_init = zero_init
        self.b = DTYPES[req.dtype]
        self.n = req.gpus
        self.train = req.mode == "train"

    # -- model states ------------------------------------------------------------------------
    def states(self) -> Tuple[List[Line], float]:
        """Model-state lines on the device, and host bytes per rank (offload)."""
        P, N, b, s = self.shape.params, self.n, self.b, self.z.stage

        def per(partitioned: bool) -> float:
            return P / N if partitioned else P

        lines = []
        persist = self.shape.persistent(self.z.param_persistence_threshold) if s == 3 else 0
        # Parameters: ZeRO-3 partitions them (persistent ones are also kept whole), else whole.
        params = b * per(s == 3) + b * persist * (1 - 1 / N)
        lines.append(Line("parameters", params,
                          f"{b} B x {P / 1e6:.1f}M" + (f" / {N}" if s == 3 else "")
                          + (f" + {b} B x {persist / 1e6:.2f}M persistent (<= "
                             f"{self.z.param_persistence_threshold:.0e} elements, kept whole)"
                             if persist else "")))
        if not self.train:
            return lines, 0.0
        grads = b * per(s >= 2)
        lines.append(Line("gradients", grads, f"{b} B x {P / 1e6:.1f}M" + (f" / {N}" if s >= 2 else "")))
        # Master copy + Adam moments: 12 B, partitioned from stage 1; stage 0 in fp32 has no
        # separate master (the optimizer steps the model's own fp32 parameters).
        master = 4 if (s >= 1 or b != 4) else 0
        opt = (master + 8) * per(s >= 1)
        host = 0.0
        if self.z.offload_optimizer:
            # Offloaded: master, moments and the fp32 gradient of the step live in host memory.
            host = opt + 4 * per(s >= 1)
            lines.append(Line("optimizer states (offloaded to host)", 0.0,
                              f"{master + 8} B x {P / 1e6:.1f}M / {N} in host memory"))
        else:
            lines.append(Line("optimizer states", opt,
                              f"({master} B fp32 master + 8 B Adam moments) x {P / 1e6:.1f}M"
                              + (f" / {N}" if s >= 1 else "")))
        return lines, host

    # -- gathered parameters, buffers, step -----------------------------------------------------
    def gathered(self) -> Line:
        z, shape = self.z, self.shape
        if z.stage != 3:
            return Line("gathered parameters", 0.0, "not partitioned below ZeRO-3")
        nonpersistent = shape.params - shape.persistent(z.param_persistence_threshold)
        prefetch = min(z.max_live_parameters, z.prefetch_bucket_size)
        # Parameters used again within the reuse distance stay gathered (at the forward/backward
        # turn of a training step that is everything within it; measured: forward-only passes
        # keep as much), prefetching fills up to the live cap, and a module must be whole.
        live = min(nonpersistent, max(z.max_reuse_distance, prefetch) + shape.largest_module)
        why = (f"max(reuse distance {z.max_reuse_distance:.0e}, prefetch {prefetch:.0e}) "
               f"+ largest module {shape.largest_module / 1e6:.2f}M")
        return Line("gathered parameters", self.b * live, f"{self.b} B x {live / 1e6:.1f}M: {why}")

    def bucket(self) -> Line:
        """The permanent gradient bucket (ZeRO >= 1, training)."""
        if not self.train or self.z.stage == 0:
            return Line("gradient bucket", 0.0, "")
        size = self.z.reduce_bucket_size
        used = min(size, self.shape.params) if self.profile.buffers_touched_only else size
        return Line("gradient bucket", self.b * used,
                    f"{self.b} B x {used / 1e6:.1f}M (reduce_bucket_size {size:.0e}"
                    + (", only written pages count" if used < size else "") + ")")

    def comm_transient(self) -> float:
        """While a bucket is reduced: its flattened copy; ZeRO-3 also holds the gradients of the
        module whose backward just ran until they are copied into the bucket."""
        if not self.train or self.z.stage == 0:
            return 0.0
        copy = self.b * min(self.z.reduce_bucket_size, self.shape.params)
        module = self.b * self.shape.largest_module if self.z.stage == 3 else 0.0
        return copy + module

    def step_transient(self) -> Tuple[float, str]:
        """Optimizer-step temporaries on the device."""
        if not self.train or self.z.offload_optimizer:
            return 0.0, "none on the device" if self.train else ""
        P, N, s, b = self.shape.params, self.n, self.z.stage, self.b
        part = P / N if s >= 1 else P
        group = min(self.z.sub_group_size, part) if s == 3 else part
        adam_tmp = 8 if self.z.torch_adam else 0
        # The flattened gradient (b) cast to fp32 (4): both exist while casting; then the fp32
        # gradient and Adam's temporaries.
        per = max(b + 4 if b != 4 else 4, 4 + adam_tmp)
        return per * group, (f"{per} B x {group / 1e6:.1f}M (fp32 gradient of the sub-group"
                             + (" + torch AdamW's sqrt(v) temporaries" if adam_tmp else "") + ")")

    def allgather_transient(self) -> float:
        """ZeRO-1/2 gather updated parameters after the step in allgather_bucket_size chunks."""
        if not self.train or self.z.stage not in (1, 2):
            return 0.0
        return self.b * min(self.z.allgather_bucket_size, self.shape.params)

    # -- totals ------------------------------------------------------------------------------
    def plan(self, mb: int) -> MemoryPlan:
        req, profile = self.req, self.profile
        state_lines, host = self.states()
        states = sum(line.bytes for line in state_lines)
        gathered = self.gathered()
        bucket = self.bucket()
        act_bytes, act_phase = self.acts.peak(mb, self.b)
        peak_phase = self.acts.peak_phase(mb, self.b)
        per_sample = peak_phase.per_sample.bytes(self.b)
        act_constant = peak_phase.constant.bytes(self.b)
        comm = self.comm_transient()
        step, step_why = self.step_transient()
        step = max(step, self.allgather_transient())
        working = gathered.bytes + act_bytes + comm
        overhead = Line("framework overhead", profile.overhead_bytes + profile.step_overhead_bytes,
                        profile.notes)
        lines = [overhead, *state_lines, gathered, bucket,
                 Line("activations", act_bytes,
                      f"micro batch {mb}, peak at: {act_phase}"
                      + ("" if req.checkpointing else " (no activation checkpointing)")),
                 Line("gradients in flight", comm,
                      "bucket copy while reducing + last module's gradients" if comm else "")]
        if profile.heap_retention:
            # CPU: glibc keeps freed heap memory resident and serves later allocations from it.
            # Its high-water mark is the larger of what initialize freed there and the
            # forward/backward working set (fragmented: x heap_retention); it stays resident
            # while the optimizer step allocates its (mmapped) temporaries.
            heap = max(self.init_heap(), profile.heap_retention * working)
            lines.append(Line("allocator retention", heap - working,
                              f"glibc heap high-water: max(initialize's freed pieces "
                              f"{self.init_heap() / GB:.2f} GB, {profile.heap_retention:.1f} x the "
                              f"forward/backward working set) beyond the live working set"))
            lines.append(Line("optimizer step", step, step_why))
        else:
            # GPU: the caching allocator reuses the forward/backward blocks for the step.
            extra = max(0.0, step - working)
            lines.append(Line("optimizer step (beyond reused memory)", extra, step_why))
        total = sum(line.bytes for line in lines)
        phases = {"step": total, **self.init_phases(states)}
        peak = max(phases.values())
        capacity = req.gpu_mem_gb * GB * (1 - profile.margin)
        assumptions = [f"ZeRO-{self.z.stage}, {req.dtype}, {req.gpus} rank(s), profile "
                       f"{profile.name}", *self.acts.notes]
        if req.fused_attn and not profile.fused_attention_stores_scores:
            assumptions.append("fused attention: no L x L matrix stored")
        return MemoryPlan(
            request=req, stage=self.z.stage, offload=self.z.offload_optimizer,
            zero_init=self.zero_init, ds_config=self.z.source, params=self.shape.params,
            micro_batch=mb, lines=lines, total=total, phase_peaks=phases, peak=peak,
            capacity=capacity, fits=peak <= capacity, activation_phase=act_phase,
            activation_bytes_per_sample=per_sample, activation_constant_bytes=act_constant,
            # On a CPU the host is the device: its lines already hold all of this.
            host_bytes_per_rank=0.0 if req.device == "cpu" else
            host + (0.0 if self.zero_init else 4 * self.shape.params),
            assumptions=assumptions)

    def init_phases(self, states: float) -> Dict[str, float]:
        """Peaks while building the model and inside ``deepspeed.initialize``.

        Without ``zero.Init`` every rank first builds the whole model in fp32 (4 B/parameter) in
        host memory; ``initialize`` casts it to the training dtype (a second whole copy, ``b``
        B/parameter, made before the fp32 one is gone) and partitions it (``b`` B/parameter over
        the ranks); then it creates the gradient and fp32 master partitions and a
        sub-group-sized fp32 gradient buffer (Adam's moments appear at the first step). With
        ``zero.Init`` each module is partitioned right after it is built, in fp32 for a moment.
        On a GPU the whole-model copies stay in host memory (:attr:`MemoryPlan.host_bytes_per_rank`).
        """
        P, N, b, over = self.shape.params, self.n, self.b, self.profile.overhead_bytes
        s = self.z.stage
        part = P / N if s == 3 else P
        on_device = self.profile.host_is_device
        if self.zero_init:
            build = over + b * part + 4 * self.shape.largest_module
            if self.profile.heap_retention:  # CPU: the build's freed pieces stay resident
                build += self.init_heap()
        else:
            build = over + (4 * P if on_device else 0.0)
        if not self.train:
            return {"build": build, "initialize": max(build, over + b * part)}
        group = min(self.z.sub_group_size, P / N if s >= 1 else P)
        at_init = states - 8 * (P / N if s >= 1 else P) * (not self.z.offload_optimizer)
        whole = 4 * P + self.init_heap() if on_device and not self.zero_init else 0.0
        init = over + max(whole, at_init + (0 if self.z.offload_optimizer else 4 * group))
        return {"build": build, "initialize": init}

    def init_heap(self) -> float:
        """Memory the build and ``initialize`` allocate in per-parameter pieces and free again
        (what glibc keeps in its heap on a CPU).

        Without ``zero.Init``: the cast copy of the whole model (when the training dtype is not
        fp32) and the per-parameter partitions that are then copied into one flat buffer. With
        it: every parameter is materialised whole in fp32 twice, when its module is built and
        when the engine gathers it to initialise it on rank 0 (``build_model``); the tensors below
        glibc's 32 MiB mmap ceiling go through the heap (the larger ones are mmapped and
        returned).
        """
        if self.zero_init:
            mmap_max = 32 * 2 ** 20
            return 2 * sum(4 * n for n in self.shape.numels if 4 * n <= mmap_max)
        P, N, b = self.shape.params, self.n, self.b
        part = P / N if self.z.stage == 3 else P
        return (b * P if b != 4 else 0.0) + b * part

    def max_micro_batch(self, limit: int = 1 << 16) -> int:
        """Largest micro batch whose peak fits (0 if none): the peak grows with the micro batch,
        so a doubling search then bisection finds it."""
        cap = self.req.gpu_mem_gb * GB * (1 - self.profile.margin)

        def fits(mb: int) -> bool:
            return self.plan(mb).peak <= cap

        if not fits(1):
            return 0
        lo, hi = 1, 2
        while hi <= limit and fits(hi):
            lo, hi = hi, hi * 2
        if hi > limit:
            return lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


def max_micro_batch(req: PlanRequest, **kwargs) -> int:
    """The largest micro batch of ``req`` that fits (0: not even one)."""
    return plan_memory(replace(req, micro_batch=1), **kwargs).max_micro_batch


@dataclass(frozen=True)
class Recommendation:
    """A ZeRO stage and offload for a request.

    Attributes:
        stage: ZeRO stage.
        offload: optimizer states in host memory.
        micro_batch: the largest micro batch that fits with them.
        plan: the plan at that micro batch.
        reason: why this one.
    """

    stage: int
    offload: bool
    micro_batch: int
    plan: MemoryPlan
    reason: str


def recommend(req: PlanRequest, **kwargs) -> Recommendation:
    """Pick the cheapest configuration that fits the requested micro batch (or one sample).

    Candidates in order of communication cost: ZeRO-2 (gradients and optimizer partitioned, no
    parameter gathering), ZeRO-3, ZeRO-3 with the optimizer offloaded to host memory (host memory
    and PCIe traffic instead of device memory). The first whose peak fits wins; if none does, the
    report says so with ZeRO-3 + offload's numbers.
    """
    want = req.micro_batch or 1
    candidates = [(2, False), (3, False), (3, True)]
    plans = []
    for stage, offload in candidates:
        if stage == 2 and req.zero_init:
            continue
        r = replace(req, zero_stage=stage, offload=offload, micro_batch=None)
        plan = plan_memory(r, **kwargs)
        plans.append((stage, offload, plan))
        if plan.max_micro_batch >= want:
            why = {2: "ZeRO-2 fits: no parameter gathering, least communication",
                   3: "ZeRO-2 does not fit; ZeRO-3 partitions the parameters too"}.get(stage, "")
            if offload:
                why = "only with the optimizer states in host memory"
            return Recommendation(stage, offload, plan.max_micro_batch, plan, why)
    stage, offload, plan = plans[-1]
    return Recommendation(stage, offload, 0, plan,
                          f"does not fit even with ZeRO-3 + offload at micro batch {want}")


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def format_plan(plan: MemoryPlan, rec: Optional[Recommendation] = None) -> str:
    """A human-readable report of one plan."""
    r = plan.request
    head = (f"{r.preset} {r.task} @ {r.resolved('img_size')} px, {r.dtype}, {r.gpus} x "
            f"{r.gpu_mem_gb:g} GB ({r.device}), ZeRO-{plan.stage}"
            + (" + optimizer offload" if plan.offload else "")
            + (", zero.Init" if plan.zero_init else "")
            + f", activation checkpointing {'on' if r.checkpointing else 'off'}, "
              f"{plan.params / 1e6:.1f}M parameters, DeepSpeed config {plan.ds_config}")
    out = [head, f"per-device memory at micro batch {plan.micro_batch}:"]
    width = max(len(line.name) for line in plan.lines)
    for line in plan.lines:
        out.append(f"  {line.name:<{width}} {line.bytes / GB:9.2f} GB  {line.detail}")
    out.append(f"  {'total (training step)':<{width}} {plan.total / GB:9.2f} GB")
    out.append("  phase peaks: " + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in plan.phase_peaks.items()))
    out.append(f"  peak {plan.peak / GB:.2f} GB of {plan.capacity / GB:.2f} GB usable: "
               + ("fits" if plan.fits else "DOES NOT FIT"))
    out.append(f"activations: {plan.activation_bytes_per_sample / GB:.3f} GB per sample"
               + (f" + {plan.activation_constant_bytes / GB:.2f} GB per step"
                  if plan.activation_constant_bytes else "")
               + f" (peak at: {plan.activation_phase})")
    out.append(f"largest micro batch that fits: {plan.max_micro_batch}")
    if plan.host_bytes_per_rank:
        out.append(f"host memory per rank: {plan.host_bytes_per_rank / GB:.2f} GB "
                   "(offloaded states, and the fp32 replica each rank builds without zero.Init)")
    if rec is not None:
        out.append(f"recommended: ZeRO-{rec.stage}" + (" + optimizer offload" if rec.offload else "")
                   + f", micro batch up to {rec.micro_batch} ({rec.reason})")
    out.append("assumes: " + "; ".join(plan.assumptions))
    return "\n".join(out)


def plan_table(gpu_counts: Sequence[int] = (1, 8), gpu_mem_gb: float = 80.0,
               dtype: str = "bf16", presets: Optional[Sequence[str]] = None,
               tasks: Sequence[str] = TASKS) -> List[Dict[str, Any]]:
    """One row per preset x task x GPU count: stage, states, activations (per sample, at the
    largest micro batch that fits), that micro batch and the recommendation, with the shipped
    configs' defaults."""
    rows = []
    for preset in presets or list(PRESETS):
        for task in tasks:
            for gpus in gpu_counts:
                req = PlanRequest(preset=preset, task=task, gpus=gpus, gpu_mem_gb=gpu_mem_gb,
                                  dtype=dtype)
                plan = plan_memory(req)  # at the largest micro batch that fits
                rec = recommend(req)
                states = sum(line.bytes for line in plan.lines
                             if line.name in ("parameters", "gradients", "optimizer states"))
                rows.append(dict(
                    preset=preset, task=task, gpus=gpus, gpu_mem_gb=gpu_mem_gb,
                    params_m=plan.params / 1e6, stage=plan.stage, states_gb=states / GB,
                    act_per_sample_gb=plan.activation_bytes_per_sample / GB,
                    act_constant_gb=plan.activation_constant_bytes / GB,
                    max_micro_batch=plan.max_micro_batch,
                    rec_stage=rec.stage, rec_offload=rec.offload, rec_micro_batch=rec.micro_batch))
    return rows


def format_table(rows: List[Dict[str, Any]]) -> str:
    """:func:`plan_table`'s rows as text: the shipped configuration's ZeRO stage, model states
    and activations per device, its largest micro batch, and the recommendation."""
    header = (f"{'preset':<10} {'task':<8} {'GPUs':>4} {'params':>7} {'ZeRO':>4} {'states':>8} "
              f"{'activations/sample':>18} {'max mb':>6}  recommended")
    out = [header, "-" * (len(header) + 22)]
    for r in rows:
        rec = (f"ZeRO-{r['rec_stage']}" + (" + offload" if r['rec_offload'] else "")
               + f", mb <= {r['rec_micro_batch']}" if r["rec_micro_batch"] else "does not fit")
        act = f"{r['act_per_sample_gb']:.3f} GB" + (
            f" + {r['act_constant_gb']:.2f}" if r["act_constant_gb"] else "")
        out.append(f"{r['preset']:<10} {r['task']:<8} {r['gpus']:>4} {r['params_m']:>6.0f}M "
                   f"{r['stage']:>4} {r['states_gb']:>5.1f} GB {act:>18} "
                   f"{r['max_micro_batch']:>6}  {rec}")
    return "\n".join(out)


__all__ = ["DeviceProfile", "GPU_PROFILE", "CPU_PROFILE", "PROFILES", "ZeroSettings",
           "zero_settings", "load_zero_settings", "ModelShape", "model_shape", "encoder_params",
           "PlanRequest", "MemoryPlan", "Line", "plan_memory", "max_micro_batch", "Recommendation",
           "recommend", "format_plan", "plan_table", "format_table", "default_ds_config",
           "TASK_DEFAULTS", "GB", "GiB"]
