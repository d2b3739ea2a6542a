"""Learning-rate schedules as pure functions of the optimizer step.

A pure function of the step (rather than a stateful scheduler object) makes resumption exact by
construction: the step is restored, and so is the learning rate.
"""
from __future__ import annotations

import math
from typing import Sequence


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine down to ``floor`` at
    ``total_steps``. ``step`` counts from 0 (the first update uses ``step=0``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_poly(step: int, total_steps: int, warmup_steps: int, peak: float, power: float = 1.0,
                floor: float = 0.0, warmup_ratio: float = 1e-6) -> float:
    """Linear warm-up from ``peak * warmup_ratio``, then polynomial decay to ``floor`` (mmseg's
    PolyLR over the whole run)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (warmup_ratio + (1 - warmup_ratio) * step / warmup_steps)
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return floor + (peak - floor) * (1.0 - progress) ** power


def warmup_multistep(step: int, warmup_steps: int, peak: float, milestones: Sequence[int],
                     gamma: float = 0.1, warmup_ratio: float = 1.0 / 3) -> float:
    """Linear warm-up from ``peak * warmup_ratio``, then multiply by ``gamma`` at each milestone
    step (the detection recipe: steps at epochs 8 and 11 of 12)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (warmup_ratio + (1 - warmup_ratio) * step / warmup_steps)
    return peak * gamma ** sum(step >= m for m in milestones)


def apply_lr(optimizer, lr: float) -> None:
    """Set each group's lr to ``lr * group['lr_scale']`` (layer-wise decay; 1.0 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
