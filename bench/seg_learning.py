"""How fast the debug UperNet learns synthetic Potsdam-format data on this machine.

Writes synthetic Potsdam tiles in the real layout, cuts them into crops with `rsfm potsdam
prepare`, then runs `rsfm finetune seg` (one process, the `debug` backbone from scratch) with an
evaluation of the held-out tile every `--eval-every` steps, and prints held-out mIoU against
wall-clock time. Target: mIoU >= 60 within 10 CPU minutes. Never asserts.

    python bench/seg_learning.py --steps 300 --eval-every 50
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/rsfm_seg_bench")
    p.add_argument("--tiles", type=int, default=4, help="synthetic tiles (the last one is held out)")
    p.add_argument("--size", type=int, default=1024, help="tile side in pixels")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads of the training process")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from rsfm_ds.data.seg.potsdam import prepare_potsdam
    from rsfm_ds.data.synth.segmentation import synth_potsdam

    work = Path(args.workdir)
    if not (work / "prepared" / "prepare.json").is_file():
        synth_potsdam(work / "raw", tiles=args.tiles, seed=0, size=args.size)
        prepare_potsdam(work / "raw", work / "prepared", protocol=5, crop=256, stride=256)
    run_dir = work / f"run_{int(time.time())}"
    cmd = [sys.executable, "-m", "rsfm_ds.cli", "finetune", "seg", "--config", "configs/seg/potsdam_debug.yaml",
           f"run_dir={run_dir}", f"data.root={work / 'prepared'}", f"schedule.length={args.steps}",
           f"eval.every={args.eval_every}", "eval.keep_best=false", f"checkpoint.every_steps={args.steps}",
           "log.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    total = time.time() - t0
    log = (run_dir / "train.log").read_text().splitlines()
    start = _seconds(log[0])
    print(f"\nseg learning: debug UperNet, synthetic Potsdam, {args.steps} steps, {total:.0f} s in all")
    print(f"{'step':>6} {'seconds':>8} {'held-out mIoU':>14}")
    for path in sorted((run_dir / "eval").glob("step_*.json")):
        result = json.loads(path.read_text())
        line = next(x for x in log if f"step {result['step']} " in x and "mIoU" in x)
        print(f"{result['step']:>6} {_seconds(line) - start:>8.0f} {result['mIoU']:>14.2f}")


def _seconds(line: str) -> float:
    h, m, s = (int(v) for v in line[1:9].split(":"))
    return h * 3600 + m * 60 + s


if __name__ == "__main__":
    main()
