"""Training telemetry: TensorBoard scalars, a plain log line, a progress bar; rank 0 only.

Throughput figures are computed over the window since the last log line from host timestamps
already taken for the step loop, so logging adds no device synchronisation beyond the one the log
line itself needs (reading the loss).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional


class TrainLogger:
    """Writes scalars to TensorBoard, ``run_dir/metrics.jsonl`` (full precision, one JSON object
    per log step) and lines to stdout and ``run_dir/train.log``, on rank 0."""

    def __init__(self, run_dir: Path, rank: int, total_steps: int, start_step: int,
                 tensorboard: bool = True, progress: bool = True):
        self.enabled = rank == 0
        self.writer = None
        self.bar = None
        self.log_file = None
        self.metrics_file = None
        if not self.enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(run_dir / "train.log", "a", buffering=1)
        self.metrics_file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
        if progress and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def scalars(self, step: int, values: Dict[str, Optional[float]]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(key, value, step)
        self.metrics_file.write(json.dumps({"step": step, **values}) + "\n")
        parts = [f"step {step}"] + [f"{k.split('/', 1)[-1]} {_fmt(v)}" for k, v in values.items() if v is not None]
        self.line("  ".join(parts))

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        stamped = f"[{time.strftime('%H:%M:%S')}] {text}"
        if self.bar is not None:
            self.bar.write(stamped)
        else:
            print(stamped, flush=True)
        self.log_file.write(stamped + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
        for f in (self.log_file, self.metrics_file):
            if f is not None:
                f.close()


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4f}"
