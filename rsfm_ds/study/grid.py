"""The grid of fine-tuning cells and each cell's run config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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
    variant: Optional[str] = None
    """Name of the cell's variant (``StudyConfig.variants``); None in a study without variants.
    ``preset`` is then already the variant's preset when the variant names one."""

    @property
    def name(self) -> str:
        variant = f"/{self.variant}" if self.variant is not None else ""
        return f"{self.dataset.name}/{self.preset}{variant}/{self.init}/frac_{self.fraction:g}/seed_{self.seed}"

    @property
    def pretrained(self) -> bool:
        return self.init == "pretrained"

    def run_dir(self, cfg: StudyConfig) -> Path:
        return Path(cfg.out_dir) / "cells" / self.name

    def result_path(self, cfg: StudyConfig) -> Path:
        return self.run_dir(cfg) / "result.json"


def _variant_axis(cfg: StudyConfig, dataset: StudyDataset, preset: str) -> List[Tuple[Optional[str], str]]:
    """(variant name, effective preset) of ``dataset``'s cells of grid preset ``preset``; one
    ``(None, preset)`` without variants."""
    if not cfg.variants:
        return [(None, preset)]
    return [(name, v.preset or preset) for name, v in cfg.variants.items()
            if not v.datasets or dataset.name in v.datasets]


def cells(cfg: StudyConfig) -> List[Cell]:
    """The grid in index order: datasets, presets, variants (as declared; those restricted to
    other datasets skipped), inits (pretrained first), fractions, seeds. Without variants the
    grid, its indices and names are those of a study that predates them."""
    grid = [(d, vp, i, f, s, v) for d in cfg.datasets for p in cfg.presets for v, vp in _variant_axis(cfg, d, p)
            for i in cfg.inits for f in cfg.train_fractions for s in cfg.seeds]
    return [Cell(n, *key) for n, key in enumerate(grid)]


def variant_overrides(cfg: StudyConfig, cell: Cell) -> Dict[str, Any]:
    """The ``section.field: value`` overrides of ``cell``'s variant (``{out_dir}`` filled); empty
    without one."""
    if cell.variant is None:
        return {}
    return {k: fill(v, cfg) for k, v in cfg.variants[cell.variant].overrides.items()}


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


def variant_rows(cfg: StudyConfig, dataset: str) -> List[Tuple[str, str, str]]:
    """(grid preset, variant, the preset its cells run) of ``dataset``, in grid order (empty
    without variants)."""
    dataset_cfg = next(d for d in cfg.datasets if d.name == dataset)
    return [(p, v, vp) for p in cfg.presets for v, vp in _variant_axis(cfg, dataset_cfg, p) if v is not None]


def cell_overrides(cfg: StudyConfig, cell: Cell) -> List[str]:
    """Overrides that turn the dataset's run config into this cell's, in precedence order."""
    out = [as_override(k, fill(v, cfg)) for k, v in cfg.overrides.items()]
    out += [as_override(k, fill(v, cfg)) for k, v in cell.dataset.overrides.items()]
    out += [as_override(k, v) for k, v in variant_overrides(cfg, cell).items()]
    subset_seed = cell.seed if cfg.subset_seed is None else cfg.subset_seed
    out += [f"backbone.preset={cell.preset}", f"data.fraction={cell.fraction}",
            f"data.fraction_seed={subset_seed}", f"seed={cell.seed}", f"run_dir={cell.run_dir(cfg)}",
            "checkpoint.resume=auto"]
    # A scratch cell says so explicitly: a dataset config that names weights must not leak in.
    weights = backbone_path(cfg, cell.preset) if cell.pretrained else None
    out.append(as_override("backbone.pretrained", weights))
    return out


def _variant_fault(message: str, path: str, keys: Dict[str, Any]) -> Optional[Tuple[str, str, str]]:
    """(key, field, detail) when a config error is a variant override's fault, else None.

    :func:`rsfm_ds.config.load_config` reports an override's fault as ``override <field>: ...``
    (``<field>`` the key or a field below it) and an unknown section as ``<path>: <section>: ...``.
    """
    for prefix in ("override ", f"{path}: "):
        if message.startswith(prefix) and ":" in message[len(prefix):]:
            field, detail = message[len(prefix):].split(":", 1)
            key = next((k for k in keys if field == k or k.startswith(field + ".")
                        or field.startswith((k + ".", k + "["))), None)
            return None if key is None else (key, field, detail.strip())
    return None


def cell_config(cfg: StudyConfig, cell: Cell):
    """The fine-tuning run config of ``cell`` (validated).

    Raises:
        ConfigError: ``variants.<name>.overrides: <key>: ...`` when a variant's override is at
            fault (an unknown key or a bad value), else ``cell <i> (<name>): ...``.
    """
    path = cell.dataset.config.replace("{preset}", cell.preset)
    try:
        return get_task(cell.dataset.task).load_config(path, cell_overrides(cfg, cell))
    except ConfigError as e:
        fault = _variant_fault(str(e), path, variant_overrides(cfg, cell))
        if fault is not None:
            key, field, detail = fault
            if field == key and detail.startswith("unknown field"):
                detail = f"unknown key {key}{detail[len('unknown field'):]}"
            elif detail.startswith("unknown field"):
                detail = f"unknown key {key} ({field}: {detail})"
            else:
                detail = f"{field}: {detail}"
            raise ConfigError(f"variants.{cell.variant}.overrides: {detail} (dataset {cell.dataset.name})") from None
        raise ConfigError(f"cell {cell.index} ({cell.name}): {e}") from None


def check_cells(cfg: StudyConfig) -> None:
    """Build every cell's run config, so a bad grid fails before any cell runs."""
    for cell in cells(cfg):
        cell_config(cfg, cell)


__all__ = ["Cell", "cells", "get_cell", "pretrain_dir", "backbone_path", "preset_params", "cell_overrides",
           "variant_overrides", "variant_rows", "cell_config", "check_cells"]
