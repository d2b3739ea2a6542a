"""Where a training run is, and the random state that makes resuming it exact.

:class:`TrainState` is what the loops advance and what a checkpoint restores: the optimizer step,
the data position (epoch and micro-batches consumed in it), samples seen and, for fine-tuning,
the best evaluation so far. It travels in DeepSpeed's client state next to the RNG states of
every generator a step draws from (Python, NumPy, torch CPU and CUDA, and the MAE's masking
generator), the run config, the world size and the preset.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state(generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """The global generators' states (and ``generator``'s), for a checkpoint."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: Dict[str, Any], generator: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


@dataclass
class TrainState:
    """The position of a run.

    Attributes:
        step: optimizer steps taken.
        epoch: the epoch in progress (0-based).
        micro_in_epoch: micro-batches of ``epoch`` this rank has consumed.
        samples_seen: training samples trained on, over all ranks.
        samples_skipped: planned samples the data could not deliver (corrupt, unreadable), over
            all ranks; never counted as seen.
        best: fine-tuning: ``{"step", "score", "metric"}`` of the best evaluation, or None.
    """

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    samples_seen: int = 0
    samples_skipped: int = 0
    best: Optional[Dict[str, Any]] = None

    def client_state(self, **extra: Any) -> Dict[str, Any]:
        """The DeepSpeed client state of a checkpoint: this position plus ``extra`` (rng, config,
        world size, preset)."""
        return dict(step=self.step, epoch=self.epoch, micro_in_epoch=self.micro_in_epoch,
                    samples_seen=self.samples_seen, samples_skipped=self.samples_skipped, best=self.best, **extra)

    @classmethod
    def from_client_state(cls, state: Dict[str, Any]) -> "TrainState":
        return cls(step=state["step"], epoch=state["epoch"], micro_in_epoch=state["micro_in_epoch"],
                   samples_seen=state.get("samples_seen", 0), samples_skipped=state.get("samples_skipped", 0),
                   best=state.get("best"))


__all__ = ["TrainState", "seed_all", "rng_state", "set_rng_state"]
