"""``rsfm finetune <task>``: one verb per registered task (:mod:`rsfm_ds.engine.tasks`), run in
every rank."""
from __future__ import annotations

import argparse

from .common import add_run_config_arguments, run_config_overrides, verb


def add(sub: argparse._SubParsersAction) -> None:
    from ..engine.tasks import TASKS

    p = sub.add_parser("finetune", help="fine-tune a pretrained backbone on a downstream task (DeepSpeed)")
    group = p.add_subparsers(dest="finetune_task", required=True, metavar="TASK")
    for spec in TASKS.values():
        t = group.add_parser(
            spec.name, help=f"{spec.summary} (run under the deepspeed launcher for several devices)",
            description=f"{spec.summary}, e.g. `deepspeed --num_gpus 8 $(which rsfm) finetune {spec.name} "
                        f"--config {spec.example}`; a plain `rsfm finetune {spec.name}` runs one process.")
        add_run_config_arguments(t, spec.example)
        verb(t, run)


def run(args: argparse.Namespace) -> int:
    from ..engine.finetune import finetune
    from ..engine.tasks import get_task

    spec = get_task(args.finetune_task)
    cfg = spec.load_config(args.config, run_config_overrides(args))
    finetune(cfg, spec.build(cfg))
    return 0
