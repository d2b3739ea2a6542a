"""The DeepSpeed settings that decide memory: ZeRO stage, buckets, prefetch, persistence, offload.

:func:`load_zero_settings` reads them from a DeepSpeed JSON (with DeepSpeed 0.19's defaults for
what it leaves out); :func:`default_ds_config` names the JSON the shipped run configs use.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ..config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


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
        unfused_torch_adam: the optimizer is ``torch.optim.AdamW`` in its default (for-each or
            single-tensor) form, whose step allocates ``sqrt(v)``-sized temporaries, rather than
            DeepSpeed's in-place fused / CPU Adam or torch's ``fused=True`` kernel.
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
    unfused_torch_adam: bool = False
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
        # torch.optim.AdamW(fused=True) updates in place, as DeepSpeed's fused Adam does.
        unfused_torch_adam=bool(opt.get("params", {}).get("torch_adam", False))
        and not bool(opt.get("params", {}).get("fused", False)),
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


def default_ds_config(task: str, device: str, dtype: str, offload: bool) -> str:
    """The DeepSpeed config the shipped run configs use for this task and device."""
    if device == "cpu":
        return "ds_configs/cpu_debug.json" if task == "pretrain" else "ds_configs/finetune_cpu.json"
    if task == "pretrain":
        if offload:
            return "ds_configs/zero3_offload.json"
        return "ds_configs/zero3_fp16.json" if dtype == "fp16" else "ds_configs/zero3_bf16.json"
    return "ds_configs/finetune_bf16.json"


__all__ = ["ZeroSettings", "zero_settings", "load_zero_settings", "resolve_path", "default_ds_config"]
