"""Run-config sections shared by the engines, and the pretraining run config.

Each field is documented by the string after it (docs/configuration.md is generated from these);
``__post_init__`` validates with :func:`rsfm_ds.config.check`, naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple

from ..config import check, check_choices
from ..data.pretrain.config import PretrainDataConfig
from ..models.model_configs import MAEConfig, ViTDetConfig

# How long a collective waits for the other ranks before the job fails (a rank stopped, hung or died).
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class MAEModelConfig(MAEConfig):
    """The MAE model being pretrained, and how the engine runs it."""

    grad_checkpointing: bool = True
    """Recompute encoder blocks in the backward pass (activation checkpointing)."""
    checkpoint_use_reentrant: bool = False
    """Reentrant checkpointing; needed with frozen parameters under ZeRO-3."""
    zero_init: bool = False
    """Build the model under deepspeed.zero.Init (partitioned from the start; for models whose
    replicas do not fit one device). Needs ZeRO stage 3."""


@dataclass
class OptimConfig:
    """AdamW with per-iteration linear warm-up then cosine decay."""

    base_lr: float = 1.5e-4
    """Learning rate per 256 samples: lr = base_lr * global_batch_size / 256."""
    lr: Optional[float] = None
    """Absolute learning rate; overrides base_lr scaling when set."""
    min_lr: float = 0.0
    """Floor of the cosine decay."""
    weight_decay: float = 0.05
    """AdamW weight decay (none on norms, biases, tokens and position tables)."""
    betas: Tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1.0e-8
    """AdamW epsilon."""
    warmup_epochs: float = 40.0
    """Linear warm-up length in epochs (converted to optimizer steps)."""
    warmup_steps: Optional[int] = None
    """Warm-up length in optimizer steps; overrides warmup_epochs when set."""
    clip_grad: Optional[float] = None
    """Gradient-norm clipping threshold (DeepSpeed gradient_clipping); null disables."""

    def __post_init__(self):
        check(self.base_lr > 0, "base_lr", f"must be positive, got {self.base_lr}")
        check(self.lr is None or self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(self.min_lr >= 0, "min_lr", f"must be >= 0, got {self.min_lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(all(0 <= b < 1 for b in self.betas), "betas", f"must be in [0, 1), got {self.betas}")
        check(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        check(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.clip_grad is None or self.clip_grad > 0, "clip_grad", f"must be positive, got {self.clip_grad}")


@dataclass
class TrainConfig:
    """Batch sizes, length, precision and the DeepSpeed config."""

    global_batch_size: int = 4096
    """Samples per optimizer step over all ranks (micro_batch_size x accumulation x world size)."""
    micro_batch_size: int = 64
    """Samples per rank per forward/backward pass."""
    epochs: int = 400
    """Training length in epochs."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (caps epochs; the schedule still spans all epochs)."""
    precision: Precision = "bf16"
    """fp32, bf16 or fp16; must agree with the DeepSpeed config."""
    ds_config: str = "ds_configs/zero3_bf16.json"
    """DeepSpeed JSON; batch sizes, precision and clipping are filled from this run config, and a
    value that contradicts it is refused."""
    device_peak_tflops: Optional[float] = None
    """Dense peak TFLOP/s of one device at the training precision, for MFU; null uses the known
    value for the detected GPU, or leaves MFU out."""
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
    """A collective operation waiting longer than this for the other ranks ends the run, naming
    the rank (a rank stopped, hung or died); raise it for steps that legitimately take longer."""

    def __post_init__(self):
        check_choices(self)
        check(self.micro_batch_size > 0, "micro_batch_size", f"must be positive, got {self.micro_batch_size}")
        check(self.global_batch_size >= self.micro_batch_size, "global_batch_size",
              f"{self.global_batch_size} is smaller than micro_batch_size {self.micro_batch_size}")
        check(self.global_batch_size % self.micro_batch_size == 0, "global_batch_size",
              f"{self.global_batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")
        check(self.epochs > 0, "epochs", f"must be positive, got {self.epochs}")
        check(self.max_steps is None or self.max_steps > 0, "max_steps", f"must be positive, got {self.max_steps}")
        check(self.collective_timeout_s > 0, "collective_timeout_s", f"must be positive, got {self.collective_timeout_s}")


@dataclass
class CheckpointConfig:
    """Periodic DeepSpeed checkpoints and resumption."""

    every_steps: int = 1000
    """Save every N optimizer steps (and always at the end)."""
    keep_last: int = 3
    """Complete checkpoints to keep (older ones are deleted after a newer one is complete)."""
    resume: Optional[str] = "auto"
    """'auto' continues from the newest complete checkpoint in run_dir/checkpoints if there is one;
    a path resumes from that checkpoint directory; null always starts fresh."""

    def __post_init__(self):
        check(self.every_steps > 0, "every_steps", f"must be positive, got {self.every_steps}")
        check(self.keep_last > 0, "keep_last", f"must be positive, got {self.keep_last}")


@dataclass
class LogConfig:
    """Console, progress bar and TensorBoard."""

    every_steps: int = 20
    """Plain log line (and finiteness check of the loss) every N optimizer steps."""
    tensorboard: bool = True
    """Write TensorBoard scalars to run_dir/tensorboard (rank 0)."""
    progress: bool = True
    """Progress bar on rank 0 (disabled automatically when stdout is not a terminal)."""

    def __post_init__(self):
        check(self.every_steps > 0, "every_steps", f"must be positive, got {self.every_steps}")


@dataclass
class PretrainConfig:
    """MAE pretraining run (rsfm pretrain)."""

    run_dir: str = "runs/pretrain"
    """Output directory: checkpoints, TensorBoard, config.yaml, log."""
    seed: int = 0
    """Seeds model init, masking, drop path and data order (with epoch and rank)."""
    model: MAEModelConfig = field(default_factory=MAEModelConfig)
    """The model."""
    data: PretrainDataConfig = field(default_factory=lambda: PretrainDataConfig(shards="data/shards/manifest.json"))
    """Training data (WebDataset shards)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batches, length, precision, DeepSpeed."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing and resumption."""
    log: LogConfig = field(default_factory=LogConfig)
    """Logging."""

    def __post_init__(self):
        check(self.data.img_size == self.model.img_size, "data.img_size",
              f"{self.data.img_size} differs from model.img_size {self.model.img_size}")


@dataclass
class BackboneConfig(ViTDetConfig):
    """The ViTDet backbone of a fine-tuning run, its pretrained weights, and how the engine runs it."""

    pretrained: Optional[str] = None
    """Pretrained weights: a converted backbone file, a ZeRO-3 checkpoint directory or a timm
    file; null trains from scratch."""
    patch_embed_adapt: Literal["timm", "error"] = "timm"
    """A pretrained patch embedding of another band count than in_chans: timm adapts it (timm's
    adapt_input_conv rule, docs/checkpoints.md); error refuses the checkpoint."""
    grad_checkpointing: bool = True
    """Activation checkpointing of the backbone blocks."""
    checkpoint_use_reentrant: bool = False
    """Reentrant checkpointing; needed with frozen parameters under ZeRO-3."""
    zero_init: bool = False
    """Build the model under deepspeed.zero.Init (needs ZeRO stage 3)."""


@dataclass
class FinetuneOptimConfig:
    """AdamW with layer-wise learning-rate decay."""

    lr: float = 1.0e-4
    """Peak learning rate (of the heads; backbone layers get lr x layer_decay^depth-from-top)."""
    weight_decay: float = 0.05
    """AdamW weight decay (none on norms, biases, tokens and position tables)."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1.0e-8
    """AdamW epsilon."""
    layer_decay: Optional[float] = 0.75
    """Layer-wise lr decay (0.75 detection, 0.9 segmentation recipes); null disables."""
    clip_grad: Optional[float] = None
    """Gradient-norm clipping threshold; null disables."""

    def __post_init__(self):
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.layer_decay is None or 0 < self.layer_decay <= 1, "layer_decay",
              f"must be in (0, 1], got {self.layer_decay}")
        check(self.clip_grad is None or self.clip_grad > 0, "clip_grad", f"must be positive, got {self.clip_grad}")


@dataclass
class ScheduleConfig:
    """Length and learning-rate schedule, in optimizer steps or epochs."""

    by: Literal["epoch", "iter"] = "epoch"
    """Unit of length, milestones and warm-up: "epoch" or "iter" (optimizer steps)."""
    length: int = 12
    """Training length in units of `by`."""
    type: Literal["multistep", "poly", "cosine"] = "multistep"
    """multistep (detection: x0.1 at each milestone), poly (segmentation) or cosine."""
    milestones: Tuple[int, ...] = (8, 11)
    """multistep: where the lr drops, in units of `by`."""
    gamma: float = 0.1
    """multistep: the factor at each milestone."""
    power: float = 1.0
    """poly: exponent."""
    min_lr: float = 0.0
    """poly / cosine: floor."""
    warmup: int = 500
    """Linear warm-up length in optimizer steps (iterations, whatever `by` is)."""
    warmup_ratio: float = 0.001
    """Warm-up starts at lr x warmup_ratio."""

    def __post_init__(self):
        check_choices(self)
        check(self.length > 0, "length", f"must be positive, got {self.length}")
        check(all(0 < m for m in self.milestones), "milestones", f"must be positive, got {self.milestones}")
        check(self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        check(0 < self.warmup_ratio <= 1, "warmup_ratio", f"must be in (0, 1], got {self.warmup_ratio}")


@dataclass
class FinetuneTrainConfig:
    """Batches, precision and DeepSpeed for fine-tuning."""

    global_batch_size: int = 8
    """Images per optimizer step over all ranks."""
    micro_batch_size: int = 2
    """Images per rank per forward/backward pass."""
    precision: Precision = "bf16"
    """fp32, bf16 or fp16; must agree with the DeepSpeed config."""
    ds_config: str = "ds_configs/finetune_bf16.json"
    """DeepSpeed JSON (its ZeRO stage may be left to `zero_stage`)."""
    zero_stage: Optional[int] = None
    """ZeRO stage; null: the DeepSpeed config's, else 2 up to 700M backbone parameters, 3 above."""
    num_workers: int = 2
    """DataLoader workers per rank."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (the schedule still spans schedule.length)."""
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
    """A collective operation waiting longer than this for the other ranks ends the run, naming
    the rank (a rank stopped, hung or died); raise it for evaluations that legitimately take longer."""

    def __post_init__(self):
        check_choices(self)
        check(self.micro_batch_size > 0, "micro_batch_size", f"must be positive, got {self.micro_batch_size}")
        check(self.global_batch_size % self.micro_batch_size == 0, "global_batch_size",
              f"{self.global_batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")
        check(self.zero_stage is None or self.zero_stage in (0, 1, 2, 3), "zero_stage",
              f"must be 0..3 or null, got {self.zero_stage}")
        check(self.max_steps is None or self.max_steps > 0, "max_steps", f"must be positive, got {self.max_steps}")
        check(self.collective_timeout_s > 0, "collective_timeout_s", f"must be positive, got {self.collective_timeout_s}")


@dataclass
class EvalConfig:
    """Periodic evaluation and best-checkpoint keeping."""

    every: int = 1
    """Evaluate every N units of schedule.by (and always at the end)."""
    batch_size: int = 2
    """Images per rank per evaluation batch."""
    keep_best: bool = True
    """Keep a checkpoint of the best evaluation (by the task's primary metric) in checkpoints/best_*."""

    def __post_init__(self):
        check(self.every > 0, "every", f"must be positive, got {self.every}")
        check(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")


@dataclass
class FinetuneConfig:
    """Sections every fine-tuning run has; tasks add their data and head sections."""

    run_dir: str = "runs/finetune"
    """Output directory: checkpoints, TensorBoard, evaluations, predictions."""
    seed: int = 0
    """Seeds initialisation, data order and augmentation."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """The backbone."""
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    """Optimizer."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Length and schedule."""
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    """Batches, precision, DeepSpeed."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing and resumption."""
    log: LogConfig = field(default_factory=LogConfig)
    """Logging."""
