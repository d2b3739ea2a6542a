"""The fine-tuning engine shared by detection and segmentation.

A task (``detection.py``, ``segmentation.py``) supplies the model (a ViTDet backbone under
``backbone.`` plus its heads; in training mode ``forward(batch)`` returns a loss dict with the total
under ``"loss"``), its datasets and collate functions, and its evaluation. This module owns
everything else, once: DeepSpeed (ZeRO-2 by default up to 700M backbone parameters, ZeRO-3 above,
same code), pretrained-weight loading (also into ZeRO-3 partitions), layer-wise lr decay, epoch- or
iteration-based schedules with warm-up, evaluation every N units with best-checkpoint keeping,
TensorBoard / progress / log lines, checkpoints and exact resumption.

Exactness of resumption: the data order is a function of (seed, epoch), the position is stored,
and each sample's augmentation draws from a seed that is a function of (seed, epoch, position in
the epoch), not of which worker process happens to load it.
"""
from __future__ import annotations

import abc
import json
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError, dump_yaml, to_dict
from ..data.processes import init_worker, process_context
from ..models.presets import count_trainable, get_preset
from . import checkpointing
from .config import FinetuneConfig
from .deepspeed_setup import (build_model, device_for, init_distributed, initialize, load_ds_config,
                              model_dtype, peak_memory_bytes, reconcile_ds_config)
from .metrics_log import TrainLogger
from .param_groups import build_param_groups
from .sampler import DistributedBatchSampler, PaddedDataset
from .schedule import apply_lr, warmup_cosine, warmup_multistep, warmup_poly

ZERO3_ABOVE_PARAMS = 700e6


class FinetuneTask(abc.ABC):
    """What a downstream task supplies to :func:`finetune`."""

    #: name of the metric that selects the best checkpoint (higher is better)
    primary_metric: str = "score"

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The model: ``backbone`` (ViTDet) plus heads; ``init_module(m)`` for ZeRO-3 builds."""

    @abc.abstractmethod
    def train_dataset(self) -> Dataset:
        """Training samples (augmentations may use Python / NumPy / torch global RNGs: the engine
        seeds them per sample)."""

    @abc.abstractmethod
    def eval_dataset(self) -> Dataset:
        """Evaluation samples, in a fixed order."""

    @abc.abstractmethod
    def collate(self, samples: List[Any]) -> Any:
        """Training samples -> batch."""

    @abc.abstractmethod
    def to_device(self, batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
        """Move a batch to the device; images in the model's dtype."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, batches: Iterator[Tuple[Any, List[bool]]],
                 device: torch.device, dtype: torch.dtype, out_dir: Path) -> Dict[str, float]:
        """Run inference on this rank's batches (``(batch, is_padding)`` pairs) and return the
        dataset-level metrics, identical on every rank (gather partial results across ranks).
        Every rank receives the same number of batches, as ZeRO-3 forward passes require."""

    def eval_collate(self, samples: List[Tuple[Any, bool]]) -> Tuple[Any, List[bool]]:
        return self.collate([s for s, _ in samples]), [pad for _, pad in samples]


class _PerSampleSeed(Dataset):
    """Indexes are ``(index, seed)``: each sample's augmentation draws from its own seeded RNGs."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        with _seeded(seed):
            return self.base[index]


@contextmanager
def _seeded(seed: int):
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class _SeededBatches(torch.utils.data.Sampler):
    """Wraps :class:`DistributedBatchSampler`, pairing each index with its augmentation seed."""

    def __init__(self, inner: DistributedBatchSampler, seed: int):
        self.inner, self.seed = inner, seed

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        epoch, start = self.inner.epoch, self.inner.start_batch
        for b, batch in enumerate(self.inner, start=start):
            base = (self.seed * 1_000_003 + epoch) * 1_000_003 + b * 4096 + self.inner.rank * 64
            yield [(index, base + i) for i, index in enumerate(batch)]


def resolve_zero_stage(cfg: FinetuneConfig, ds_config: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Set the ZeRO stage: the run config's, else the DeepSpeed config's, else by model size."""
    zero = ds_config.setdefault("zero_optimization", {})
    have = zero.get("stage")
    want = cfg.train.zero_stage
    if want is not None and have is not None and have != want:
        raise ConfigError(f"{source}: zero_optimization.stage is {have} but train.zero_stage is {want}")
    if want is None and have is None:
        with torch.device("meta"):
            from ..models.presets import create_vit

            params = count_trainable(create_vit(cfg.backbone.preset))
        want = 3 if params > ZERO3_ABOVE_PARAMS else 2
    zero["stage"] = have if want is None else want
    return ds_config


def lr_at(cfg: FinetuneConfig, step: int, total_steps: int, steps_per_unit: int) -> float:
    """The learning rate at optimizer step ``step`` (counting from 0)."""
    s, peak = cfg.schedule, cfg.optim.lr
    if s.type == "multistep":
        return warmup_multistep(step, s.warmup, peak, [m * steps_per_unit for m in s.milestones],
                                gamma=s.gamma, warmup_ratio=s.warmup_ratio)
    if s.type == "poly":
        return warmup_poly(step, total_steps, s.warmup, peak, power=s.power, floor=s.min_lr,
                           warmup_ratio=s.warmup_ratio)
    return warmup_cosine(step, total_steps, s.warmup, peak, floor=s.min_lr)


def load_pretrained(model: nn.Module, path: str) -> str:
    """Load backbone weights into ``model.backbone`` (plain or ZeRO-3 partitioned); returns a
    one-line report."""
    from ..checkpoint import load_backbone

    report = load_backbone(model, path, prefix="backbone.")
    step = report.metadata.get("step")
    return (f"pretrained {path}{f' (step {step})' if step is not None else ''}: {len(report.loaded)} "
            f"tensors loaded, {len(report.missing_keys)} new, {len(report.dropped_keys)} dropped by design")


def finetune(cfg: FinetuneConfig, task: FinetuneTask) -> Dict[str, Any]:
    """Fine-tune ``task`` as configured; returns a summary with the last and best metrics.

    Must run in every rank of the job.
    """
    rank, local_rank, world = init_distributed()
    device = device_for(local_rank)
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    tcfg = cfg.train

    ds_config = reconcile_ds_config(
        load_ds_config(tcfg.ds_config), micro_batch_size=tcfg.micro_batch_size,
        global_batch_size=tcfg.global_batch_size, world_size=world, precision=tcfg.precision,
        clip_grad=cfg.optim.clip_grad, source=tcfg.ds_config)
    ds_config = resolve_zero_stage(cfg, ds_config, tcfg.ds_config)
    stage = ds_config["zero_optimization"]["stage"]
    accum = ds_config["gradient_accumulation_steps"]

    _seed_all(cfg.seed)
    model = build_model(task.build_model, ds_config, cfg.backbone.zero_init)
    load_note = "from scratch"
    if cfg.backbone.pretrained:
        load_note = load_pretrained(model, cfg.backbone.pretrained)
    model.backbone.set_grad_checkpointing(cfg.backbone.grad_checkpointing,
                                          use_reentrant=cfg.backbone.checkpoint_use_reentrant)
    groups = build_param_groups(model, cfg.optim.weight_decay, layer_decay=cfg.optim.layer_decay,
                                num_layers=get_preset(cfg.backbone.preset).depth, backbone_prefix="backbone.")
    engine, optimizer = initialize(model, groups, ds_config, cfg.optim)
    _seed_all(cfg.seed + 1 + rank)

    base_train_set = task.train_dataset()
    train_set = _PerSampleSeed(base_train_set)
    sampler = DistributedBatchSampler(len(train_set), tcfg.micro_batch_size, rank, world, seed=cfg.seed)
    micro_per_epoch = sampler.batches_per_epoch()
    steps_per_epoch = max(1, micro_per_epoch // accum)
    steps_per_unit = steps_per_epoch if cfg.schedule.by == "epoch" else 1
    total_steps = cfg.schedule.length * steps_per_unit
    stop_step = min(total_steps, tcfg.max_steps or total_steps)
    eval_every = cfg.eval.every * steps_per_unit

    step, epoch, micro_in_epoch = 0, 0, 0
    best: Optional[Dict[str, Any]] = None
    resume_from = checkpointing.resolve_resume(cfg.checkpoint.resume, ckpt_dir)
    if resume_from is not None:
        state = checkpointing.load(engine, resume_from)
        step, epoch, micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        best = state.get("best")
        checkpointing.set_rng_state(state["rng"])

    logger = TrainLogger(run_dir, rank, stop_step, step, tensorboard=cfg.log.tensorboard, progress=cfg.log.progress)
    if rank == 0:
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    logger.line(f"fine-tuning {type(task).__name__}: backbone {cfg.backbone.preset} ({load_note}), world "
                f"{world}, ZeRO stage {stage}, {tcfg.precision}, global batch {tcfg.global_batch_size} = "
                f"{tcfg.micro_batch_size} x {accum} x {world}, {steps_per_epoch} steps/epoch, {stop_step} "
                f"steps" + (f", resumed from {resume_from} (step {step})" if resume_from else ""))

    dtype = model_dtype(tcfg.precision)
    micro_limit = steps_per_epoch * accum
    sums: Dict[str, torch.Tensor] = {}
    window = dict(t0=time.perf_counter(), steps=0, samples=0)
    metrics: Dict[str, float] = {}

    def client_state() -> Dict[str, Any]:
        return dict(step=step, epoch=epoch, micro_in_epoch=micro_in_epoch, best=best,
                    rng=checkpointing.rng_state(), config=to_dict(cfg), world_size=world,
                    preset=cfg.backbone.preset)

    def run_eval() -> Dict[str, float]:
        nonlocal best
        engine.module.eval()
        with torch.no_grad():
            result = task.evaluate(engine.module, _eval_batches(task, cfg, rank, world), device, dtype,
                                   run_dir / "eval" / f"step_{step:08d}")
        engine.module.train()
        logger.scalars(step, {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        if rank == 0:
            (run_dir / "eval").mkdir(parents=True, exist_ok=True)
            (run_dir / "eval" / f"step_{step:08d}.json").write_text(json.dumps(dict(step=step, **result), indent=2))
        score = result.get(task.primary_metric)
        if cfg.eval.keep_best and score is not None and (best is None or score > best["score"]):
            best = dict(step=step, score=score, metric=task.primary_metric)
            _save_best(engine, ckpt_dir, step, client_state(), best)
        return result

    try:
        while step < stop_step:
            sampler.set_epoch(epoch, micro_in_epoch)
            if hasattr(base_train_set, "set_epoch"):  # datasets that seed augmentation per epoch
                base_train_set.set_epoch(epoch)
            loader = DataLoader(train_set, batch_sampler=_SeededBatches(sampler, cfg.seed),
                                collate_fn=task.collate, **_worker_options(tcfg.num_workers, cfg.seed, epoch, rank))
            for batch in loader:
                if micro_in_epoch % accum == 0:
                    apply_lr(optimizer, lr_at(cfg, step, total_steps, steps_per_unit))
                losses = engine(task.to_device(batch, device, dtype))
                engine.backward(losses["loss"])
                engine.step()
                micro_in_epoch += 1
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
                window["samples"] += tcfg.micro_batch_size * world
                if micro_in_epoch % accum:
                    continue
                step += 1
                window["steps"] += 1
                logger.step()
                epoch_done = micro_in_epoch == micro_limit
                if epoch_done:
                    epoch, micro_in_epoch = epoch + 1, 0
                if step % cfg.log.every_steps == 0 or step == stop_step:
                    _log_losses(logger, optimizer, step, sums, window, accum, world, device)
                if step % eval_every == 0 or step == stop_step:
                    metrics = run_eval()
                if step % cfg.checkpoint.every_steps == 0 or step == stop_step:
                    checkpointing.save(engine, ckpt_dir, step, client_state(), cfg.checkpoint.keep_last)
                if step == stop_step or epoch_done:
                    break
        logger.line(f"done: {step} steps; last {task.primary_metric} {metrics.get(task.primary_metric)}; best "
                    f"{best}")
    finally:
        logger.close()
    return dict(step=step, metrics=metrics, best=best, run_dir=str(run_dir))


def _save_best(engine, ckpt_dir: Path, step: int, client_state: Dict[str, Any], best: Dict[str, Any]) -> None:
    """Save the best model so far as ``checkpoints/best_step_XXXXXXXX`` (complete-marked, with
    ``best.json``), then delete the previous best. Resumption never picks these up by itself."""
    tag = f"best_{checkpointing.tag_for(step)}"
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    dist.barrier()
    if dist.get_rank() == 0:
        (ckpt_dir / tag / "best.json").write_text(json.dumps(best, indent=2))
        (ckpt_dir / tag / checkpointing.COMPLETE_MARKER).write_text(f"{step}\n")
        for old in ckpt_dir.glob("best_step_*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _eval_batches(task: FinetuneTask, cfg: FinetuneConfig, rank: int, world: int):
    data = PaddedDataset(task.eval_dataset())
    sampler = DistributedBatchSampler(len(data), cfg.eval.batch_size, rank, world, shuffle=False,
                                      drop_last=False)
    return iter(DataLoader(data, batch_sampler=sampler, collate_fn=task.eval_collate,
                           **_worker_options(cfg.train.num_workers, cfg.seed, -1, rank)))


def _worker_options(num_workers: int, seed: int, epoch: int, rank: int) -> Dict[str, Any]:
    """DataLoader worker settings. Workers are forked from a clean server process, since forking a
    training process that has run OpenCV threads deadlocks (rsfm_ds/data/processes.py). The
    loader's own generator seeds its workers, so creating a loader (an evaluation, a resume)
    draws nothing from the global RNG that dropout and drop path use: resumption stays exact."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch + 1) * 4099 + rank)
    if num_workers == 0:
        return dict(num_workers=0, generator=generator)
    return dict(num_workers=num_workers, multiprocessing_context=process_context(),
                worker_init_fn=init_worker, generator=generator)


def _log_losses(logger: TrainLogger, optimizer, step: int, sums: Dict[str, torch.Tensor],
                window: Dict[str, float], accum: int, world: int, device: torch.device) -> None:
    keys = sorted(sums)
    stacked = torch.stack([sums[k] for k in keys]).to(torch.float64)
    dist.all_reduce(stacked)
    count = window["steps"] * accum * world
    values = {f"train/{k}": v / count for k, v in zip(keys, stacked.tolist())}
    if not all(np.isfinite(v) for v in values.values()):
        raise FloatingPointError(f"non-finite training loss at step {step}: {values}; stopping "
                                 f"without saving")
    elapsed = time.perf_counter() - window["t0"]
    values.update({"train/lr": optimizer.param_groups[-1]["lr"],
                   "perf/images_per_s": window["samples"] / elapsed,
                   "perf/step_time_s": elapsed / max(1, window["steps"]),
                   "perf/peak_memory_gb": peak_memory_bytes(device) / 2 ** 30})
    logger.scalars(step, values)
    sums.clear()
    window.update(t0=time.perf_counter(), steps=0, samples=0)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
