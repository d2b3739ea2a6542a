"""Memory planning: predict what one device holds when training an rsfm-ds model, and measure it.

* :mod:`.request`: what to plan for (:class:`PlanRequest`) and the prediction (:class:`MemoryPlan`).
* :mod:`.memory`: model states under ZeRO, gathered parameters, communication buckets, optimizer
  step; :func:`plan_memory`, :func:`max_micro_batch`, :func:`recommend`.
* :mod:`.activations`: saved tensors and working memory of the MAE, the ViTDet backbone and the
  detection / segmentation heads, derived layer by layer from the architecture.
* :mod:`.model_shape`: parameter statistics of the real models, built on the meta device.
* :mod:`.zero`: the DeepSpeed settings that decide memory; :mod:`.profiles`: device profiles.
* :mod:`.report`: the plan as text, and the table of every preset and task.
* :mod:`.measure`: peak memory of real ZeRO-3 MAE runs per rank and phase (the check).

docs/planning.md explains the model and lists the measurements it was checked against.
"""
from .memory import Recommendation, max_micro_batch, plan_memory, recommend
from .model_shape import ModelShape, encoder_params, model_shape
from .profiles import CPU_PROFILE, GB, GPU_PROFILE, PROFILES, DeviceProfile, GiB
from .report import format_plan, format_table, plan_table
from .request import DTYPES, TASK_DEFAULTS, TASKS, Line, MemoryPlan, PlanRequest
from .zero import ZeroSettings, default_ds_config, load_zero_settings, zero_settings

__all__ = ["CPU_PROFILE", "GPU_PROFILE", "PROFILES", "DeviceProfile", "GB", "GiB", "MemoryPlan", "Line",
           "PlanRequest", "TASKS", "TASK_DEFAULTS", "DTYPES", "Recommendation", "ZeroSettings", "ModelShape",
           "encoder_params", "model_shape", "default_ds_config", "load_zero_settings", "zero_settings",
           "format_plan", "format_table", "max_micro_batch", "plan_memory", "plan_table", "recommend"]
