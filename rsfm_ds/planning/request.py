"""What to plan for (:class:`PlanRequest`) and what the planner predicts (:class:`MemoryPlan`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ..config import check
from ..models.preset_specs import PRESETS

TASKS = ("pretrain", "det", "seg")
DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4}
DEVICES = ("gpu", "cpu")
MODES = ("train", "forward")

TASK_DEFAULTS = {  # from configs/: pretrain/base.yaml, det/recipe.yaml, seg/base.yaml
    "pretrain": dict(img_size=224, window_size=0, num_classes=0, rel_pos=False),
    "det": dict(img_size=1024, window_size=7, num_classes=18, rel_pos=True),   # DOTA v2.0, 18 classes
    "seg": dict(img_size=512, window_size=14, num_classes=6, rel_pos=True),    # Potsdam, 6-class protocol
}


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
        rel_pos: ViTDet's decomposed relative position bias (``backbone.use_rel_pos``; on for det
            and seg by default, as the configs; never in pretraining).
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
    rel_pos: Optional[bool] = None
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
        check(not (self.rel_pos and self.task == "pretrain"), "rel_pos",
              "the MAE encoder has no relative position bias")
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


__all__ = ["PlanRequest", "MemoryPlan", "Line", "TASKS", "TASK_DEFAULTS", "DTYPES", "DEVICES", "MODES"]
