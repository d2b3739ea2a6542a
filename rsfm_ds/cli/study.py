"""``rsfm study``: the scaling study, locally or one cell per launcher job."""
from __future__ import annotations

import argparse
import sys

from .common import verb


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="scaling study: fine-tune a grid of presets x datasets x train fractions, "
                       "tabulate and plot", description="Without --cell/--count/--list/--prepare/--collect: "
                       "prepare the data, run every unfinished cell locally, collect. On a cluster: "
                       "launch/slurm/submit_study.sh runs one cell per array task (--cell).")
    p.add_argument("--config", required=True, help="study config YAML (configs/study/scaling.yaml)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cell", type=int, default=None, metavar="I",
                      help="run cell I in the ranks of this job (under deepspeed / srun, or one process)")
    mode.add_argument("--count", action="store_true", help="print the number of cells")
    mode.add_argument("--list", action="store_true", help="list the cells with their index and status")
    mode.add_argument("--prepare", action="store_true", help="only prepare the datasets' data")
    mode.add_argument("--collect", action="store_true", help="only gather finished cells: CSV, table, plots")
    p.add_argument("overrides", nargs="*", metavar="field=value", help="study config overrides")
    verb(p, run)


def run(args: argparse.Namespace) -> int:
    from .. import study

    cfg = study.load_study(args.config, args.overrides)
    if args.count:
        print(len(study.cells(cfg)))
    elif args.list:
        for cell in study.cells(cfg):
            status = "complete" if cell.result_path(cfg).is_file() else "pending"
            print(f"{cell.index}\t{cell.name}\t{status}")
    elif args.prepare:
        study.check_cells(cfg)
        study.prepare(cfg)
    elif args.collect:
        study.collect(cfg)
    elif args.cell is not None:
        study.run_cell(cfg, args.cell)
    else:
        failed = study.run_local(cfg, args.config, args.overrides)
        if failed:
            print(f"rsfm study: {len(failed)} cell(s) failed: {failed}", file=sys.stderr)
            return 1
    return 0
