"""The fine-tuning task registry: task name -> config class, task class, main metric, example.

The CLI (``rsfm finetune <task>``), the study runner, the configuration reference and the docs
test all read :data:`TASKS`; adding a downstream task is one :class:`TaskSpec` here and one module
with its config and :class:`~rsfm_ds.engine.finetune.FinetuneTask`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Optional, Type, Union

from ..config import ConfigError, load_config

if TYPE_CHECKING:
    from .config import FinetuneConfig
    from .finetune import FinetuneTask


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module, __package__), name)


@dataclass(frozen=True)
class TaskSpec:
    """One downstream task.

    The config and task classes are named, not imported: the CLI builds its parser from this
    registry, and a command that needs neither (``rsfm synth``, ``rsfm datasets``) should not pay
    for importing torch and the models.

    Attributes:
        name: the verb (``rsfm finetune <name>``) and the study's ``task`` value.
        summary: one line for help texts.
        config_path: ``module:Class`` of its run config (a :class:`FinetuneConfig` with the task's
            sections), relative to this package.
        task_path: ``module:Class`` of the :class:`FinetuneTask` that builds its model, data and
            evaluation.
        example: a run config in ``configs/`` to show in help texts.
        config_glob: the run configs of ``configs/`` that this task reads.
    """

    name: str
    summary: str
    config_path: str
    task_path: str
    example: str
    config_glob: str

    @property
    def config_class(self) -> Type["FinetuneConfig"]:
        return _resolve(self.config_path)

    @property
    def task_class(self) -> Type["FinetuneTask"]:
        return _resolve(self.task_path)

    @property
    def metric(self) -> str:
        """The metric that selects the best checkpoint and that studies tabulate."""
        return self.task_class.primary_metric

    def load_config(self, path: Optional[Union[str, Path]] = None, overrides: Iterable[str] = ()
                    ) -> "FinetuneConfig":
        """The task's run config from ``path`` and ``section.field=value`` overrides."""
        return load_config(self.config_class, path, overrides)

    def build(self, cfg: "FinetuneConfig") -> "FinetuneTask":
        return self.task_class(cfg)


TASKS: Dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("det", "Oriented R-CNN on DOTA / DIOR-R", ".detection:DetFinetuneConfig", ".detection:DetectionTask",
             "configs/det/dota2_vit_l12x4.yaml", "configs/det/*.yaml"),
    TaskSpec("seg", "UperNet on Potsdam / LoveDA", ".segmentation:SegFinetuneConfig",
             ".segmentation:SegmentationTask", "configs/seg/potsdam_vit_l12x4.yaml", "configs/seg/*.yaml"),
)}


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``; a :class:`ConfigError` naming the known ones otherwise."""
    if name not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TaskSpec", "TASKS", "get_task"]
