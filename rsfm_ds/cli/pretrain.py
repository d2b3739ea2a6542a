"""``rsfm pretrain``: MAE pretraining, run in every rank."""
from __future__ import annotations

import argparse

from .common import add_run_config_arguments, run_config_overrides, verb


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="MAE pretraining on DeepSpeed (run under the deepspeed launcher)",
        description="MAE pretraining. Run one process per device, e.g. `deepspeed --num_gpus 8 "
                    "$(which rsfm) pretrain --config configs/pretrain/vit_l12x4.yaml` or launch/pretrain.sh.")
    add_run_config_arguments(p, "configs/pretrain/<preset>.yaml")
    verb(p, run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.config import PretrainConfig
    from ..engine.pretrain import pretrain

    pretrain(load_config(PretrainConfig, args.config, run_config_overrides(args)))
    return 0
