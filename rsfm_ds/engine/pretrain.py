"""MAE pretraining on DeepSpeed (ZeRO-3, activation checkpointing), resumable to the last bit.

One process per device, started by the ``deepspeed`` launcher (or torchrun / srun). Per
micro-batch: forward (the MAE returns its loss), ``engine.backward``, ``engine.step``; per
optimizer step the learning rate follows warm-up then cosine, telemetry is logged every
``log.every_steps`` and a checkpoint is saved every ``checkpoint.every_steps``
(:mod:`rsfm_ds.engine.loop` runs the micro-batches).

Resumption restores the DeepSpeed model and optimizer shards, then the step, the data position
(epoch, micro-batches consumed) and every RNG state, so a resumed run reproduces the uninterrupted
one exactly on CPU (and up to kernel non-determinism on GPU). A universal checkpoint
(``rsfm convert reshard``) resumes on another number of ranks (:func:`~rsfm_ds.engine.loop.restore`
says what is kept); the log line says so.

Input bands: ``model.in_chans`` must equal the bands of the shards' manifest; it is checked
before the process group or the model exists (:func:`check_data_fits_model`). A checkpoint's client
state records the bands (``bands``: ``in_chans`` and, for shards of ``rsfm shards images``, their
names and normalisation), which ``rsfm convert mae-to-backbone`` writes into the backbone file.

A non-finite loss is recorded on the device without a host sync; it is checked at every log line
and before every save, and stops all ranks together naming the first bad step and the rank, before
anything is saved.
"""
from __future__ import annotations

import json
from typing import Any, Dict

import torch

from ..config import to_dict
from ..config import check
from ..data.pretrain.loader import build_pretrain_loader, resolve_shards, sample_format
from ..data.pretrain.manifest import Manifest
from ..errors import DataError
from ..models.mae import build_mae
from .checkpointing import CheckpointManager, resume_ds_config
from .config import PretrainConfig
from .deepspeed_setup import build_model, device_peak_tflops, initialize, model_dtype, peak_memory_bytes
from .loop import (LossMeter, Run, SampleCounts, ThroughputWindow, describe_run, open_log, optimizer_steps,
                   reports_lost_ranks, restore, start_run)
from .metrics_log import TrainLogger
from .param_groups import build_param_groups
from .schedule import apply_lr, warmup_cosine
from .state import TrainState, rng_state, seed_all


@reports_lost_ranks
def pretrain(cfg: PretrainConfig) -> Dict[str, Any]:
    """Run MAE pretraining as configured; returns a summary (steps, last loss, run_dir).

    Must run in every rank of the job (the launcher starts one process per device).
    """
    manifest = check_data_fits_model(cfg)
    run = start_run(cfg.run_dir, cfg.train, cfg.optim.clip_grad)
    tcfg, ocfg, mcfg = cfg.train, cfg.optim, cfg.model
    steps_per_epoch = _steps_per_epoch(cfg, run)  # a data problem fails here, before any model exists
    total_steps = steps_per_epoch * tcfg.epochs
    stop_step = min(total_steps, tcfg.max_steps or total_steps)
    peak_lr = ocfg.lr if ocfg.lr is not None else ocfg.base_lr * tcfg.global_batch_size / 256
    warmup = ocfg.warmup_steps if ocfg.warmup_steps is not None else round(ocfg.warmup_epochs * steps_per_epoch)
    ckpt = CheckpointManager.for_run(run.run_dir, cfg.checkpoint)
    resume_from = ckpt.resume_path()

    seed_all(cfg.seed)  # identical initialisation on every rank
    model = build_model(lambda: build_mae(mcfg), run.ds_config, mcfg.zero_init, seed=cfg.seed)
    model.set_grad_checkpointing(mcfg.grad_checkpointing, use_reentrant=mcfg.checkpoint_use_reentrant)
    ds_config = resume_ds_config(run.ds_config, resume_from, run.world)  # before initialize: load_universal
    engine, optimizer = initialize(model, build_param_groups(model, ocfg.weight_decay), ds_config, ocfg)
    seed_all(cfg.seed + 1 + run.rank)  # per-rank streams for drop path and masking from here on
    generator = torch.Generator(device=run.device).manual_seed(cfg.seed * 1_000_003 + run.rank)
    state, resumed = restore(ckpt, engine, resume_from, run, cfg.seed, tcfg.global_batch_size, steps_per_epoch,
                             generator, config=cfg)
    logger = open_log(run, cfg, stop_step, state, ckpt)
    shape = describe_run(run, tcfg, ds_config, steps_per_epoch, stop_step)
    logger.line(f"MAE pretraining: preset {mcfg.preset}, {shape}, peak lr {peak_lr:.3e}{resumed}")

    dtype, losses, window = model_dtype(tcfg.precision), LossMeter(run.device), ThroughputWindow()
    counts = SampleCounts(state, logger, run.device)
    perf = dict(flops=mcfg.train_flops(), peak_tflops=device_peak_tflops(run.device, tcfg.device_peak_tflops))
    last_loss = None

    def epoch_batches(epoch: int, start: int):
        return window.timed(build_pretrain_loader(cfg.data, tcfg.micro_batch_size, run.rank, run.world,
                                                  epoch=epoch, start_batch=start))

    def micro_step(batch, starts_step: bool) -> None:
        images = batch.normalized(run.device, dtype, non_blocking=True)  # uint8 moved, normalised there
        if starts_step:
            apply_lr(optimizer, warmup_cosine(state.step, total_steps, warmup, peak_lr, ocfg.min_lr))
        loss, _, _ = engine(images, mcfg.mask_ratio, generator)
        engine.backward(loss)
        engine.step()
        losses.add({"loss": loss}, state.step)
        window.samples += images.shape[0] * run.world
        counts.add(0 if batch.padded else len(batch), len(batch.skipped))

    try:
        for _ in optimizer_steps(state, epoch_batches, micro_step, accum=run.accum, steps_per_epoch=steps_per_epoch,
                                 stop_step=stop_step):
            window.steps += 1
            logger.step()
            if state.step % cfg.log.every_steps == 0 or state.step == stop_step:
                losses.check_finite(str(ckpt.ckpt_dir))
                last_loss = _log(logger, engine, optimizer, state, losses, window, run, counts.settle(), **perf)
            if ckpt.due(state.step, stop_step):
                losses.check_finite(str(ckpt.ckpt_dir))
                counts.settle()
                ckpt.save(engine, state.step, state.client_state(
                    rng=rng_state(generator), config=to_dict(cfg), world_size=run.world, preset=mcfg.preset,
                    bands=band_metadata(manifest, mcfg.in_chans)))
        logger.line(f"done: {state.step} steps, {state.samples_seen} samples"
                    + (f" ({state.samples_skipped} skipped)" if state.samples_skipped else "")
                    + f"; checkpoints in {ckpt.ckpt_dir}")
    finally:
        logger.close()
    return dict(step=state.step, epoch=state.epoch, samples_seen=state.samples_seen, last_loss=last_loss,
                run_dir=str(run.run_dir))


def check_data_fits_model(cfg: PretrainConfig) -> Manifest:
    """The run's manifest, after checking that its samples fit the model and the normalisation
    rule of ``data.mean``/``data.std``.

    Raises:
        ConfigError: ``model.in_chans`` differs from the manifest's bands, or ``data.mean`` /
            ``data.std`` is set for shards of ``rsfm shards images``.
        DataError: the manifest cannot be read.
    """
    manifest, _ = resolve_shards(cfg.data)
    where = cfg.data.manifest or cfg.data.shards
    check(manifest.bands == cfg.model.in_chans, "model.in_chans",
          f"{cfg.model.in_chans}, but the samples of {where} have {manifest.bands} bands "
          f"({', '.join(manifest.band_names)}); set model.in_chans={manifest.bands}")
    sample_format(cfg.data, manifest)
    return manifest


def band_metadata(manifest: Manifest, in_chans: int) -> Dict[str, str]:
    """What a checkpoint records of its input bands: ``in_chans``, and for shards of ``rsfm shards
    images`` their ``band_names``, ``band_mean`` and ``band_std`` (raw units), as JSON strings."""
    meta = {"in_chans": str(in_chans)}
    norm = manifest.normalization()
    if norm is not None:
        meta.update(band_names=json.dumps(list(manifest.band_names)), band_mean=json.dumps(list(norm.mean)),
                    band_std=json.dumps(list(norm.std)))
    return meta


def _steps_per_epoch(cfg: PretrainConfig, run: Run) -> int:
    """Optimizer steps per epoch of this data and run shape (the loader's length, read once)."""
    micro = len(build_pretrain_loader(cfg.data, cfg.train.micro_batch_size, run.rank, run.world, epoch=0))
    if micro < run.accum:
        raise DataError(f"data.shards: {micro} micro-batches per rank and epoch are fewer than the {run.accum} "
                        f"accumulation steps of one optimizer step; lower train.global_batch_size")
    return micro // run.accum


def _log(logger: TrainLogger, engine, optimizer, state: TrainState, losses: LossMeter,
         window: ThroughputWindow, run: Run, skipped: int, flops: int, peak_tflops) -> float:
    """Log the mean loss and throughput over the steps since the last log line."""
    loss = losses.means(window.steps * run.accum * run.world)["loss"]
    grad_norm = engine.get_global_grad_norm()
    scale = getattr(engine.optimizer, "cur_scale", None) if engine.fp16_enabled() else None
    perf = window.rates()
    tflops = perf["perf/images_per_s"] * flops / 1e12 / run.world  # per device
    logger.scalars(state.step, {
        "train/loss": loss,
        "train/lr": optimizer.param_groups[0]["lr"],
        "train/grad_norm": float(grad_norm) if grad_norm is not None else None,
        "train/loss_scale": float(scale) if scale is not None else None,
        **perf,
        "perf/tflops_per_device": tflops,
        "perf/mfu": tflops / peak_tflops if peak_tflops else None,
        "perf/peak_memory_gb": peak_memory_bytes(run.device) / 2 ** 30,
        "train/samples_seen": state.samples_seen,
        "data/skipped": skipped,
        "data/skipped_total": state.samples_skipped,
    })
    return loss
