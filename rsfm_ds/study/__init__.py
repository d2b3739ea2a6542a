"""The scaling study: fine-tuning metric vs backbone size, with and without MAE pretraining, vs
amount of training data, repeated over seeds.

A study is a graph of stages over ``out_dir``:

1. data: each ``prepare`` list runs once (``prepared/<name>.json``);
2. pretrain, per preset (with a ``pretrain`` section): MAE pretraining under one budget rule for
   every size (rsfm_ds/study/pretraining.py), resumable, in ``pretrain/<preset>/``;
3. convert, per preset: the final checkpoint to ``pretrain/<preset>/backbone.safetensors``;
4. fine-tune, per cell of ``datasets x presets x variants x inits x train_fractions x seeds``
   (that order fixes each cell's index; ``variants`` are named sets of config overrides, the
   ablation axis, absent by default; ``inits`` are ``pretrained``, loading the cell's own
   preset's backbone, and ``scratch``): ``cells/<dataset>/<preset>[/<variant>]/<init>/frac_<f>/
   seed_<s>/``, with ``result.json`` written last, by rank 0, when the cell has finished;
5. collect: ``results.csv``, ``summary.csv``, ``results.md``, ``plots/``, ``study.json``.

Every stage skips finished work and resumes unfinished work. The same config runs as
``rsfm study --config C`` (the whole graph on one machine) or one stage per SLURM job
(``--pretrain P``, ``--convert P``, ``--cell I``, ``--collect``; launch/slurm/submit_study.sh).
"""
from ..config import load_config
from .config import StudyConfig, StudyDataset, StudyPretrain, StudyVariant, load_study
from .costs import peak_memory, step_time
from .grid import (Cell, backbone_path, cell_config, cell_overrides, cells, check_cells, get_cell, preset_params,
                   pretrain_dir, variant_overrides)
from .pretraining import (check_pretrain, convert, pretrain_config, pretrain_epochs, pretrain_presets,
                          pretrain_status, run_pretrain)
from .records import STUDY_FORMAT_VERSION
from .results import Summary, aggregate, collect, study_presets, within_spread
from .runner import (cell_command, check_study, pending_cells, pending_pretrain, prepare, pretrain_local, run_cell,
                     run_local, stage_command)

__all__ = ["StudyConfig", "StudyDataset", "StudyPretrain", "StudyVariant", "load_study", "load_config", "Cell",
           "cells", "get_cell", "cell_config", "cell_overrides", "variant_overrides", "check_cells", "step_time",
           "peak_memory", "study_presets", "backbone_path", "pretrain_dir", "preset_params",
           "check_pretrain", "convert", "pretrain_config", "pretrain_epochs", "pretrain_presets", "pretrain_status",
           "run_pretrain", "STUDY_FORMAT_VERSION", "Summary", "aggregate", "collect", "within_spread",
           "cell_command", "check_study", "pending_cells", "pending_pretrain", "prepare", "pretrain_local",
           "run_cell", "run_local", "stage_command"]
