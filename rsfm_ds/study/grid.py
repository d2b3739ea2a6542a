"""The grid of fine-tuning cells and each cell's run config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..config import ConfigError
from ..engine.tasks import get_task
from .config import StudyConfig, StudyDataset, as_override, fill


@dataclass(frozen=True)
class Cell:
    """One fine-tuning run of the grid."""

    index: int
    """Position in :func:`cells` (the SLURM array task id)."""
    dataset: StudyDataset
    """The downstream dataset."""
    preset: str
    """The backbone preset."""
    init: str
    """``pretrained`` (the preset's own backbone weights) or ``scratch``."""
    fraction: float
    """Fraction of the training set."""
    seed: int
    """Seed of the run (and of the subset when the study's ``subset_seed`` is null)."""

    @property
    def name(self) -> str:
        return f"{self.dataset.name}/{self.preset}/{self.init}/frac_{self.fraction:g}/seed_{self.seed}"

    @property
    def pretrained(self) -> bool:
        return self.init == "pretrained"

    def run_dir(self, cfg: StudyConfig) -> Path:
        return Path(cfg.out_dir) / "cells" / self.name

    def result_path(self, cfg: StudyConfig) -> Path:
        return self.run_dir(cfg) / "result.json"


def cells(cfg: StudyConfig) -> List[Cell]:
    """The grid in index order: datasets, presets, inits (pretrained first), fractions, seeds."""
    grid = [(d, p, i, f, s) for d in cfg.datasets for p in cfg.presets for i in cfg.inits
            for f in cfg.train_fractions for s in cfg.seeds]
    return [Cell(n, *key) for n, key in enumerate(grid)]


def get_cell(cfg: StudyConfig, index: int) -> Cell:
    grid = cells(cfg)
    if not 0 <= index < len(grid):
        raise ConfigError(f"--cell {index}: the study {cfg.name!r} has cells 0..{len(grid) - 1}")
    return grid[index]


def pretrain_dir(cfg: StudyConfig, preset: str) -> Path:
    """The run directory of ``preset``'s pretraining (checkpoints, logs, the converted backbone)."""
    return Path(cfg.out_dir) / "pretrain" / preset


def backbone_path(cfg: StudyConfig, preset: str) -> Optional[str]:
    """The backbone weights the pretrained cells of ``preset`` load; None when there are none."""
    if cfg.pretrain is not None:
        return str(pretrain_dir(cfg, preset) / "backbone.safetensors")
    if cfg.pretrained is not None:
        return cfg.pretrained.replace("{preset}", preset)
    return None


def preset_params(preset: str) -> int:
    """Trainable backbone parameters of ``preset`` (built on the meta device: no memory)."""
    import torch

    from ..models.presets import count_trainable, create_vit

    with torch.device("meta"):
        return count_trainable(create_vit(preset))


def cell_overrides(cfg: StudyConfig, cell: Cell) -> List[str]:
    """Overrides that turn the dataset's run config into this cell's, in precedence order."""
    out = [as_override(k, fill(v, cfg)) for k, v in cfg.overrides.items()]
    out += [as_override(k, fill(v, cfg)) for k, v in cell.dataset.overrides.items()]
    subset_seed = cell.seed if cfg.subset_seed is None else cfg.subset_seed
    out += [f"backbone.preset={cell.preset}", f"data.fraction={cell.fraction}",
            f"data.fraction_seed={subset_seed}", f"seed={cell.seed}", f"run_dir={cell.run_dir(cfg)}",
            "checkpoint.resume=auto"]
    # A scratch cell says so explicitly: a dataset config that names weights must not leak in.
    weights = backbone_path(cfg, cell.preset) if cell.pretrained else None
    out.append(as_override("backbone.pretrained", weights))
    return out


def cell_config(cfg: StudyConfig, cell: Cell):
    """The fine-tuning run config of ``cell`` (validated; errors name the cell)."""
    path = cell.dataset.config.replace("{preset}", cell.preset)
    try:
        return get_task(cell.dataset.task).load_config(path, cell_overrides(cfg, cell))
    except ConfigError as e:
        raise ConfigError(f"cell {cell.index} ({cell.name}): {e}") from None


def check_cells(cfg: StudyConfig) -> None:
    """Build every cell's run config, so a bad grid fails before any cell runs."""
    for cell in cells(cfg):
        cell_config(cfg, cell)


__all__ = ["Cell", "cells", "get_cell", "pretrain_dir", "backbone_path", "preset_params", "cell_overrides",
           "cell_config",
           "check_cells"]
