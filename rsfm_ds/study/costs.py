"""What a fine-tuning cell cost: its step time (from the run's metrics log) and its peak memory.

The ablations are as much about memory and speed at detection resolution as about accuracy
(window attention exists because global attention over 4096 tokens is quadratic), so every
cell's ``result.json`` records both beside its metric.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, Optional, Union

STEP_TIME_KEY = "perf/step_time_s"
"""The training loop's per-window mean seconds per optimizer step (rsfm_ds/engine/loop.py), one
value per logging window in ``run_dir/metrics.jsonl``."""

PEAK_MEMORY_KINDS = {"cuda": "GPU max allocated", "cpu": "process peak RSS"}
"""What ``peak_memory_gb`` measures on each device type, for table headers."""


def step_time(run_dir: Union[str, Path]) -> Optional[float]:
    """Median over logging windows of the seconds per optimizer step in ``run_dir/metrics.jsonl``.

    The median, not the mean: the first window holds the warm-up (allocator, kernel selection)
    and a resumed run appends a second warm-up window; neither is the steady-state cost. None
    when the log has no step time (no window was logged, or the log is missing).
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    values = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
        if isinstance(record.get(STEP_TIME_KEY), (int, float)):
            values.append(float(record[STEP_TIME_KEY]))
    return statistics.median(values) if values else None


def peak_memory() -> Dict[str, object]:
    """``{"peak_memory_gb": GiB, "peak_memory_kind": "cuda" | "cpu"}`` of this process so far:
    ``torch.cuda.max_memory_allocated`` on a GPU (tensors only, without the caching allocator's
    reserve), else the peak resident set size (``ru_maxrss``: everything, Python and data
    loading included). The two are not comparable with each other; the tables name which."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return dict(peak_memory_gb=torch.cuda.max_memory_allocated() / 2 ** 30, peak_memory_kind="cuda")
    import resource

    # ru_maxrss is in KiB on Linux.
    return dict(peak_memory_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, peak_memory_kind="cpu")


__all__ = ["STEP_TIME_KEY", "PEAK_MEMORY_KINDS", "step_time", "peak_memory"]
