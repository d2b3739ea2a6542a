"""What the pretraining and fine-tuning loops share: the run's set-up, the micro-batch loop with
gradient accumulation, loss accounting, throughput, and resuming from a checkpoint.

The loop (:func:`optimizer_steps`) is written once: for each micro-batch the caller's
``micro_step`` runs forward, backward and ``engine.step()`` (DeepSpeed accumulates, clips and steps
the optimizer on accumulation boundaries); after every optimizer step the generator yields, with
the :class:`~rsfm_ds.engine.state.TrainState` advanced, so the caller logs, evaluates and saves.
An epoch ends after ``steps_per_epoch`` whole optimizer steps, before any micro-batch that would
straddle two epochs, so a checkpoint never points into the middle of an accumulation.
"""
from __future__ import annotations

import functools
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.distributed as dist

from ..checkpoint import layout
from ..config import dump_yaml, to_dict
from ..errors import CheckpointError, RunError, few
from .checkpointing import CheckpointManager, rank_rng_state, resharded_position, resharded_seed
from .deepspeed_setup import device_for, init_distributed, load_ds_config, reconcile_ds_config, zero_stage
from .launcher_guard import lost_peer
from .liveness import WAITING_FOR_DATA, mark_phase, stalled_ranks, start_heartbeat, stop_heartbeat
from .metrics_log import TrainLogger
from .state import TrainState, seed_all, set_rng_state


class NonFiniteLossError(RunError):
    """The training loss became NaN or infinite."""


# How the backends say that a peer is gone: gloo's and NCCL's timeouts, a closed connection.
# gloo says "Application timeout caused pair closure" when the timeout strikes inside a pairwise
# exchange (an all-gather of a checkpoint save, for one).
_TIMEOUT_SIGNS = ("Timed out waiting", "timed out", "Application timeout", "Watchdog caught collective operation timeout")
_LOST_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def collective_failure(error: BaseException, timeout_s: float, setting: str = "train.collective_timeout_s",
                       heartbeats: bool = True) -> Optional[str]:
    """A one-line account of ``error`` when it is a collective operation that lost its peers (a
    timeout or a closed connection), naming this rank and host; None for any other error.
    ``setting`` names where the timeout comes from; ``heartbeats``: the ranks publish them
    (liveness.py), so a timeout can name the rank that stopped."""
    text = str(error)
    where = f"rank {dist.get_rank() if dist.is_initialized() else '?'} on {socket.gethostname()}"
    if any(sign in text for sign in _TIMEOUT_SIGNS):
        # Heartbeats in the rendezvous store tell which rank stopped answering (liveness.py).
        hung = stalled_ranks(dist.get_world_size(), dist.get_rank()) if heartbeats and dist.is_initialized() else None
        who = hung or "one of them stopped, hung or died"
        return (f"{where}: a collective operation waited more than {timeout_s:g} s for the other ranks "
                f"({setting}): {who}")
    if any(sign in text for sign in _LOST_PEER_SIGNS):
        # The peer's address in gloo's message, mapped back to its rank and host (launcher_guard.py).
        lost = lost_peer(text, own_rank=dist.get_rank() if dist.is_initialized() else None)
        return f"{where}: lost the connection to {lost or 'another rank'} (it died or was killed)"
    return None


def reports_lost_ranks(run_fn):
    """Decorate an engine's run function ``fn(cfg, ...)``: a collective operation that lost its
    peers ends it with a :class:`RunError` naming the rank and host, not a backend traceback."""
    @functools.wraps(run_fn)
    def wrapper(cfg, *args, **kwargs):
        try:
            result = run_fn(cfg, *args, **kwargs)
        except RuntimeError as e:
            failure = None if isinstance(e, RunError) else collective_failure(e, cfg.train.collective_timeout_s)
            if failure is None:
                raise
            raise RunError(failure) from e
        # Every rank stops beating before any leaves (liveness.stop_heartbeat).
        stop_heartbeat()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
        return result
    return wrapper


@dataclass
class Run:
    """This rank's place in the job and the job's DeepSpeed config.

    Attributes:
        run_dir: the run's output directory.
        rank, local_rank, world: from the launcher (a world of one without one).
        device: this rank's device.
        ds_config: the DeepSpeed JSON with batch sizes, precision and clipping filled in.
        accum: micro-batches per optimizer step on each rank.
    """

    run_dir: Path
    rank: int
    local_rank: int
    world: int
    device: torch.device
    ds_config: Dict[str, Any]
    accum: int


def start_run(run_dir: str, train_cfg, clip_grad: Optional[float]) -> Run:
    """Join the process group and check the DeepSpeed JSON against the run config (``train``
    section: batch sizes, precision, ``ds_config``), before anything is built."""
    rank, local_rank, world = init_distributed(train_cfg.collective_timeout_s)
    start_heartbeat(rank, world)  # so a collective timeout can name the hung rank (liveness.py)
    ds_config = reconcile_ds_config(
        load_ds_config(train_cfg.ds_config), micro_batch_size=train_cfg.micro_batch_size,
        global_batch_size=train_cfg.global_batch_size, world_size=world, precision=train_cfg.precision,
        clip_grad=clip_grad, source=train_cfg.ds_config)
    return Run(Path(run_dir), rank, local_rank, world, device_for(local_rank), ds_config,
               ds_config["gradient_accumulation_steps"])


def open_log(run: Run, cfg, stop_step: int, state: TrainState, ckpt: CheckpointManager) -> TrainLogger:
    """The run's logger (``log`` section of ``cfg``; rank 0 writes), with the resolved config saved
    as ``run_dir/config.yaml`` and the checkpoints the resume passed over logged first."""
    logger = TrainLogger(run.run_dir, run.rank, stop_step, state.step, tensorboard=cfg.log.tensorboard,
                         progress=cfg.log.progress)
    if run.rank == 0:
        (run.run_dir / "config.yaml").write_text(dump_yaml(cfg))
    for note in ckpt.passed_over:
        logger.line(note)
    return logger


def describe_run(run: Run, train_cfg, ds_config: Dict[str, Any], steps_per_epoch: int, stop_step: int) -> str:
    """The shape of the run for its first log line: world, ZeRO stage, precision, batch, length."""
    return (f"world {run.world}, ZeRO stage {zero_stage(ds_config)}, {train_cfg.precision}, global batch "
            f"{train_cfg.global_batch_size} = {train_cfg.micro_batch_size} x {run.accum} x {run.world}, "
            f"{steps_per_epoch} steps/epoch, {stop_step} steps")


def optimizer_steps(state: TrainState, epoch_batches: Callable[[int, int], Iterable[Any]],
                    micro_step: Callable[[Any, bool], None], *, accum: int, steps_per_epoch: int,
                    stop_step: int) -> Iterator[None]:
    """Run micro-batches until ``state.step == stop_step``, yielding after every optimizer step.

    Args:
        state: advanced in place: ``micro_in_epoch`` per micro-batch; ``step`` and, at an epoch's
            end, ``epoch`` per optimizer step (before the yield, so a checkpoint saved there resumes
            at the next micro-batch). ``micro_step`` counts the samples.
        epoch_batches: ``(epoch, start) -> micro-batches`` of that epoch from micro-batch ``start``.
        micro_step: ``(batch, starts_step)`` runs one micro-batch; ``starts_step`` is True for the
            first micro-batch of an optimizer step (where the learning rate is set).
        accum: micro-batches per optimizer step.
        steps_per_epoch: optimizer steps per epoch; leftover micro-batches are not used.
        stop_step: the step at which to stop.
    """
    micro_limit = steps_per_epoch * accum
    while state.step < stop_step:
        epoch_done = False
        for batch in epoch_batches(state.epoch, state.micro_in_epoch):
            micro_step(batch, state.micro_in_epoch % accum == 0)
            state.micro_in_epoch += 1
            if state.micro_in_epoch % accum:
                continue
            state.step += 1
            epoch_done = state.micro_in_epoch == micro_limit
            if epoch_done:
                state.epoch, state.micro_in_epoch = state.epoch + 1, 0
            yield
            if state.step == stop_step or epoch_done:
                break
        else:
            raise RuntimeError(f"rank {dist.get_rank()}: the data ended after {state.micro_in_epoch} of "
                               f"{micro_limit} micro-batches of epoch {state.epoch}")


class LossMeter:
    """Sums each loss over the micro-batches of a logging window, on the device (no host sync per
    step), and notes the first step whose loss was not finite.

    Sums are float64; :meth:`means` averages them over every rank's micro-batches. A non-finite
    loss is found at the next :meth:`check_finite` (every log line and before every save), which
    stops all ranks together, naming the first bad step and the rank.
    """

    def __init__(self, device: torch.device):
        self.sums: Dict[str, torch.Tensor] = {}
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, losses: Dict[str, torch.Tensor], step: int) -> None:
        for key, value in losses.items():
            value = value.detach()
            self.sums[key] = self.sums.get(key, 0.0) + value.to(torch.float64)
        total = losses["loss"].detach()
        bad_now = ~torch.isfinite(total) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(bad_now, torch.full_like(self.first_bad_step, step),
                                              self.first_bad_step))

    def check_finite(self, where: str) -> None:
        """Raise :class:`NonFiniteLossError` on every rank when any rank saw a non-finite loss."""
        bad = self.first_bad_step.clone()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() >= 0:
            mine = self.first_bad_step.item()
            rank = dist.get_rank()
            raise NonFiniteLossError(
                                     f"non-finite loss at step {mine if mine >= 0 else bad.item()} on rank "
                                     f"{rank if mine >= 0 else 'another'}; stopping without saving (last complete checkpoint in "
                                     f"{where})")

    def means(self, count: int) -> Dict[str, float]:
        """Mean of each loss over ``count`` micro-batches (of all ranks); resets the sums."""
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys])
        dist.all_reduce(stacked)
        self.sums.clear()
        return {k: v / count for k, v in zip(keys, stacked.tolist())}


class SampleCounts:
    """Samples trained on and samples the data could not deliver, counted per rank on the host
    and summed over the ranks when :meth:`settle` is called (at log lines and before saves: one
    all-reduce), into ``state.samples_seen`` and ``state.samples_skipped``."""

    def __init__(self, state: TrainState, logger: TrainLogger, device: torch.device):
        self.state, self.logger, self.device = state, logger, device
        self.seen = self.skipped = 0

    def add(self, seen: int, skipped: int) -> None:
        self.seen += seen
        self.skipped += skipped

    def settle(self) -> int:
        """Add this rank's counts since the last call, summed over the ranks, to the state; returns
        the samples skipped since then (a log line says so when there are any)."""
        counts = torch.tensor([self.seen, self.skipped], dtype=torch.int64, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(counts)
        seen, skipped = (int(v) for v in counts.tolist())
        self.state.samples_seen += seen
        self.state.samples_skipped += skipped
        self.seen = self.skipped = 0
        if skipped:
            self.logger.line(f"data: {skipped} planned samples could not be read and were skipped "
                             f"({self.state.samples_skipped} in all; the loader's warnings name them)")
        return skipped


class ThroughputWindow:
    """Host-side timing of the optimizer steps since the last log line (no device sync).

    Attributes:
        steps, samples: optimizer steps and samples (all ranks) in the window.
        wait: seconds spent waiting for the data loader (:meth:`timed`).
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0, self.wait, self.steps, self.samples = time.perf_counter(), 0.0, 0, 0

    def timed(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Yield from ``iterable``, adding the time spent waiting for each item to ``wait``."""
        # A stalled loader (its workers, or starting them) is named on a collective timeout (liveness.py).
        mark_phase(WAITING_FOR_DATA)
        try:
            it = iter(iterable)
        finally:
            mark_phase("train")
        while True:
            t0 = time.perf_counter()
            mark_phase(WAITING_FOR_DATA)
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                mark_phase("train")
            self.wait += time.perf_counter() - t0
            yield item

    def rates(self) -> Dict[str, float]:
        """``perf/images_per_s``, ``perf/step_time_s``, ``perf/data_wait_fraction``; resets."""
        elapsed = time.perf_counter() - self.t0
        out = {"perf/images_per_s": self.samples / elapsed,
               "perf/step_time_s": elapsed / max(1, self.steps),
               "perf/data_wait_fraction": self.wait / elapsed}
        self.reset()
        return out


def config_changes(saved: Any, now: Any, prefix: str = "") -> list:
    """``"field (saved X, now Y)"`` for every dotted field whose value differs between two config
    trees (``to_dict`` form), fields present in only one included."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [change for key in sorted(set(saved) | set(now), key=str)
                for change in config_changes(saved.get(key), now.get(key), f"{prefix}{key}.")]
    if saved == now or (isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple))
                        and list(saved) == list(now)):
        return []
    return [f"{prefix[:-1]} (saved {saved!r}, now {now!r})"]


def restore(ckpt: CheckpointManager, engine, path: Optional[Path], run: Run, seed: int, global_batch_size: int,
            steps_per_epoch: int, generator: Optional[torch.Generator] = None,
            config: Any = None) -> Tuple[TrainState, str]:
    """Load the checkpoint ``path`` into ``engine`` and the RNG streams; returns the position and
    a note for the log (None: a fresh start, step 0 and no note).

    At the world size that saved it, each rank takes back its own RNG states (exact resume). A
    universal checkpoint at another world size keeps the data position in samples and reseeds
    every stream from ``(seed, step, rank)`` (:mod:`rsfm_ds.engine.checkpointing` says why).
    With the run's ``config``, fields that differ from the saved run's are named: in the note when
    the model still loads (the resumed run then trains differently from the saved one), and in the
    :class:`CheckpointError` when the model no longer fits the checkpoint (e.g. a changed default).
    """
    if path is None:
        return TrainState(), ""
    now = to_dict(config) if config is not None else None
    try:
        saved = ckpt.load(engine, path)
    except RuntimeError as e:
        if "state_dict" not in str(e) or now is None:
            raise
        changes = config_changes(layout.client_state(path).get("config", {}), now)
        raise CheckpointError(
            f"{path}: the model this config builds does not fit the checkpoint ({str(e).splitlines()[0]}); "
            f"config fields that differ from the saved run's: {few(changes)}; resume with the saved values "
            f"(overrides such as backbone.use_rel_pos=false) or start a new run_dir") from None
    state = TrainState.from_client_state(saved)
    note = f", resumed from {path} (step {state.step})"
    changes = config_changes(saved.get("config", {}), now) if now is not None else []
    if changes:
        note += f"; config differs from the saved run's: {few(changes, limit=8)}"
    if saved["world_size"] == run.world:
        set_rng_state(rank_rng_state(path, run.rank, saved), generator)
        return state, note
    state.epoch, state.micro_in_epoch = resharded_position(saved, global_batch_size, steps_per_epoch, run.accum)
    new_seed = resharded_seed(seed, state.step, run.rank)
    seed_all(new_seed)
    if generator is not None:
        generator.manual_seed(new_seed)
    return state, note + (f"; saved by {saved['world_size']} ranks, now {run.world}: data position kept in samples "
                   f"(epoch {state.epoch}, micro-batch {state.micro_in_epoch} of {steps_per_epoch * run.accum} "
                   f"per rank), RNG streams reseeded from (seed, step, rank)")


__all__ = ["Run", "start_run", "reports_lost_ranks", "collective_failure", "open_log", "describe_run",
           "optimizer_steps", "LossMeter", "SampleCounts", "ThroughputWindow", "NonFiniteLossError", "restore",
           "config_changes"]
