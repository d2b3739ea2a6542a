"""The study's pretraining stage: MAE pretraining of each preset, then conversion to a backbone.

Each preset's stage lives in ``out_dir/pretrain/<preset>/`` (the pretraining ``run_dir``):

- ``checkpoints/step_<N>/``: the ZeRO-3 training checkpoints (docs/checkpoints.md); an
  interrupted pretraining resumes from the newest complete one (``checkpoint.resume=auto``);
- ``pretrained.json``: written last by rank 0 once pretraining reached its budget;
- ``backbone.safetensors`` + ``backbone.json``: ``rsfm convert mae-to-backbone`` of the final
  checkpoint;
- ``converted.json``: written once the conversion succeeded.

A record counts only while its ``budget`` and ``epochs`` match the study's, so changing the
budget re-opens the stage (pretraining then resumes from its newest checkpoint).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import ConfigError, load_config
from ..engine.config import PretrainConfig
from ..engine.launcher_guard import tied_child
from ..errors import RunError
from .config import StudyConfig, as_override, fill
from .grid import backbone_path, pretrain_dir
from .records import STUDY_FORMAT_VERSION, read_record, write_record

PRETRAINED = "pretrained.json"
CONVERTED = "converted.json"


def pretrain_presets(cfg: StudyConfig) -> List[str]:
    """The presets this study pretrains itself (with a ``pretrain`` stage: the grid's presets,
    then those that variants name, each once)."""
    if cfg.pretrain is None:
        return []
    extra = [v.preset for v in cfg.variants.values() if v.preset is not None]
    return list(dict.fromkeys([*cfg.presets, *extra]))


def _base_config(cfg: StudyConfig, preset: str, extra: List[str]) -> PretrainConfig:
    assert cfg.pretrain is not None
    path = cfg.pretrain.config.replace("{preset}", preset)
    overrides = [as_override(k, fill(v, cfg)) for k, v in cfg.pretrain.overrides.items()]
    overrides += [f"model.preset={preset}", *extra]
    try:
        return load_config(PretrainConfig, path, overrides)
    except ConfigError as e:
        raise ConfigError(f"pretrain of {preset}: {e}") from None


def flops_per_sample(cfg: StudyConfig, preset: str) -> int:
    """Model FLOPs of one MAE training sample of ``preset`` under its pretraining config."""
    return _base_config(cfg, preset, []).model.train_flops()


def pretrain_epochs(cfg: StudyConfig, preset: str) -> int:
    """Epochs of ``preset``'s pretraining under the study's budget rule (see StudyPretrain.budget)."""
    assert cfg.pretrain is not None
    if cfg.pretrain.budget == "steps":
        return cfg.pretrain.epochs
    reference = flops_per_sample(cfg, cfg.presets[-1])
    return max(1, round(cfg.pretrain.epochs * reference / flops_per_sample(cfg, preset)))


def pretrain_config(cfg: StudyConfig, preset: str) -> PretrainConfig:
    """The pretraining run config of ``preset`` (validated; errors name the preset)."""
    return _base_config(cfg, preset, [
        f"train.epochs={pretrain_epochs(cfg, preset)}", "train.max_steps=null",
        f"run_dir={pretrain_dir(cfg, preset)}", "checkpoint.resume=auto"])


def check_pretrain(cfg: StudyConfig) -> None:
    """Build every preset's pretraining config; with ``budget: steps`` the global batches must
    agree, or equal epochs would not be equal steps."""
    configs = {p: pretrain_config(cfg, p) for p in pretrain_presets(cfg)}
    batches = {p: c.train.global_batch_size for p, c in configs.items()}
    if cfg.pretrain is not None and cfg.pretrain.budget == "steps" and len(set(batches.values())) > 1:
        raise ConfigError(f"pretrain.budget: steps needs one global batch for every preset, got {batches}")


def _target(cfg: StudyConfig, preset: str) -> Dict[str, Any]:
    assert cfg.pretrain is not None
    return dict(budget=cfg.pretrain.budget, epochs=pretrain_epochs(cfg, preset))


def _matches(record, target: Dict[str, Any]) -> bool:
    return record is not None and all(record.get(k) == v for k, v in target.items())


def pretrain_status(cfg: StudyConfig, preset: str) -> str:
    """``converted`` (backbone ready), ``pretrained`` (to convert), ``partial`` (complete
    checkpoints exist: pretraining resumes) or ``pending``."""
    run_dir, target = pretrain_dir(cfg, preset), _target(cfg, preset)
    if _matches(read_record(run_dir / CONVERTED), target) and Path(backbone_path(cfg, preset)).is_file():
        return "converted"
    if _matches(read_record(run_dir / PRETRAINED), target):
        return "pretrained"
    if any(run_dir.glob("checkpoints/step_*/COMPLETE")):
        return "partial"
    return "pending"


def converted_steps(cfg: StudyConfig, preset: str) -> Optional[int]:
    """Pretraining steps of ``preset``'s converted backbone (its ``converted.json``); None when
    the study does not pretrain it or it is not converted."""
    if preset not in pretrain_presets(cfg):
        return None
    record = read_record(pretrain_dir(cfg, preset) / CONVERTED)
    return None if record is None else record.get("steps")


def run_pretrain(cfg: StudyConfig, preset: str, log=print) -> Dict[str, Any]:
    """Pretrain ``preset`` in the ranks of this job (resuming), unless done; rank 0 writes
    ``pretrained.json``. Must run in every rank (deepspeed launcher, srun, or one process)."""
    from ..engine.pretrain import pretrain

    run_dir = pretrain_dir(cfg, preset)
    done = read_record(run_dir / PRETRAINED)
    if pretrain_status(cfg, preset) in ("converted", "pretrained"):
        log(f"[study] pretraining of {preset} is complete: {run_dir / PRETRAINED}")
        return done
    run_cfg = pretrain_config(cfg, preset)
    t0 = time.perf_counter()
    summary = pretrain(run_cfg)
    import torch.distributed as dist

    flops = run_cfg.model.train_flops()
    record = dict(version=STUDY_FORMAT_VERSION, preset=preset, **_target(cfg, preset),
                  steps=summary["step"], samples_seen=summary["samples_seen"], flops_per_sample=flops,
                  train_flops=flops * summary["samples_seen"], last_loss=summary["last_loss"],
                  global_batch_size=run_cfg.train.global_batch_size,
                  seconds=round(time.perf_counter() - t0, 1), run_dir=str(run_dir))
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_record(run_dir / PRETRAINED, record)
    return record


def convert(cfg: StudyConfig, preset: str, log=print) -> Path:
    """Convert ``preset``'s final pretraining checkpoint to its backbone file, unless done.

    Runs ``rsfm convert mae-to-backbone`` in a process of its own (one process, any machine).

    Raises:
        ConfigError: pretraining has not finished.
        RunError: the conversion failed.
    """
    run_dir, out = pretrain_dir(cfg, preset), Path(backbone_path(cfg, preset))
    status = pretrain_status(cfg, preset)
    if status == "converted":
        log(f"[study] backbone of {preset} is converted: {out}")
        return out
    if status != "pretrained":
        raise ConfigError(f"pretrain of {preset}: pretraining has not finished ({status}); "
                          f"run `rsfm study --config C --pretrain {preset}` first")
    command = [sys.executable, "-m", "rsfm_ds.cli", "convert", "mae-to-backbone", str(run_dir / "checkpoints"),
               str(out)]
    log(f"[study] converting {preset}: rsfm convert mae-to-backbone {run_dir / 'checkpoints'} {out}")
    sys.stdout.flush()  # our line before the command's output
    code = subprocess.run(command, **tied_child()).returncode
    if code != 0:
        raise RunError(f"pretrain of {preset}: rsfm convert mae-to-backbone exited with {code}")
    pretrained = read_record(run_dir / PRETRAINED)
    write_record(run_dir / CONVERTED, dict(version=STUDY_FORMAT_VERSION, preset=preset, **_target(cfg, preset),
                                           steps=pretrained["steps"], backbone=str(out)))
    return out


__all__ = ["converted_steps", "pretrain_presets", "flops_per_sample", "pretrain_epochs", "pretrain_config",
           "check_pretrain",
           "pretrain_status", "run_pretrain", "convert"]
