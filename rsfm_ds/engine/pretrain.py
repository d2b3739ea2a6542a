"""MAE pretraining on DeepSpeed (ZeRO-3, activation checkpointing), resumable to the last bit.

One process per device, started by the ``deepspeed`` launcher (or torchrun / srun). The loop:
per micro-batch, forward (the MAE returns its loss), ``engine.backward``, ``engine.step``
(DeepSpeed accumulates, clips and steps the optimizer on accumulation boundaries); per optimizer
step, the learning rate is set from the step (warm-up then cosine), telemetry is logged every
``log.every_steps`` and a checkpoint is saved every ``checkpoint.every_steps``.

Resumption restores the DeepSpeed model and optimizer shards, then from our client state the step,
the data position (epoch, micro-batches consumed), and every RNG state, so a resumed run reproduces
the uninterrupted one exactly on CPU (and up to kernel non-determinism on GPU). A universal
checkpoint (``rsfm convert reshard``) resumes on another number of ranks: weights and optimizer
state exactly, the data position in samples within the epoch, the RNG streams reseeded from
``(seed, step, rank)`` (engine/checkpointing.py says why); the log line says so.

A non-finite loss is recorded on the device without a host sync; it is checked at every log line
and before every save, and stops all ranks together naming the first bad step and the rank, before
anything is saved.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from ..config import dump_yaml, to_dict
from ..data.pretrain_loader import build_pretrain_loader
from ..models.mae import create_mae, mae_train_flops
from . import checkpointing
from .config import PretrainConfig
from .deepspeed_setup import (build_model, device_for, device_peak_tflops, init_distributed, initialize,
                              load_ds_config, model_dtype, peak_memory_bytes, reconcile_ds_config)
from .metrics_log import TrainLogger
from .param_groups import build_param_groups
from .schedule import apply_lr, warmup_cosine


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def pretrain(cfg: PretrainConfig) -> Dict[str, Any]:
    """Run MAE pretraining as configured; returns a summary (steps, last loss, run_dir).

    Must run in every rank of the job (the launcher starts one process per device).
    """
    rank, local_rank, world = init_distributed()
    device = device_for(local_rank)
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    tcfg, ocfg, mcfg = cfg.train, cfg.optim, cfg.model

    ds_config = reconcile_ds_config(
        load_ds_config(tcfg.ds_config), micro_batch_size=tcfg.micro_batch_size,
        global_batch_size=tcfg.global_batch_size, world_size=world, precision=tcfg.precision,
        clip_grad=ocfg.clip_grad, source=tcfg.ds_config)
    accum = ds_config["gradient_accumulation_steps"]

    # Identical initialisation on every rank; per-rank streams for drop path and masking after.
    _seed_all(cfg.seed)
    model = build_model(lambda: create_mae(
        mcfg.preset, img_size=mcfg.img_size, norm_pix_loss=mcfg.norm_pix_loss,
        mask_ratio=mcfg.mask_ratio, drop_path_rate=mcfg.drop_path_rate, fused_attn=mcfg.fused_attn,
        decoder=mcfg.decoder), ds_config, mcfg.zero_init)
    model.set_grad_checkpointing(mcfg.grad_checkpointing, use_reentrant=mcfg.checkpoint_use_reentrant)
    groups = build_param_groups(model, ocfg.weight_decay)
    resume_from = checkpointing.resolve_resume(cfg.checkpoint.resume, ckpt_dir)
    if resume_from is not None:  # universal checkpoints need load_universal before initialize
        ds_config = checkpointing.resume_ds_config(ds_config, resume_from, world)
    engine, optimizer = initialize(model, groups, ds_config, ocfg)
    _seed_all(cfg.seed + 1 + rank)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + rank)

    micro_per_epoch = len(build_pretrain_loader(cfg.data, tcfg.micro_batch_size, rank, world, epoch=0))
    steps_per_epoch = micro_per_epoch // accum
    if steps_per_epoch == 0:
        raise ValueError(f"data: {micro_per_epoch} micro-batches per rank and epoch are fewer than the "
                         f"{accum} accumulation steps of one optimizer step; lower train.global_batch_size")
    total_steps = steps_per_epoch * tcfg.epochs
    stop_step = min(total_steps, tcfg.max_steps or total_steps)
    peak_lr = ocfg.lr if ocfg.lr is not None else ocfg.base_lr * tcfg.global_batch_size / 256
    warmup = ocfg.warmup_steps if ocfg.warmup_steps is not None else round(ocfg.warmup_epochs * steps_per_epoch)

    step, epoch, micro_in_epoch, samples_seen = 0, 0, 0, 0
    resharded = ""
    if resume_from is not None:
        state = checkpointing.load(engine, resume_from)
        step, epoch = state["step"], state["epoch"]
        micro_in_epoch, samples_seen = state["micro_in_epoch"], state["samples_seen"]
        if state["world_size"] == world:
            checkpointing.set_rng_state(checkpointing.rank_rng_state(resume_from, rank, state), generator)
        else:
            # A universal checkpoint from another world size: the old ranks' data ranges and RNG
            # streams have no counterpart here (checkpointing.resharded_position / resharded_seed).
            epoch, micro_in_epoch = checkpointing.resharded_position(state, tcfg.global_batch_size,
                                                                     steps_per_epoch, accum)
            seed = checkpointing.resharded_seed(cfg.seed, step, rank)
            _seed_all(seed)
            generator.manual_seed(seed)
            resharded = (f"; saved by {state['world_size']} ranks, now {world}: data position kept in samples "
                         f"(epoch {epoch}, micro-batch {micro_in_epoch} of {steps_per_epoch * accum} per rank), "
                         f"RNG streams reseeded from (seed, step, rank)")

    logger = TrainLogger(run_dir, rank, stop_step, step, tensorboard=cfg.log.tensorboard,
                         progress=cfg.log.progress)
    if rank == 0:
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    logger.line(f"MAE pretraining: preset {mcfg.preset}, world {world}, ZeRO stage "
                f"{ds_config.get('zero_optimization', {}).get('stage', 0)}, {tcfg.precision}, "
                f"global batch {tcfg.global_batch_size} = {tcfg.micro_batch_size} x {accum} x {world}, "
                f"{steps_per_epoch} steps/epoch, {stop_step} steps, peak lr {peak_lr:.3e}"
                + (f", resumed from {resume_from} (step {step}){resharded}" if resume_from else ""))

    dtype = model_dtype(tcfg.precision)
    flops_per_sample = mae_train_flops(mcfg.preset, mcfg.img_size, mcfg.mask_ratio, mcfg.decoder)
    peak_tflops = device_peak_tflops(device, tcfg.device_peak_tflops)
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    window = dict(t0=time.perf_counter(), wait=0.0, steps=0, samples=0)
    last_loss: Optional[float] = None

    def check_finite() -> None:
        bad = first_bad_step.clone()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() >= 0:
            mine = first_bad_step.item()
            raise NonFiniteLossError(
                f"non-finite loss at step {mine if mine >= 0 else bad.item()} on rank "
                f"{rank if mine >= 0 else 'another'}; stopping without saving (last complete "
                f"checkpoint in {ckpt_dir})")

    def client_state() -> Dict[str, Any]:
        return dict(step=step, epoch=epoch, micro_in_epoch=micro_in_epoch, samples_seen=samples_seen,
                    rng=checkpointing.rng_state(generator), config=to_dict(cfg), world_size=world,
                    preset=mcfg.preset)

    micro_limit = steps_per_epoch * accum  # leftover micro-batches would straddle epochs
    try:
        while step < stop_step:
            loader = build_pretrain_loader(cfg.data, tcfg.micro_batch_size, rank, world,
                                           epoch=epoch, start_batch=micro_in_epoch)
            for batch in _timed(loader, window):
                images = batch.normalized(device, dtype, non_blocking=True)  # uint8 moved, normalised there
                if micro_in_epoch % accum == 0:
                    apply_lr(optimizer, warmup_cosine(step, total_steps, warmup, peak_lr, ocfg.min_lr))
                loss, _, _ = engine(images, mcfg.mask_ratio, generator)
                engine.backward(loss)
                engine.step()
                micro_in_epoch += 1
                loss = loss.detach()
                loss_sum += loss
                bad_now = ~torch.isfinite(loss) & (first_bad_step < 0)
                first_bad_step.copy_(torch.where(bad_now, torch.full_like(first_bad_step, step), first_bad_step))
                window["samples"] += images.shape[0] * world
                if micro_in_epoch % accum:
                    continue
                step += 1
                samples_seen += tcfg.global_batch_size
                window["steps"] += 1
                logger.step()
                epoch_done = micro_in_epoch == micro_limit
                if epoch_done:  # advance before saving so a checkpoint never points past an epoch
                    epoch, micro_in_epoch = epoch + 1, 0
                if step % cfg.log.every_steps == 0 or step == stop_step:
                    check_finite()
                    last_loss = _log_window(logger, engine, optimizer, step, loss_sum, window, accum,
                                            samples_seen, flops_per_sample, peak_tflops, world, device)
                    loss_sum.zero_()
                if step % cfg.checkpoint.every_steps == 0 or step == stop_step:
                    check_finite()
                    checkpointing.save(engine, ckpt_dir, step, client_state(), cfg.checkpoint.keep_last)
                if step == stop_step or epoch_done:
                    break
            else:
                raise RuntimeError(f"rank {rank}: the data loader ended after {micro_in_epoch} of "
                                   f"{micro_limit} micro-batches of epoch {epoch}")
        logger.line(f"done: {step} steps, {samples_seen} samples; checkpoints in {ckpt_dir}")
    finally:
        logger.close()
    return dict(step=step, epoch=epoch, samples_seen=samples_seen, last_loss=last_loss, run_dir=str(run_dir))


def _timed(iterable, window: Dict[str, float]):
    """Yield from ``iterable``, adding the time spent waiting for each item to ``window['wait']``."""
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        window["wait"] += time.perf_counter() - t0
        yield item


def _log_window(logger: TrainLogger, engine, optimizer, step: int, loss_sum: torch.Tensor,
                window: Dict[str, float], accum: int, samples_seen: int, flops_per_sample: int,
                peak_tflops: Optional[float], world: int, device: torch.device) -> float:
    """Log the mean loss and throughput over the steps since the last call; reset the window."""
    micro = window["steps"] * accum
    mean_loss = loss_sum.clone()
    dist.all_reduce(mean_loss)
    mean_loss = mean_loss.item() / (micro * world)
    elapsed = time.perf_counter() - window["t0"]
    images_per_s = window["samples"] / elapsed
    tflops = images_per_s * flops_per_sample / 1e12 / world  # per device
    grad_norm = engine.get_global_grad_norm()
    scale = getattr(engine.optimizer, "cur_scale", None) if engine.fp16_enabled() else None
    values = {
        "train/loss": mean_loss,
        "train/lr": optimizer.param_groups[0]["lr"],
        "train/grad_norm": float(grad_norm) if grad_norm is not None else None,
        "train/loss_scale": float(scale) if scale is not None else None,
        "perf/images_per_s": images_per_s,
        "perf/step_time_s": elapsed / max(1, window["steps"]),
        "perf/data_wait_fraction": window["wait"] / elapsed,
        "perf/tflops_per_device": tflops,
        "perf/mfu": tflops / peak_tflops if peak_tflops else None,
        "perf/peak_memory_gb": peak_memory_bytes(device) / 2 ** 30,
        "train/samples_seen": samples_seen,
    }
    logger.scalars(step, values)
    window.update(t0=time.perf_counter(), wait=0.0, steps=0, samples=0)
    return mean_loss
