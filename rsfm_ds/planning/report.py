"""The planner's reports: one plan as text, and the table of every preset and task."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ..models.preset_specs import PRESETS
from .memory import Recommendation, plan_memory, recommend
from .profiles import GB
from .request import TASKS, MemoryPlan, PlanRequest


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


__all__ = ["format_plan", "plan_table", "format_table"]
