"""``rsfm study``: the scaling study, locally or one stage per launcher job."""
from __future__ import annotations

import argparse
import sys

from .common import verb


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="scaling study: pretrain each preset, fine-tune a grid of presets x "
                       "pretrained/scratch x datasets x train fractions x seeds, tabulate and plot",
                       description="Without a mode: prepare the data, pretrain and convert each preset, run every "
                       "unfinished cell locally, collect. On a cluster: launch/slurm/submit_study.sh runs "
                       "--pretrain/--convert per preset, then one cell per array task (--cell), then --collect.")
    p.add_argument("--config", required=True, help="study config YAML (configs/study/scaling.yaml)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cell", type=int, default=None, metavar="I",
                      help="run cell I in the ranks of this job (under deepspeed / srun, or one process)")
    mode.add_argument("--pretrain", default=None, metavar="PRESET",
                      help="pretrain PRESET in the ranks of this job (resumes; skipped when done)")
    mode.add_argument("--convert", default=None, metavar="PRESET",
                      help="convert PRESET's finished pretraining to its backbone file (one process)")
    mode.add_argument("--count", action="store_true", help="print the number of cells")
    mode.add_argument("--list", action="store_true", help="list pretraining stages and cells with their status")
    mode.add_argument("--pending", action="store_true",
                      help="print the unfinished cells' indices, comma-separated (an sbatch --array list); "
                           "--preset and --init narrow it")
    mode.add_argument("--pending-presets", action="store_true",
                      help="print the presets with unfinished pretrained cells, space-separated (one SLURM array "
                           "each, after that preset's own pretraining)")
    mode.add_argument("--pending-arrays", action="store_true",
                      help="print one line per SLURM array of unfinished cells: '<preset> <cells>' for each "
                           "preset's pretrained cells, then 'scratch <cells>'")
    mode.add_argument("--pending-pretrain", action="store_true",
                      help="print the presets still to pretrain or convert, on one line, space-separated")
    mode.add_argument("--prepare", action="store_true", help="only prepare the data (and check every config)")
    mode.add_argument("--collect", action="store_true", help="only gather finished cells: CSV, table, plots")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="without a mode: run N stages at once, each with cores // N threads (default: the "
                        "study's `jobs`, 1)")
    p.add_argument("--preset", default=None, metavar="PRESET",
                   help="with --pending: only the cells of PRESET (a cell's own preset, a variant's included)")
    p.add_argument("--init", default=None, choices=("pretrained", "scratch"),
                   help="with --pending: only the pretrained or only the scratch cells")
    p.add_argument("overrides", nargs="*", metavar="field=value", help="study config overrides")
    # The mode flags as declared above, so that _mode cannot drift from them.
    p.set_defaults(mode_flags=tuple((a.dest, a.option_strings[0]) for a in mode._group_actions))
    verb(p, run)


def _preset(cfg, preset: str, flag: str) -> str:
    from .. import study
    from ..config import ConfigError

    # A variant's own preset (variants.<name>.preset) is pretrained like the grid's.
    presets = study.study_presets(cfg)
    if preset not in presets:
        raise ConfigError(f"{flag} {preset}: the study {cfg.name!r} has presets {presets}")
    if cfg.pretrain is None:
        raise ConfigError(f"{flag} {preset}: the study {cfg.name!r} has no pretrain section")
    return preset


def _mode(args: argparse.Namespace):
    """The mode flag given (as typed), or None for a local study."""
    for dest, flag in args.mode_flags:
        if getattr(args, dest) not in (None, False):
            return flag
    return None


def run(args: argparse.Namespace) -> int:
    from .. import study

    cfg = study.load_study(args.config, args.overrides)
    if (args.preset is not None or args.init is not None) and not args.pending:
        from ..config import ConfigError

        raise ConfigError("--preset/--init: they narrow --pending, and only it")
    mode = _mode(args)
    if args.jobs is not None and mode is not None:
        from ..config import ConfigError

        raise ConfigError(f"--jobs: it sets how many stages a local study runs at once; {mode} runs one "
                          "stage (its ranks come from the launcher)")
    if args.count:
        print(len(study.cells(cfg)))
    elif args.list:
        for preset in study.pretrain_presets(cfg):
            print(f"pretrain\t{preset}\t{study.pretrain_status(cfg, preset)}")
        for cell in study.cells(cfg):
            status = "complete" if cell.result_path(cfg).is_file() else "pending"
            print(f"{cell.index}\t{cell.name}\t{status}")
    elif args.pending:
        if args.preset is not None and args.preset not in {c.preset for c in study.cells(cfg)}:
            from ..config import ConfigError

            raise ConfigError(f"--preset {args.preset}: no cell of the study {cfg.name!r} has this preset")
        print(",".join(str(c.index) for c in study.pending_cells(cfg, preset=args.preset, init=args.init)))
    elif args.pending_presets:
        from ..study.runner import pending_pretrained_presets

        print(" ".join(pending_pretrained_presets(cfg)))
    elif args.pending_arrays:
        from ..study.runner import pending_arrays

        for name, indices in pending_arrays(cfg):
            print(name, ",".join(map(str, indices)))
    elif args.pending_pretrain:
        print(" ".join(study.pending_pretrain(cfg)))
    elif args.prepare:
        study.check_study(cfg)
        study.prepare(cfg)
    elif args.collect:
        study.collect(cfg)
    elif args.pretrain is not None:
        study.run_pretrain(cfg, _preset(cfg, args.pretrain, "--pretrain"))
    elif args.convert is not None:
        study.convert(cfg, _preset(cfg, args.convert, "--convert"))
    elif args.cell is not None:
        study.run_cell(cfg, args.cell)
    else:
        failed = study.run_local(cfg, args.config, args.overrides, jobs=args.jobs)
        if failed:
            print(f"rsfm study: {len(failed)} cell(s) failed: {failed}", file=sys.stderr)
            return 1
    return 0
