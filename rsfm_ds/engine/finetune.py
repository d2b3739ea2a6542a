"""The fine-tuning engine shared by every downstream task (:mod:`rsfm_ds.engine.tasks`).

A :class:`~rsfm_ds.engine.task.FinetuneTask` supplies the model, its datasets and its evaluation;
this module owns everything else, once: DeepSpeed (ZeRO-2 by default up to 700M backbone
parameters, ZeRO-3 above, same code), pretrained-weight loading (also into ZeRO-3 partitions),
layer-wise lr decay, epoch- or iteration-based schedules with warm-up, evaluation every N units
with best-checkpoint keeping, TensorBoard / progress / log lines, checkpoints and exact resumption
(:mod:`rsfm_ds.engine.finetune_data` says how the data order and augmentation are made
reproducible).
"""
from __future__ import annotations

import json
from typing import Any, Dict

import torch

from ..config import ConfigError, to_dict
from ..models.presets import count_trainable, create_vit, get_preset
from .checkpointing import CheckpointManager, resume_ds_config
from .config import FinetuneConfig
from .deepspeed_setup import build_model, initialize, model_dtype, peak_memory_bytes
from .finetune_data import eval_loader, train_loader
from .loop import (LossMeter, Run, ThroughputWindow, describe_run, open_log, optimizer_steps, reports_lost_ranks,
                   restore, start_run)
from .metrics_log import TrainLogger
from .param_groups import build_param_groups
from .sampler import DistributedBatchSampler
from .schedule import apply_lr, warmup_cosine, warmup_multistep, warmup_poly
from .state import TrainState, rng_state, seed_all
from .task import FinetuneTask

ZERO3_ABOVE_PARAMS = 700e6


@reports_lost_ranks
def finetune(cfg: FinetuneConfig, task: FinetuneTask) -> Dict[str, Any]:
    """Fine-tune ``task`` as configured; returns a summary with the last and best metrics.

    Must run in every rank of the job.
    """
    run = start_run(cfg.run_dir, cfg.train, cfg.optim.clip_grad)
    tcfg = cfg.train
    resolve_zero_stage(cfg, run.ds_config, tcfg.ds_config)
    train_set, eval_set = task.train_dataset(), task.eval_dataset()  # data problems fail before any model
    sampler = DistributedBatchSampler(len(train_set), tcfg.micro_batch_size, run.rank, run.world, seed=cfg.seed,
                                      min_batches=run.accum)
    steps_per_epoch = sampler.batches_per_epoch() // run.accum
    steps_per_unit = steps_per_epoch if cfg.schedule.by == "epoch" else 1
    total_steps = cfg.schedule.length * steps_per_unit
    stop_step = min(total_steps, tcfg.max_steps or total_steps)
    ckpt = CheckpointManager.for_run(run.run_dir, cfg.checkpoint)
    resume_from = ckpt.resume_path()

    seed_all(cfg.seed)  # identical initialisation on every rank
    engine, optimizer, load_note = _build_engine(cfg, task, run, resume_from)
    seed_all(cfg.seed + 1 + run.rank)  # per-rank streams for dropout and drop path from here on
    state, resumed = restore(ckpt, engine, resume_from, run, cfg.seed, tcfg.global_batch_size, steps_per_epoch,
                             config=cfg)
    logger = open_log(run, cfg, stop_step, state, ckpt)
    logger.line(f"fine-tuning {type(task).__name__}: backbone {cfg.backbone.preset} ({load_note}), "
                f"{describe_run(run, tcfg, run.ds_config, steps_per_epoch, stop_step)}{resumed}")
    logger.line(task.describe_inputs())

    dtype, losses, window = model_dtype(tcfg.precision), LossMeter(run.device), ThroughputWindow()
    metrics: Dict[str, float] = {}

    def client_state() -> Dict[str, Any]:
        return state.client_state(rng=rng_state(), config=to_dict(cfg), world_size=run.world,
                                  preset=cfg.backbone.preset)

    def micro_step(batch, starts_step: bool) -> None:
        if starts_step:
            apply_lr(optimizer, lr_at(cfg, state.step, total_steps, steps_per_unit))
        out = engine(task.to_device(batch, run.device, dtype))
        engine.backward(out["loss"])
        engine.step()
        losses.add(out, state.step)
        window.samples += tcfg.micro_batch_size * run.world
        state.samples_seen += tcfg.micro_batch_size * run.world

    def epoch_batches(epoch: int, start: int):
        return window.timed(train_loader(task, train_set, sampler, epoch, start, tcfg.num_workers, cfg.seed,
                                         run.rank))

    try:
        for _ in optimizer_steps(state, epoch_batches, micro_step, accum=run.accum, steps_per_epoch=steps_per_epoch,
                                 stop_step=stop_step):
            window.steps += 1
            logger.step()
            if state.step % cfg.log.every_steps == 0 or state.step == stop_step:
                losses.check_finite(str(ckpt.ckpt_dir))
                _log(logger, optimizer, state, losses, window, run)
            if state.step % (cfg.eval.every * steps_per_unit) == 0 or state.step == stop_step:
                metrics = _evaluate(task, engine, eval_set, cfg, run, dtype, state, logger)
                if _improves(cfg, state, metrics.get(task.primary_metric), task.primary_metric):
                    ckpt.save_best(engine, state.step, client_state(), state.best)
            if ckpt.due(state.step, stop_step):
                losses.check_finite(str(ckpt.ckpt_dir))
                ckpt.save(engine, state.step, client_state())
        logger.line(f"done: {state.step} steps; last {task.primary_metric} {metrics.get(task.primary_metric)}; "
                    f"best {state.best}")
    finally:
        logger.close()
    return dict(step=state.step, metrics=metrics, best=state.best, run_dir=str(run.run_dir))


def _build_engine(cfg: FinetuneConfig, task: FinetuneTask, run: Run, resume_from):
    """The task's model (pretrained weights loaded, checkpointing set, layer-decay groups) in a
    DeepSpeed engine; ``(engine, optimizer, a note on the weights)``."""
    model = build_model(task.build_model, run.ds_config, cfg.backbone.zero_init)
    load_note = (load_pretrained(model, cfg.backbone.pretrained, cfg.backbone.patch_embed_adapt)
                 if cfg.backbone.pretrained else "from scratch")
    model.backbone.set_grad_checkpointing(cfg.backbone.grad_checkpointing,
                                          use_reentrant=cfg.backbone.checkpoint_use_reentrant)
    groups = build_param_groups(model, cfg.optim.weight_decay, layer_decay=cfg.optim.layer_decay,
                                num_layers=get_preset(cfg.backbone.preset).depth, backbone_prefix="backbone.")
    ds_config = resume_ds_config(run.ds_config, resume_from, run.world)  # before initialize: load_universal
    engine, optimizer = initialize(model, groups, ds_config, cfg.optim)
    return engine, optimizer, load_note


def _improves(cfg: FinetuneConfig, state: TrainState, score, metric: str) -> bool:
    """Whether ``score`` is the best evaluation so far; if so ``state.best`` records it."""
    if not cfg.eval.keep_best or score is None or (state.best is not None and score <= state.best["score"]):
        return False
    state.best = dict(step=state.step, score=score, metric=metric)
    return True


def resolve_zero_stage(cfg: FinetuneConfig, ds_config: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Set the ZeRO stage: the run config's, else the DeepSpeed config's, else by model size."""
    zero = ds_config.setdefault("zero_optimization", {})
    have = zero.get("stage")
    want = cfg.train.zero_stage
    if want is not None and have is not None and have != want:
        raise ConfigError(f"{source}: zero_optimization.stage is {have} but train.zero_stage is {want}")
    if want is None and have is None:
        with torch.device("meta"):
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


def load_pretrained(model: torch.nn.Module, path: str, patch_embed_adapt: str = "timm") -> str:
    """Load backbone weights into ``model.backbone`` (plain or ZeRO-3 partitioned); returns a
    one-line report (with any patch-embedding adaptation)."""
    from ..checkpoint.loading import load_backbone

    report = load_backbone(model, path, prefix="backbone.", patch_embed_adapt=patch_embed_adapt)
    step = report.metadata.get("step")
    return (f"pretrained {path}{f' (step {step})' if step is not None else ''}: {len(report.loaded)} "
            f"tensors loaded, {len(report.missing_keys)} new, {len(report.dropped_keys)} dropped by design"
            + "".join(f"; {note}" for note in report.notes))


def _evaluate(task: FinetuneTask, engine, eval_set, cfg: FinetuneConfig, run: Run, dtype: torch.dtype,
              state: TrainState, logger: TrainLogger) -> Dict[str, float]:
    """Evaluate on every rank; log the metrics and write ``eval/step_<N>.json`` (rank 0)."""
    out_dir = run.run_dir / "eval" / f"step_{state.step:08d}"
    engine.module.eval()
    with torch.no_grad():
        batches = iter(eval_loader(task, eval_set, cfg.eval.batch_size, cfg.train.num_workers, cfg.seed, run.rank,
                                   run.world))
        result = task.evaluate(engine.module, batches, run.device, dtype, out_dir)
    engine.module.train()
    logger.scalars(state.step, {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    for note in result.get("notes", []):
        logger.line(f"eval: {note}")
    if run.rank == 0:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        record = dict(step=state.step, protocol=task.evaluation_protocol(), **result)
        (out_dir.parent / f"{out_dir.name}.json").write_text(json.dumps(record, indent=2))
    return result


def _log(logger: TrainLogger, optimizer, state: TrainState, losses: LossMeter, window: ThroughputWindow,
         run: Run) -> None:
    values = {f"train/{k}": v for k, v in losses.means(window.steps * run.accum * run.world).items()}
    values.update({"train/lr": optimizer.param_groups[-1]["lr"], **window.rates(),
                   "perf/peak_memory_gb": peak_memory_bytes(run.device) / 2 ** 30})
    logger.scalars(state.step, values)


__all__ = ["finetune", "resolve_zero_stage", "lr_at", "load_pretrained", "ZERO3_ABOVE_PARAMS"]
