"""Learning benchmark of issue 7: does the debug detector learn synthetic DOTA within 10 CPU minutes?

Writes a small synthetic DOTA-format training set and a held-out set (``rsfm synth dota``), then runs
``rsfm finetune det`` with ``configs/det/dota2_debug.yaml`` (one process, the debug backbone from
scratch) as a subprocess for at most ``--minutes`` of wall-clock time, evaluating every
``--eval-every`` optimizer steps. It prints, for every evaluation, the step, the wall-clock seconds
since the run started (evaluations included) and the held-out mAP (DOTA devkit protocol), then the
first time mAP reached ``--target``. Figures, not assertions: benchmarks print, tests assert.

    python bench/det_learning.py                       # 10 minutes, target 0.5
    python bench/det_learning.py --minutes 3 --json    # quicker look, machine-readable summary
    python bench/det_learning.py --threads 2           # both cores (faster only on an idle machine)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the run (default 10)")
    p.add_argument("--train-images", type=int, default=128, help="synthetic training images (default 128)")
    p.add_argument("--val-images", type=int, default=24, help="held-out images (default 24)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    p.add_argument("--eval-every", type=int, default=100, help="optimizer steps between evaluations (default 100)")
    p.add_argument("--steps", type=int, default=1500,
                   help="schedule length in steps; lr drops x0.1 at 2/3 and 11/12 of it (default 1500)")
    p.add_argument("--target", type=float, default=0.5, help="mAP to report the time to (default 0.5)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of the run (OMP_NUM_THREADS; default 1: the debug model's ops "
                        "are small, and on a loaded 2-core machine a second thread mostly waits)")
    p.add_argument("--workdir", default=None, help="keep data and run here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="extra config overrides")
    return p.parse_args()


def read_evals(eval_dir: Path, t0: float) -> List[Dict[str, float]]:
    """The evaluations written so far: step, seconds since ``t0`` (file time), mAP."""
    rows = []
    for path in sorted(eval_dir.glob("step_*.json")):
        result = json.loads(path.read_text())
        rows.append({"step": result["step"], "seconds": path.stat().st_mtime - t0,
                     "mAP": result.get("mAP", float("nan"))})
    return rows


def main() -> int:
    args = parse_args()
    from rsfm_ds.data.synth.detection import synth_dota

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsfm_det_learning_"))
    t = time.perf_counter()
    synth_dota(work / "train", images=args.train_images, seed=0, size=args.size)
    synth_dota(work / "val", images=args.val_images, seed=1, size=args.size, first_id=10_000)
    print(f"data: {args.train_images} + {args.val_images} images of {args.size} px in "
          f"{time.perf_counter() - t:.1f} s under {work}")

    run_dir = work / "run"
    milestones = [args.steps * 2 // 3, args.steps * 11 // 12]
    cmd = [sys.executable, "-m", "rsfm_ds.cli", "finetune", "det", "--config",
           str(ROOT / "configs" / "det" / "dota2_debug.yaml"), "--resume", "none",
           f"run_dir={run_dir}", f"data.train_dirs=[{work / 'train'}]", f"data.val_dir={work / 'val'}",
           f"backbone.img_size={args.size}", "schedule.by=iter", f"schedule.length={args.steps}",
           f"schedule.milestones={milestones}", f"eval.every={args.eval_every}",
           "eval.keep_best=false", "checkpoint.every_steps=1000000", *args.overrides]
    print(" ".join(cmd))
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait()
        print(f"stopped after {args.minutes:g} minutes")
    rows = read_evals(run_dir / "eval", t0)
    print(f"{'step':>6}  {'seconds':>8}  {'mAP':>6}")
    for r in rows:
        print(f"{r['step']:>6d}  {r['seconds']:>8.0f}  {r['mAP']:>6.3f}")
    reached = next((r for r in rows if r["mAP"] >= args.target), None)
    best = max((r["mAP"] for r in rows), default=float("nan"))
    print(f"best mAP {best:.3f}; target {args.target} " + (
        f"reached at step {reached['step']} after {reached['seconds']:.0f} s" if reached else "not reached"))
    if args.json:
        print(json.dumps({"evals": rows, "best_mAP": best, "target": args.target,
                          "reached_seconds": reached["seconds"] if reached else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
