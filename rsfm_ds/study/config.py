"""The study config: datasets, presets, variants, fractions, seeds, and the MAE pretraining stage."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence

from ..config import check, check_choices, load_config
from ..errors import ConfigError
from ..engine.tasks import TASKS, get_task


def _check_commands(commands: Sequence[str], name: str) -> None:
    for i, command in enumerate(commands):
        words = shlex.split(command)
        check(bool(words) and words[0] == "rsfm", f"{name}[{i}]", f"must be an rsfm command, got {command!r}")


@dataclass
class StudyDataset:
    """One downstream dataset of the grid."""

    name: str
    """Name of the dataset in tables, plots and cell folders (letters, digits, _ and -)."""
    task: str
    """Fine-tuning task: det (Oriented R-CNN) or seg (UperNet); any task of the registry
    (rsfm_ds/engine/tasks.py)."""
    config: str
    """Fine-tuning run config; ``{preset}`` in the path is replaced by each cell's preset, so
    every size can keep its own recipe (batch, layer decay, drop path)."""
    overrides: Dict[str, Any] = field(default_factory=dict)
    """``section.field: value`` overrides of this dataset's cells (after the study's own);
    ``{out_dir}`` in a string value is replaced by the study's out_dir."""
    prepare: List[str] = field(default_factory=list)
    """``rsfm`` commands that prepare the data, run once in order by ``--prepare`` (and by a
    local run), each as a process of its own; ``{out_dir}`` is replaced. Empty when the data is
    prepared already."""
    metric: Optional[str] = None
    """Metric of the tables and plots; null takes the task's (det: mAP, seg: mIoU)."""

    def __post_init__(self):
        check(bool(self.name) and all(c.isalnum() or c in "_-" for c in self.name), "name",
              f"must be letters, digits, _ or -, got {self.name!r}")
        check(self.task in TASKS, "task", f"must be one of {tuple(TASKS)}, got {self.task!r}")
        _check_commands(self.prepare, "prepare")

    @property
    def metric_name(self) -> str:
        return self.metric or get_task(self.task).metric


@dataclass
class StudyPretrain:
    """The study's own MAE pretraining of every preset, under one budget rule for all sizes."""

    config: str
    """Pretraining run config (rsfm pretrain); ``{preset}`` in the path is replaced by the
    preset, so each size can keep its own recipe (ZeRO-3 DeepSpeed config, micro batch)."""
    epochs: int
    """Pretraining length of the reference size, in epochs over the shards: with
    ``budget: steps`` every preset trains this long; with ``budget: flops`` it is the length of
    the largest (last) preset, and smaller ones train longer (see ``budget``)."""
    budget: Literal["steps", "flops"] = "steps"
    """The rule that makes sizes comparable. ``steps``: every preset sees the same images for
    the same optimizer steps (``epochs`` each, the global batch must agree), as the paper's
    400-epoch MillionAID pretraining of every size. ``flops``: every preset spends the largest
    preset's training FLOPs: ``round(epochs * F_last / F_preset)`` epochs, F the model FLOPs of
    one MAE training sample (``mae_train_flops``)."""
    overrides: Dict[str, Any] = field(default_factory=dict)
    """``section.field: value`` overrides of every pretraining run (``{out_dir}`` replaced);
    the study then sets ``model.preset``, ``train.epochs``, ``run_dir`` and
    ``checkpoint.resume=auto``."""
    prepare: List[str] = field(default_factory=list)
    """``rsfm`` commands that write the pretraining shards, run once like a dataset's
    ``prepare``; ``{out_dir}`` is replaced."""
    nproc: Optional[int] = None
    """Ranks of a local pretraining run (``deepspeed --num_gpus nproc`` when above 1); null
    takes the study's ``nproc``."""

    def __post_init__(self):
        check_choices(self)
        check(self.epochs > 0, "epochs", f"must be positive, got {self.epochs}")
        check(self.nproc is None or self.nproc >= 1, "nproc", f"must be >= 1, got {self.nproc}")
        _check_commands(self.prepare, "prepare")


# Fields every cell sets itself (rsfm_ds/study/grid.py:cell_overrides): a variant changes the
# architecture or the recipe, never which cell it is.
CELL_KEYS = ("backbone.preset", "backbone.pretrained", "data.fraction", "data.fraction_seed", "seed", "run_dir",
             "checkpoint.resume")


@dataclass
class StudyVariant:
    """One variant of the ablation axis: a named set of fine-tuning overrides (and optionally
    another backbone preset), crossed with every other axis of the grid."""

    overrides: Dict[str, Any] = field(default_factory=dict)
    """``section.field: value`` overrides of this variant's cells, applied after the study's and
    the dataset's (so they win); ``{out_dir}`` in a string value is replaced. Keys are fields of
    the fine-tuning run config, e.g. ``backbone.global_attn_indexes: [0, 1, 2, 3]`` (all
    global), ``backbone.scale_factors: [1.0]`` (single-scale head). Every cell's config is built
    before anything runs, so an unknown key or a bad value fails at once, naming the variant."""
    preset: Optional[str] = None
    """Backbone preset of this variant's cells in place of the grid's (e.g. a plain preset beside
    a parallel one of about the same size, `rsfm models`); it is pretrained like the grid's
    presets. Needs a study with one preset (otherwise the grid's presets would collapse onto
    it). Null keeps the grid's preset."""
    datasets: List[str] = field(default_factory=list)
    """Names of the datasets this variant runs on; empty: all of them. For a variant that only
    some tasks support (a single-scale head suits UperNet but not Oriented R-CNN, whose RPN reads
    five levels)."""

    def __post_init__(self):
        from ..models.preset_specs import PRESETS

        check(self.preset is None or self.preset in PRESETS, "preset",
              f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        for key in self.overrides:
            check(isinstance(key, str) and bool(key) and all(key.split(".")), "overrides",
                  f"keys are section.field names, got {key!r}")
            check(key not in CELL_KEYS, "overrides",
                  f"{key} is set by each cell" + ("; give the variant a preset" if key == "backbone.preset" else ""))
        check(len(set(self.datasets)) == len(self.datasets), "datasets", f"repeated: {self.datasets}")


@dataclass
class StudyConfig:
    """A study: datasets x presets x variants x (pretrained, scratch) x train fractions x seeds."""

    name: str = "scaling"
    """Name of the study (titles of the table and plots)."""
    out_dir: str = "runs/study/scaling"
    """Where pretraining runs, cells, results and plots go."""
    presets: List[str] = field(default_factory=lambda: ["debug_s", "debug", "debug_l"])
    """Backbone presets, smallest first (`rsfm models`)."""
    train_fractions: List[float] = field(default_factory=lambda: [1.0])
    """Fractions of each training set (nested seeded subsets: data.fraction)."""
    datasets: List[StudyDataset] = field(default_factory=list)
    """The downstream datasets."""
    pretrain: Optional[StudyPretrain] = None
    """The study's own MAE pretraining of each preset (then conversion to a backbone file that
    the preset's pretrained cells load); null: no pretraining stage."""
    pretrained: Optional[str] = None
    """Backbone weights made elsewhere, per preset, ``{preset}`` replaced (e.g.
    ``runs/convert/{preset}_backbone.safetensors``), instead of a ``pretrain`` stage."""
    scratch: bool = True
    """Also run every cell from scratch (``backbone.pretrained`` null), the baseline beside each
    pretrained cell. Must be true when the study has no pretrained cells."""
    seeds: List[int] = field(default_factory=lambda: [0])
    """Every cell is repeated with each seed (run seed: init, data order, augmentation); tables
    and plots show the mean and spread over them."""
    subset_seed: Optional[int] = 0
    """Seed of the training subsets (data.fraction_seed), the same for every repeat, so the
    spread measures training noise on fixed data; null draws each repeat's subset with its own
    seed (the spread then includes which images were kept)."""
    overrides: Dict[str, Any] = field(default_factory=dict)
    """``section.field: value`` overrides of every fine-tuning cell."""
    variants: Dict[str, StudyVariant] = field(default_factory=dict)
    """The ablation axis: variant name (letters, digits, _ and -) -> :class:`StudyVariant`
    (``overrides``, ``preset``, ``datasets``), in the order given; each cell of the grid runs
    once per variant. Empty: no variant axis (cell names and indices as without it)."""
    nproc: int = 1
    """Ranks per cell in a local run (``deepspeed --num_gpus nproc`` when above 1)."""
    jobs: int = 1
    """Stages a local run (``rsfm study`` without a mode) runs at once, each with
    ``cores // (jobs * ranks)`` threads per rank; ``rsfm study --jobs N`` overrides it. On a few
    cores, several single-thread cells of a small model finish sooner than one after another."""

    def __post_init__(self):
        from ..models.preset_specs import PRESETS

        check(bool(self.presets), "presets", "name at least one preset")
        for p in self.presets:
            check(p in PRESETS, "presets", f"unknown preset {p!r}; known: {', '.join(PRESETS)}")
        check(len(set(self.presets)) == len(self.presets), "presets", f"repeated: {self.presets}")
        check(bool(self.train_fractions), "train_fractions", "name at least one fraction")
        for f in self.train_fractions:
            check(0 < f <= 1, "train_fractions", f"each must be in (0, 1], got {f}")
        check(len(set(self.train_fractions)) == len(self.train_fractions), "train_fractions",
              f"repeated: {self.train_fractions}")
        check(bool(self.datasets), "datasets", "name at least one dataset")
        names = [d.name for d in self.datasets]
        check(len(set(names)) == len(names), "datasets", f"names must be distinct, got {names}")
        check(bool(self.seeds), "seeds", "name at least one seed")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", f"repeated: {self.seeds}")
        check(self.nproc >= 1, "nproc", f"must be >= 1, got {self.nproc}")
        check(self.jobs >= 1, "jobs", f"must be >= 1, got {self.jobs}")
        check(not (self.pretrain and self.pretrained), "pretrained",
              "give either a pretrain stage or weights made elsewhere, not both")
        check(self.scratch or self.has_pretrained, "scratch",
              "must be true: the study has no pretrained cells (neither pretrain nor pretrained is set)")
        self.variants = {name: _variant(name, value, names, len(self.presets)) for name, value in self.variants.items()}

    @property
    def has_pretrained(self) -> bool:
        """Whether the grid has pretrained cells."""
        return self.pretrain is not None or self.pretrained is not None

    @property
    def inits(self) -> List[str]:
        """The cell initialisations of the grid, pretrained first."""
        return (["pretrained"] if self.has_pretrained else []) + (["scratch"] if self.scratch else [])


def _variant(name: Any, value: Any, datasets: Sequence[str], presets: int) -> StudyVariant:
    """``variants.<name>`` as a :class:`StudyVariant`, checked against the study's datasets and
    presets (errors name ``variants.<name>.<field>``)."""
    where = f"variants.{name}"
    check(isinstance(name, str) and bool(name) and all(c.isalnum() or c in "_-" for c in name), "variants",
          f"names must be letters, digits, _ or -, got {name!r}")
    if isinstance(value, StudyVariant):
        variant = value
    else:
        check(value is None or isinstance(value, dict), where,
              f"expected a mapping (overrides, preset, datasets), got {value!r}")
        try:
            variant = load_config(StudyVariant, data=value or {})
        except ConfigError as e:
            raise ConfigError(f"{where}.{e}") from None
    for d in variant.datasets:
        check(d in datasets, f"{where}.datasets", f"unknown dataset {d!r}; the study has {list(datasets)}")
    check(variant.preset is None or presets == 1, f"{where}.preset",
          f"a variant's preset replaces the grid's: the study must have one preset, it has {presets}")
    return variant


def load_study(path: str, overrides: Sequence[str] = ()) -> StudyConfig:
    """The study config of ``path`` with ``key=value`` overrides (errors name file and field)."""
    return load_config(StudyConfig, path, overrides)


def fill(value: Any, cfg: StudyConfig) -> Any:
    """``value`` with ``{out_dir}`` replaced in every string, lists included."""
    if isinstance(value, str):
        return value.replace("{out_dir}", cfg.out_dir)
    if isinstance(value, (list, tuple)):
        return [fill(v, cfg) for v in value]
    return value


def as_override(key: str, value: Any) -> str:
    """``key=value`` for :func:`rsfm_ds.config.parse_overrides`."""
    import json

    # JSON is valid YAML flow syntax, so lists, numbers, booleans and null survive parse_overrides.
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


__all__ = ["StudyDataset", "StudyPretrain", "StudyVariant", "StudyConfig", "CELL_KEYS", "load_study", "fill",
           "as_override"]
