"""Running the study: data preparation, one cell in a job's ranks, and the whole graph locally.

The stage graph, per preset: prepare data -> pretrain -> convert -> fine-tune cells -> collect.
Every stage decides from files whether it is finished (``prepared/*.json``, the pretraining
records, a cell's ``result.json``), skips finished work and resumes unfinished work (the
training stages from their newest complete checkpoint), so a re-run redoes only what is missing.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import ConfigError, check
from ..engine.launcher_guard import tied_child
from ..engine.tasks import get_task
from ..errors import RunError, UserError
from .config import StudyConfig, fill
from .costs import peak_memory, step_time
from .grid import Cell, cell_config, cells, check_cells, get_cell, preset_params, variant_overrides
from .pretraining import check_pretrain, convert, converted_steps, pretrain_dir, pretrain_presets, pretrain_status
from .records import STUDY_FORMAT_VERSION, write_record
from .results import collect, fmt


def _preparations(cfg: StudyConfig) -> List[Tuple[str, str, List[str]]]:
    """(record name, config field, commands) of every data preparation of the study."""
    out = [(d.name, f"datasets.{d.name}.prepare", d.prepare) for d in cfg.datasets if d.prepare]
    if cfg.pretrain is not None and cfg.pretrain.prepare:
        out.append(("pretrain", "pretrain.prepare", cfg.pretrain.prepare))
    return out


def prepare(cfg: StudyConfig, log=print) -> None:
    """Run each ``prepare`` list once (a record under out_dir/prepared marks it done).

    Each command runs as ``python -m rsfm_ds.cli ...`` in a process of its own, its output passed
    through.

    Raises:
        ConfigError: a command failed (its field and text are named).
    """
    for name, where, raw in _preparations(cfg):
        commands = [fill(c, cfg) for c in raw]
        record = Path(cfg.out_dir) / "prepared" / f"{name}.json"
        if record.is_file() and json.loads(record.read_text()).get("commands") == commands:
            log(f"[study] data of {name}: prepared already ({record})")
            continue
        for i, command in enumerate(commands):
            log(f"[study] data of {name} [{i + 1}/{len(commands)}]: {command}")
            sys.stdout.flush()  # our line before the command's output
            code = subprocess.run([sys.executable, "-m", "rsfm_ds.cli", *shlex.split(command)[1:]],
                                  **tied_child()).returncode
            if code != 0:
                raise ConfigError(f"{where}[{i}]: {command!r} exited with {code}")
        write_record(record, dict(commands=commands))


def check_study(cfg: StudyConfig) -> None:
    """Build every pretraining and cell config, so a bad study fails before anything runs."""
    check_pretrain(cfg)
    check_cells(cfg)


def cell_pending(cfg: StudyConfig, cell: Cell) -> bool:
    return not cell.result_path(cfg).is_file()


def pending_cells(cfg: StudyConfig, preset: Optional[str] = None, init: Optional[str] = None) -> List[Cell]:
    """The cells without a result, in index order; only those of ``preset`` (a cell's effective
    preset) and of ``init`` (``pretrained`` or ``scratch``) when given."""
    return [c for c in cells(cfg) if cell_pending(cfg, c) and preset in (None, c.preset) and init in (None, c.init)]


def pending_pretrained_presets(cfg: StudyConfig) -> List[str]:
    """Presets with pending pretrained cells, in cell order. On SLURM each gets an array of its
    own that waits for its own pretraining job only (launch/slurm/submit_study.sh)."""
    return list(dict.fromkeys(c.preset for c in pending_cells(cfg, init="pretrained")))


def pending_arrays(cfg: StudyConfig) -> List[Tuple[str, List[int]]]:
    """The SLURM arrays of the pending cells: ``(preset, indices)`` of each preset's pretrained
    cells (:func:`pending_pretrained_presets` order), then ``("scratch", indices)`` of every
    scratch cell; groups without a pending cell are left out."""
    pending = pending_cells(cfg)
    groups = [(p, [c.index for c in pending if c.pretrained and c.preset == p])
              for p in pending_pretrained_presets(cfg)]
    groups.append(("scratch", [c.index for c in pending if not c.pretrained]))
    return [(name, indices) for name, indices in groups if indices]


def pending_pretrain(cfg: StudyConfig) -> List[str]:
    """Presets whose backbone is not converted yet while some pretrained cell of theirs is pending."""
    waiting = {c.preset for c in pending_cells(cfg) if c.pretrained}
    return [p for p in pretrain_presets(cfg) if p in waiting and pretrain_status(cfg, p) != "converted"]


def run_cell(cfg: StudyConfig, index: int) -> Dict[str, Any]:
    """Fine-tune cell ``index`` in the ranks of this job; rank 0 writes its ``result.json``.

    Must run in every rank (under the deepspeed launcher, srun, or as one plain process).

    Raises:
        ConfigError: a pretrained cell whose preset's backbone is not converted yet.
    """
    from ..engine.finetune import finetune

    cell = get_cell(cfg, index)
    result_path = cell.result_path(cfg)
    if result_path.is_file():
        print(f"[study] cell {index} ({cell.name}) is complete: {result_path}")
        return json.loads(result_path.read_text())
    if cell.pretrained and cell.preset in pretrain_presets(cfg) and pretrain_status(cfg, cell.preset) != "converted":
        raise ConfigError(f"cell {index} ({cell.name}): the backbone of {cell.preset} is not converted yet "
                          f"({pretrain_status(cfg, cell.preset)}); run `rsfm study --pretrain {cell.preset}` "
                          f"and `--convert {cell.preset}` first")
    run_cfg = cell_config(cfg, cell)
    task = get_task(cell.dataset.task).build(run_cfg)
    t0 = time.perf_counter()
    summary = finetune(run_cfg, task)
    import torch.distributed as dist

    result = dict(
        version=STUDY_FORMAT_VERSION, study=cfg.name, cell=index, dataset=cell.dataset.name,
        task=cell.dataset.task, preset=cell.preset, params=preset_params(cell.preset), init=cell.init,
        backbone=run_cfg.backbone.pretrained,
        pretrain_steps=converted_steps(cfg, cell.preset) if cell.pretrained else None,
        fraction=cell.fraction, seed=cell.seed,
        metric=cell.dataset.metric_name, value=summary["metrics"].get(cell.dataset.metric_name),
        best=(summary["best"] or {}).get("score"), steps=summary["step"],
        seconds=round(time.perf_counter() - t0, 1), world_size=dist.get_world_size(),
        metrics=summary["metrics"], run_dir=str(cell.run_dir(cfg)),
        # The ablation axis and the costs its tables compare (rsfm_ds/study/costs.py).
        variant=cell.variant, variant_overrides=variant_overrides(cfg, cell),
        step_time_s=step_time(cell.run_dir(cfg)), **peak_memory())
    if dist.get_rank() == 0:
        write_record(result_path, result)  # atomic: a cell is complete only with its whole result
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_command(config_path: str, overrides: Sequence[str], stage: Sequence[str], nproc: int) -> List[str]:
    """``rsfm study --config C <stage...>`` in ``nproc`` fresh local ranks (deepspeed above 1)."""
    args = ["study", "--config", config_path, *stage, *overrides]
    if nproc == 1:
        return [sys.executable, "-m", "rsfm_ds.cli", *args]
    deepspeed = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    return [deepspeed, "--num_gpus", str(nproc), "--master_port", str(_free_port()), "--module", "rsfm_ds.cli",
            *args]


def cell_command(cfg: StudyConfig, config_path: str, overrides: Sequence[str], index: int) -> List[str]:
    """The command that runs one cell locally in ``cfg.nproc`` fresh ranks."""
    return stage_command(config_path, overrides, ["--cell", str(index)], cfg.nproc)


def _run_logged(command: List[str], log_path: Path, env: Dict[str, str]) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as out:
        return subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, **tied_child()).returncode


def _local_env(nproc: int, jobs: int = 1) -> Dict[str, str]:
    env = dict(os.environ)
    # ``jobs`` stages run at once: split this machine's cores over all their ranks, so that
    # concurrent stages do not oversubscribe the cores (the user's OMP_NUM_THREADS wins).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (nproc * jobs))))
    return env


def pretrain_local(cfg: StudyConfig, config_path: str, overrides: Sequence[str], preset: str,
                   log=print, jobs: int = 1) -> Optional[str]:
    """Pretrain (fresh ranks) and convert ``preset`` unless done; the failure, or None.

    ``jobs``: stages running at once on this machine (their ranks share its cores)."""
    assert cfg.pretrain is not None
    tag = f"[study] pretrain {preset}"
    status = pretrain_status(cfg, preset)
    if status == "converted":
        log(f"{tag}: backbone converted, skipping")
        return None
    if status != "pretrained":
        nproc = cfg.pretrain.nproc or cfg.nproc
        launch_log = pretrain_dir(cfg, preset) / "launch.log"
        log(f"{tag}: {'resuming' if status == 'partial' else 'running'} ({nproc} rank{'s' * (nproc > 1)}; "
            f"log {launch_log})")
        t0 = time.perf_counter()
        code = _run_logged(stage_command(config_path, overrides, ["--pretrain", preset], nproc), launch_log,
                           _local_env(nproc, jobs))
        if code != 0 or pretrain_status(cfg, preset) != "pretrained":
            return f"{tag}: FAILED (exit {code}) after {time.perf_counter() - t0:.0f} s; see {launch_log}"
        log(f"{tag}: done in {time.perf_counter() - t0:.0f} s")
    try:
        convert(cfg, preset, log)
    except (UserError, RunError) as e:
        return f"{tag}: conversion FAILED: {e}"
    return None


def _pretrain_logged(cfg: StudyConfig, config_path: str, overrides: Sequence[str], preset: str, log,
                     jobs: int) -> Optional[str]:
    """:func:`pretrain_local`, its failure logged as well as returned."""
    failure = pretrain_local(cfg, config_path, overrides, preset, log, jobs)
    if failure:
        log(failure)
    return failure


def _cell_local(cfg: StudyConfig, config_path: str, overrides: Sequence[str], cell: Cell, total: int,
                waits_for: Optional[Future], env: Dict[str, str], log) -> Optional[int]:
    """Run one pending cell in fresh processes; its index when it failed, else None.

    ``waits_for``: the pretraining of the cell's preset (its failure message, or None)."""
    tag = f"[study] cell {cell.index + 1}/{total} {cell.name}"
    if waits_for is not None and waits_for.result() is not None:
        log(f"{tag}: not run, the pretraining of {cell.preset} failed")
        return cell.index
    launch_log = cell.run_dir(cfg) / "launch.log"
    log(f"{tag}: running ({cfg.nproc} rank{'s' * (cfg.nproc > 1)}; log {launch_log})")
    t0 = time.perf_counter()
    code = _run_logged(cell_command(cfg, config_path, overrides, cell.index), launch_log, env)
    if code != 0 or not cell.result_path(cfg).is_file():
        log(f"{tag}: FAILED (exit {code}) after {time.perf_counter() - t0:.0f} s; see {launch_log}")
        return cell.index
    result = json.loads(cell.result_path(cfg).read_text())
    log(f"{tag}: {result['metric']} {fmt(result['value'])} after {result['steps']} steps "
        f"({time.perf_counter() - t0:.0f} s)")
    return None


def run_local(cfg: StudyConfig, config_path: str, overrides: Sequence[str] = (), log=print,
              jobs: Optional[int] = None) -> List[int]:
    """The whole graph on this machine: prepare, pretrain + convert each preset that a pending
    cell needs, every unfinished cell (each stage in fresh processes), collect. Returns the
    indices of failed cells (a pretraining failure fails its preset's pretrained cells).

    ``jobs`` (default: the study's ``jobs``) stages run at once, each with its share of the
    cores: every pretraining is started first, then the cells, those that need no pending
    pretraining (scratch cells, converted presets) ahead of those that wait for one. With one
    job the stages run one after another in grid order.

    A failure does not stop the study: the rest runs, the failure is reported with its log.

    Raises:
        ConfigError: ``jobs`` below 1, or a bad study (before anything runs).
    """
    jobs = cfg.jobs if jobs is None else jobs
    check(jobs >= 1, "jobs", f"must be >= 1, got {jobs}")
    check_study(cfg)
    prepare(cfg, log)
    grid = cells(cfg)
    env = _local_env(cfg.nproc, jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # The pool starts work in submission order: every pretraining has started before any
        # cell that waits for one, so a waiting cell holds its worker only while work progresses.
        pretraining = {p: pool.submit(_pretrain_logged, cfg, config_path, overrides, p, log, jobs)
                       for p in pending_pretrain(cfg)}
        order = grid if jobs == 1 else sorted(grid, key=lambda c: c.pretrained and c.preset in pretraining)
        outcomes = []
        for cell in order:
            if not cell_pending(cfg, cell):
                log(f"[study] cell {cell.index + 1}/{len(grid)} {cell.name}: complete, skipping")
                continue
            waits_for = pretraining.get(cell.preset) if cell.pretrained else None
            outcomes.append(pool.submit(_cell_local, cfg, config_path, overrides, cell, len(grid), waits_for,
                                        env, log))
        failed = sorted(i for i in (f.result() for f in outcomes) if i is not None)
    collect(cfg, log)
    return failed


__all__ = ["prepare", "check_study", "pending_cells", "pending_pretrained_presets", "pending_arrays", "pending_pretrain", "run_cell",
           "stage_command", "cell_command", "pretrain_local", "run_local"]
