"""The shipped recipe configs: each loads, agrees with its DeepSpeed JSON, and each full-size
preset has an fp16 twin that differs from its bf16 recipe in precision alone."""
from __future__ import annotations

from pathlib import Path

import pytest

from rsfm_ds.config import load_config, to_dict
from rsfm_ds.engine.config import PretrainConfig
from rsfm_ds.engine.deepspeed_setup import load_ds_config, reconcile_ds_config
from rsfm_ds.engine.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("vit_b12x1", "vit_l12x4", "vit_1b3", "vit_2b4")
TWINS = [("pretrain", f"pretrain/{p}") for p in PRESETS] + [
    (task, f"{task}/{ds}_{p}") for task, names in (("det", ("dota2", "dior")), ("seg", ("potsdam", "loveda")))
    for ds in names for p in PRESETS]
PARTIAL = {"base.yaml", "recipe.yaml"}  # shared bases, not runs


def _load(family: str, path: Path):
    if family == "pretrain":
        return load_config(PretrainConfig, path)
    return TASKS[family].load_config(path)


def _run_configs():
    for family in ("pretrain", "det", "seg"):
        for path in sorted((ROOT / "configs" / family).glob("*.yaml")):
            if path.name not in PARTIAL:
                yield pytest.param(family, path, id=f"{family}/{path.name}")


@pytest.mark.parametrize("family,path", list(_run_configs()))
def test_every_recipe_loads_and_agrees_with_its_deepspeed_config(family, path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = _load(family, path)
    # 8 ranks: the paper's node; a global batch that does not divide would fail here.
    world = 8 if cfg.train.global_batch_size % (8 * cfg.train.micro_batch_size) == 0 else 1
    ds = reconcile_ds_config(load_ds_config(cfg.train.ds_config), micro_batch_size=cfg.train.micro_batch_size,
                             global_batch_size=cfg.train.global_batch_size, world_size=world,
                             precision=cfg.train.precision, clip_grad=cfg.optim.clip_grad,
                             source=cfg.train.ds_config)
    assert {name: ds[name]["enabled"] for name in ("bf16", "fp16")} == {
        name: cfg.train.precision == name for name in ("bf16", "fp16")}


@pytest.mark.parametrize("family,stem", TWINS, ids=[s for _, s in TWINS])
def test_fp16_twin_differs_from_the_bf16_recipe_in_precision_only(family, stem, monkeypatch):
    monkeypatch.chdir(ROOT)
    bf16 = to_dict(_load(family, ROOT / "configs" / f"{stem}.yaml"))
    fp16 = to_dict(_load(family, ROOT / "configs" / f"{stem}_fp16.yaml"))
    assert (bf16["train"]["precision"], fp16["train"]["precision"]) == ("bf16", "fp16")
    assert fp16["run_dir"] == bf16["run_dir"] + "_fp16"  # never resumes the other's checkpoints
    for cfg in (bf16, fp16):
        cfg.pop("run_dir")
        cfg["train"].pop("precision")
    bf16_ds, fp16_ds = (load_ds_config(c["train"].pop("ds_config")) for c in (bf16, fp16))
    assert fp16 == bf16
    assert fp16_ds["fp16"]["enabled"] is True and fp16_ds["fp16"]["loss_scale"] == 0  # dynamic scaling
    assert {k: v for k, v in fp16_ds.items() if k != "fp16"} == {k: v for k, v in bf16_ds.items() if k != "bf16"}
