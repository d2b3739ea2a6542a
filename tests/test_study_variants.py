"""The study's ablation axis: variants expand into cells, fail early, and are tabulated apart;
the single-scale pyramid option and the plain presets the ablations use."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from test_study import seg_dataset, write_study  # tests/ is on the import path

from rsfm_ds import study
from rsfm_ds.config import ConfigError
from rsfm_ds.models.presets import count_trainable, create_vit
from rsfm_ds.models.vitdet import SimpleFeaturePyramid, ViTDetConfig, build_vitdet

ROOT = Path(__file__).resolve().parents[1]



DOTA = dict(name="dota", task="det", config="configs/det/dota2_debug.yaml")

VARIANTS = {
    "vitdet": {},
    "all_window": {"overrides": {"backbone.global_attn_indexes": []}},
    "single_scale": {"overrides": {"backbone.scale_factors": [1.0]}, "datasets": ["potsdam"]},
    "plain": {"preset": "debug_plain", "overrides": {"backbone.drop_path_rate": 0.05}},
}


def ablation(tmp_path, variants=VARIANTS, **fields):
    base = dict(out_dir=str(tmp_path / "out"), presets=["debug"], train_fractions=[0.5, 1.0], seeds=[0, 1],
                pretrained="w/{preset}.safetensors", datasets=[seg_dataset(), DOTA], variants=variants)
    return study.load_study(str(write_study(tmp_path / "s.yaml", **{**base, **fields})))


def test_variants_expand_into_cells_with_their_overrides_applied(tmp_path):
    cfg = ablation(tmp_path)
    grid = study.cells(cfg)
    # potsdam: 4 variants x 2 inits x 2 fractions x 2 seeds; dota: single_scale is potsdam-only.
    assert len(grid) == 4 * 8 + 3 * 8 and [c.index for c in grid] == list(range(56))
    # Order: datasets, presets, variants (as declared), inits, fractions, seeds.
    assert [c.name for c in grid[:10]] == [
        "potsdam/debug/vitdet/pretrained/frac_0.5/seed_0", "potsdam/debug/vitdet/pretrained/frac_0.5/seed_1",
        "potsdam/debug/vitdet/pretrained/frac_1/seed_0", "potsdam/debug/vitdet/pretrained/frac_1/seed_1",
        "potsdam/debug/vitdet/scratch/frac_0.5/seed_0", "potsdam/debug/vitdet/scratch/frac_0.5/seed_1",
        "potsdam/debug/vitdet/scratch/frac_1/seed_0", "potsdam/debug/vitdet/scratch/frac_1/seed_1",
        "potsdam/debug/all_window/pretrained/frac_0.5/seed_0", "potsdam/debug/all_window/pretrained/frac_0.5/seed_1"]
    assert grid[24].name == "potsdam/debug_plain/plain/pretrained/frac_0.5/seed_0"
    assert [c.variant for c in grid[32::8]] == ["vitdet", "all_window", "plain"]
    assert {c.dataset.name for c in grid if c.variant == "single_scale"} == {"potsdam"}
    assert len({c.run_dir(cfg) for c in grid}) == len(grid)

    runs = {c.variant: study.cell_config(cfg, c) for c in grid[:32:8]}
    assert runs["vitdet"].backbone.global_attn_indexes is None  # the preset's own
    assert runs["vitdet"].backbone.scale_factors == (4.0, 2.0, 1.0, 0.5)
    assert runs["all_window"].backbone.global_attn_indexes == ()
    assert runs["single_scale"].backbone.scale_factors == (1.0,)
    plain = runs["plain"]
    assert plain.backbone.preset == "debug_plain" and plain.backbone.drop_path_rate == 0.05
    assert plain.backbone.pretrained == "w/debug_plain.safetensors"  # its own preset's backbone
    assert plain.run_dir == str(tmp_path / "out" / "cells" / "potsdam" / "debug_plain" / "plain" / "pretrained"
                                / "frac_0.5" / "seed_0")
    assert study.variant_overrides(cfg, grid[24]) == {"backbone.drop_path_rate": 0.05}
    assert study.variant_overrides(cfg, grid[0]) == {}
    # The overrides reach the built models: all-window blocks, the single stride-16 level.
    assert windows(build_vitdet(runs["all_window"].backbone)) == [8] * 4
    assert windows(build_vitdet(runs["vitdet"].backbone)) == [8, 0, 8, 0]  # 0: global
    assert windows(build_vitdet(plain.backbone)) == [8, 0] * 4
    assert build_vitdet(runs["single_scale"].backbone).out_strides == {"p4": 16}
    study.check_cells(cfg)  # every cell's config builds


def windows(backbone):
    """Window side of each block's attention (every branch of a parallel block shares it)."""
    return [b.attn.window_size if hasattr(b, "attn") else b.attns[0].attn.window_size for b in backbone.blocks]


def test_variant_preset_is_pretrained_like_the_grids(tmp_path):
    cfg = ablation(tmp_path, pretrained=None, scratch=False, datasets=[seg_dataset()],
                   pretrain=dict(config="configs/pretrain/debug.yaml", epochs=1))
    assert study.pretrain_presets(cfg) == ["debug", "debug_plain"]
    assert study.pretrain_config(cfg, "debug_plain").model.preset == "debug_plain"
    plain = next(c for c in study.cells(cfg) if c.variant == "plain")
    assert study.cell_config(cfg, plain).backbone.pretrained == str(
        tmp_path / "out" / "pretrain" / "debug_plain" / "backbone.safetensors")


@pytest.mark.parametrize("overrides, message", [
    ({"backbone.global_evry": 3}, r"^variants\.bad\.overrides: unknown key backbone\.global_evry; known fields"),
    ({"modle.global_attn_indexes": []}, r"^variants\.bad\.overrides: unknown key modle\.global_attn_indexes \(modle:"),
    ({"backbone.window_size": 0}, r"^variants\.bad\.overrides: backbone\.window_size: must be positive, got 0"),
    ({"backbone.scale_factors": [2.0]}, r"^variants\.bad\.overrides: backbone\.scale_factors: must be a descending"),
    ({"backbone.global_attn_indexes": [9]}, r"^variants\.bad\.overrides: backbone\.global_attn_indexes: must be"),
])
def test_a_bad_override_fails_before_anything_runs_naming_the_variant(tmp_path, overrides, message):
    cfg = ablation(tmp_path, variants={"vitdet": {}, "bad": {"overrides": overrides}}, datasets=[seg_dataset(
        prepare=[f"rsfm synth potsdam --out {tmp_path}/data --tiles 1 --size 256"])])
    with pytest.raises(ConfigError, match=message) as err:
        study.run_local(cfg, str(tmp_path / "s.yaml"), log=lambda *_: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()  # nothing ran


@pytest.mark.parametrize("variants, message", [
    ({"p": {"overrides": {"backbone.preset": "debug_l"}}}, r"variants\.p\.overrides: backbone\.preset is set by "
                                                           r"each cell; give the variant a preset"),
    ({"p": {"overrides": {"seed": 3}}}, r"variants\.p\.overrides: seed is set by each cell"),
    ({"p": {"preset": "vit_tiny"}}, r"variants\.p\.preset: unknown preset 'vit_tiny'"),
    ({"p": {"datasets": ["loveda"]}}, r"variants\.p\.datasets: unknown dataset 'loveda'"),
    ({"p": {"overides": {}}}, r"variants\.p\.overides: unknown field"),
    ({"a b": {}}, r"variants: names must be letters, digits, _ or -"),
    ({"p": [1]}, r"variants\.p: expected a mapping"),
])
def test_bad_variant_declarations_name_the_variant_at_load(tmp_path, variants, message):
    with pytest.raises(ConfigError, match=message):
        ablation(tmp_path, variants=variants)


def test_a_variant_preset_needs_a_single_grid_preset(tmp_path):
    with pytest.raises(ConfigError, match=r"variants\.plain\.preset: .* must have one preset, it has 2"):
        ablation(tmp_path, presets=["debug_s", "debug"], variants={"plain": {"preset": "debug_plain"}})


def test_a_study_without_variants_keeps_its_cell_names_and_indices(tmp_path):
    fields = dict(out_dir=str(tmp_path / "out"), presets=["debug_s", "debug"], train_fractions=[1.0], seeds=[0, 1],
                  pretrained="w/{preset}.safetensors", datasets=[seg_dataset()])
    plain = study.load_study(str(write_study(tmp_path / "a.yaml", **fields)))
    empty = study.load_study(str(write_study(tmp_path / "b.yaml", **fields, variants={})))
    expected = [f"potsdam/{p}/{i}/frac_1/seed_{s}" for p in ("debug_s", "debug") for i in ("pretrained", "scratch")
                for s in (0, 1)]
    for cfg in (plain, empty):
        grid = study.cells(cfg)
        assert [c.name for c in grid] == expected and [c.index for c in grid] == list(range(8))
        assert all(c.variant is None for c in grid)
        assert study.cell_config(cfg, grid[5]).run_dir == str(tmp_path / "out" / "cells" / expected[5])


def write_result(cfg, cell, value, step_time, memory, kind="cpu"):
    record = dict(dataset=cell.dataset.name, task=cell.dataset.task, metric="mIoU", preset=cell.preset,
                  params=study.preset_params(cell.preset), init=cell.init, fraction=cell.fraction, seed=cell.seed,
                  value=value, best=value, steps=30, seconds=1.0, world_size=1, run_dir=str(cell.run_dir(cfg)),
                  variant=cell.variant, variant_overrides=study.variant_overrides(cfg, cell),
                  step_time_s=step_time, peak_memory_gb=memory, peak_memory_kind=kind)
    cell.run_dir(cfg).mkdir(parents=True, exist_ok=True)
    cell.result_path(cfg).write_text(json.dumps(record))


def test_results_group_by_variant(tmp_path):
    variants = {"vitdet": {}, "all_window": {"overrides": {"backbone.global_attn_indexes": []}},
                "plain": {"preset": "debug_plain"}}
    cfg = ablation(tmp_path, variants=variants, train_fractions=[1.0], datasets=[seg_dataset()],
                   pretrained=None, scratch=True)
    # (value, step time, peak memory) per variant and seed; plain lacks seed 1.
    fabricated = {"vitdet": [(40.0, 0.2, 1.0), (44.0, 0.4, 2.0)], "all_window": [(41.0, 0.1, 1.0), (45.0, 0.3, 1.0)],
                  "plain": [(30.0, 0.5, 3.0), None]}
    for cell in study.cells(cfg):
        entry = fabricated[cell.variant][cell.seed]
        if entry is not None:
            write_result(cfg, cell, *entry)
    paths = study.collect(cfg, log=lambda *_: None)
    rows = {r["variant"]: r for r in csv.DictReader(paths["summary"].open())}
    assert set(rows) == {"vitdet", "all_window", "plain"}
    assert float(rows["vitdet"]["mean"]) == 42.0 and float(rows["vitdet"]["std"]) == pytest.approx(math.sqrt(8))
    assert float(rows["all_window"]["mean"]) == 43.0
    assert rows["plain"]["n"] == "1" and rows["plain"]["std"] == "" and rows["plain"]["preset"] == "debug_plain"
    assert float(rows["vitdet"]["step_time_s"]) == pytest.approx(0.3)
    assert float(rows["vitdet"]["peak_memory_gb"]) == pytest.approx(1.5)
    assert rows["vitdet"]["params"] == rows["plain"]["params"] == "1681920"
    assert [r["variant"] for r in csv.DictReader(paths["csv"].open())] == ["vitdet", "vitdet", "all_window",
                                                                           "all_window", "plain"]
    table = paths["markdown"].read_text()
    header = "| variant | preset | params (M) | init | 1 of train | step time (s) | peak memory (GiB, process peak RSS) |"
    assert header in table
    assert "| vitdet | debug | 1.68 | scratch | 42.00 ± 2.83 | 0.3 | 1.50 |" in table
    # 43 - 42 = 1 < 2.83: within the spread of the reference variant, marked.
    assert "| all_window | debug | 1.68 | scratch | 43.00 ± 2.83 ~ | 0.2 | 1.00 |" in table
    # One seed: no spread, so no mark either way; n shown.
    assert "| plain | debug_plain | 1.68 | scratch | 30.00 (n=1) | 0.5 | 3.00 |" in table
    plot = paths["plots"] / "potsdam_variants.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plots/potsdam_variants.png" in table


def test_aggregate_reads_results_without_variant_or_cost_fields():
    old = [dict(dataset="d", preset="debug", init="scratch", fraction=1.0, seed=s, value=v)
           for s, v in ((0, 1.0), (1, 3.0))]
    (key, summary), = study.aggregate(old).items()
    assert key == ("d", "debug", "scratch", 1.0, None)
    assert summary.mean == 2.0 and summary.step_time is None and summary.peak_memory_kind is None


def test_step_time_is_the_median_window_of_the_metrics_log(tmp_path):
    lines = [{"step": 10, "perf/step_time_s": 5.0}, {"step": 20, "perf/step_time_s": 1.0}, {"step": 30},
             {"step": 30, "eval/mIoU": 0.4}, {"step": 40, "perf/step_time_s": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 5')
    assert study.step_time(tmp_path) == 2.0
    assert study.step_time(tmp_path / "missing") is None
    memory = study.peak_memory()
    assert memory["peak_memory_kind"] == "cpu" and memory["peak_memory_gb"] > 0.01


# --- the options the ablations need --------------------------------------------------------

def test_single_scale_pyramid_builds_one_stride_16_level():
    x = torch.randn(2, 32, 6, 6)  # [B, D, h, w] at stride 16
    single = SimpleFeaturePyramid(32, out_channels=8, patch_size=16, scale_factors=(1.0,))
    assert single.out_strides == {"p4": 16} and set(single(x)) == {"p4"}
    assert single(x)["p4"].shape == (2, 8, 6, 6)
    with_p5 = SimpleFeaturePyramid(32, out_channels=8, patch_size=16, scale_factors=(1.0,), extra_p6=True)
    assert with_p5.out_strides == {"p4": 16, "p5": 32} and with_p5(x)["p5"].shape == (2, 8, 3, 3)
    full = SimpleFeaturePyramid(32, out_channels=8, patch_size=16)
    assert {k: tuple(v.shape[-2:]) for k, v in full(x).items()} == {"p2": (24, 24), "p3": (12, 12), "p4": (6, 6),
                                                                    "p5": (3, 3)}
    # The single level holds only the stride-16 block's parameters: a strict subset of the full pyramid's.
    assert count_trainable(single) == count_trainable(full.levels["p4"])
    for bad in ((2.0,), (1.0, 2.0), (1.0, 3.0), ()):
        with pytest.raises(ValueError, match="scale_factors"):
            SimpleFeaturePyramid(32, 8, 16, scale_factors=bad)
    with pytest.raises(ConfigError, match=r"scale_factors: must be a descending subset"):
        ViTDetConfig(scale_factors=(0.5,))


def test_single_scale_segmentation_model_trains_on_the_one_level():
    from rsfm_ds.models.heads.segmentation_model import SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel.build(ViTDetConfig(preset="debug_s", img_size=32, window_size=1, out_channels=16,
                                                 scale_factors=(1.0,)), num_classes=3)
    assert model.head.decode.in_keys == ("p4",)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    assert model.logits(images).shape == (2, 3, 32, 32)
    losses = model(dict(image=images, label=labels))
    losses["loss"].backward()
    assert model.backbone.pyramid.levels["p4"].lateral[0].weight.grad.abs().sum() > 0


def hand_count(d, m, depth, branches, patch=16, chans=3):
    """timm ViT counting with no qkv bias and no position parameters: patch projection, class
    token, final norm, and per branch norm + qkv + projection, norm + two-layer MLP."""
    per_branch = (2 * d + 3 * d * d + d * d + d) + (2 * d + d * m + m + m * d + d)
    return chans * patch * patch * d + d + d + 2 * d + depth * branches * per_branch


def test_plain_presets_match_their_parallel_twins_parameter_counts():
    plain, parallel = create_vit("debug_plain"), create_vit("debug")
    numel = sum(p.numel() for p in plain.parameters())
    assert numel == sum(p.numel() for p in parallel.parameters()) == hand_count(128, 512, 8, 1) == 1_681_920
    assert len(plain.blocks) == 8 and len(parallel.blocks) == 4
    # vit_l48x1 vs vit_l12x4: the published 605,261,824 of the 12 x 4 model.
    assert study.preset_params("vit_l48x1") == hand_count(1024, 4096, 48, 1) == 605_261_824
    assert study.preset_params("vit_l12x4") == 605_261_824
    models_doc = (ROOT / "docs" / "models.md").read_text()
    assert "| `debug_plain` | 128 | 512 | 4 | 8 x 1 | 1.68 |" in models_doc
    assert "| `vit_l48x1` | 1024 | 4096 | 16 | 48 x 1 | 605.26 |" in models_doc
