"""Memory planning: predict what one device holds when training an rsfm-ds model, and measure it.

* :mod:`.activations`: saved tensors and working memory of the MAE, the ViTDet backbone and the
  detection / segmentation heads, derived layer by layer from the architecture.
* :mod:`.memory`: model states under ZeRO, gathered parameters, communication buckets, optimizer
  step, device profiles; :func:`plan_memory`, :func:`max_micro_batch`, :func:`recommend`.
* :mod:`.measure`: peak memory of real ZeRO-3 MAE runs per rank and phase (the check).
* :mod:`.cli`: the ``rsfm plan`` verb (``add_plan``).

docs/planning.md explains the model and lists the measurements it was checked against.
"""
from .memory import (CPU_PROFILE, GPU_PROFILE, DeviceProfile, MemoryPlan, PlanRequest,
                     Recommendation, ZeroSettings, format_plan, format_table, max_micro_batch,
                     plan_memory, plan_table, recommend)

__all__ = ["CPU_PROFILE", "GPU_PROFILE", "DeviceProfile", "MemoryPlan", "PlanRequest",
           "Recommendation", "ZeroSettings", "format_plan", "format_table", "max_micro_batch",
           "plan_memory", "plan_table", "recommend"]
