"""``rsfm predict`` on several processes: the scenes shared among ranks, one summary.

Started under a launcher that sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (the ``deepspeed``
launcher, so also ``launch/slurm/predict.sbatch``, or ``torchrun``), every rank checks the inputs,
rank 0 decides which scenes still need work (an output missing, or ``--overwrite``) and tells the
others, and the scenes are shared by size: largest first, each to the rank with the fewest
pixels so far (:func:`share_by_size`), so one large scene does not leave the other ranks idle at
the end. A rank predicts its scenes on its own device (``cuda:LOCAL_RANK`` when ``--device`` is
``cuda`` or left to choose) and writes their outputs; no collective runs while scenes are
predicted. At the end the ranks' records are gathered and rank 0 writes ``predictions.json``.

The process group is gloo over TCP (objects only, no tensors on the GPU). Joining it and the
start fail after the usual collective timeout (a node that cannot reach the others, e.g. when its
host name resolves to an address they cannot reach: set ``GLOO_SOCKET_IFNAME`` to the interface
they share); the gather at the end has its own group with a long timeout
(:data:`PREDICT_TIMEOUT_S`), since ranks wait there for the one with the most work, which can take
hours. A rank that fails ends the job through its launcher, which stops the others; what they had
written is complete (every output is renamed into place), and the same command resumes.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Sequence

from .config import DEFAULT_COLLECTIVE_TIMEOUT_S

PREDICT_TIMEOUT_S = 24 * 3600.0
"""How long a rank waits for the others (the slowest rank's share of scenes)."""


@dataclass
class PredictWorld:
    """The ranks of one ``rsfm predict`` run; a world of one outside a launcher."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    owns_group: bool = False
    """The process group was created here (and is destroyed by :meth:`close`)."""
    end_group: Any = None
    """The group of the final gather, with :data:`PREDICT_TIMEOUT_S` (None: the default group)."""
    timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
    """The timeout of the collective operation running or last run (for an error message)."""

    @staticmethod
    def from_environment() -> "PredictWorld":
        """Join the launcher's ranks (module docstring): a world of one when the process was not
        started by one, the existing process group when there is one."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return PredictWorld(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
        size = int(os.environ.get("WORLD_SIZE", 1))
        if size <= 1 or "RANK" not in os.environ:
            return PredictWorld()
        from .launcher_guard import follow_launcher

        follow_launcher()  # a rank never outlives the job it belongs to
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT_S))
        end_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=PREDICT_TIMEOUT_S))
        return PredictWorld(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size(), True,
                            end_group)

    def from_rank0(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        self.timeout_s = DEFAULT_COLLECTIVE_TIMEOUT_S
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: List[Any]) -> List[Any]:
        """Every rank's ``items``, concatenated in rank order, on every rank."""
        if self.size == 1:
            return list(items)
        import torch.distributed as dist

        parts: List[Any] = [None] * self.size
        self.timeout_s = PREDICT_TIMEOUT_S
        dist.all_gather_object(parts, list(items), group=self.end_group)
        return [item for part in parts for item in part]

    def close(self, together: bool = True) -> None:
        """Destroy the process group created by :meth:`from_environment`, after every rank got
        here when ``together`` (not on an error: the other ranks may never come)."""
        if self.owns_group:
            import torch.distributed as dist

            if together:
                dist.barrier(group=self.end_group)
            dist.destroy_process_group()
            self.owns_group = False


def share_by_size(sizes: Sequence[int], ranks: int) -> List[int]:
    """The rank of each item: largest first (ties in input order), each to the rank with the
    smallest total so far (ties to the lowest rank); items of size 0 go to rank 0.

    The same on every rank (a pure function of ``sizes``). With ``sizes`` in pixels, the largest
    share is at most the ideal (total / ranks) plus one scene."""
    loads = [0] * ranks
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        if sizes[i] <= 0:
            continue
        r = min(range(ranks), key=lambda r: (loads[r], r))
        owner[i] = r
        loads[r] += sizes[i]
    return owner


__all__ = ["PREDICT_TIMEOUT_S", "PredictWorld", "share_by_size"]
