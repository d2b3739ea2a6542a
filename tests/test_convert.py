"""Checkpoint conversion (rsfm_ds.checkpoint) on real 2-rank ZeRO-3 checkpoints.

One 2-rank pretraining run (debug preset, 2 steps, a checkpoint per step) is shared by every test.
Launches are what cost time here (~20-30 s each), so there are four in all: the source run, the
2 -> 1 resume, the 1 -> 2 resume (from the 1-rank run's own checkpoint) and the ZeRO-3 loading
script.

What "the same loss at the first resumed step" means (test_reshard_then_resume): the loss the
resumed run logs for its first step equals, bit for bit, the loss a single process computes from
the source checkpoint's fp32 weights (cast to bf16, as the engine casts its master weights) on the
batches that the resumed run's ranks read at the documented data position
(``resharded_position``), with the masks of the documented reseeded generators
(``resharded_seed``), averaged as the engine averages (float64 sum over micro-batches and ranks).
It holds bit for bit because the universal checkpoint restores the fp32 masters exactly, CPU
kernels are deterministic at one thread, and the oracle uses ZeRO-3's replacement of
``F.linear`` (matmul + bias, which rounds differently in bf16 than ``addmm``). The same oracle,
given the source ranks' saved generator states, reproduces the source run's own logged loss, which
validates it. After each resharded resume the Adam step count and weight decay of every optimizer
group, as saved by the resumed run, are checked too: DeepSpeed's universal loader alone gets both
wrong (CheckpointManager.load in engine/checkpointing.py corrects them).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rsfm_ds.checkpoint import (inspect_checkpoint, load_backbone, mae_to_backbone, open_source,
                                resample_pos_embed, reshard, to_timm, zero_to_fp32)
from rsfm_ds.checkpoint import layout
from rsfm_ds.config import ConfigError
from rsfm_ds.engine.checkpointing import rank_rng_state, resharded_position, resharded_seed, resume_ds_config
from rsfm_ds.models.mae import create_mae
from rsfm_ds.models.presets import create_vit
from rsfm_ds.models.vit import sincos_pos_embed_2d

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ranks: int, args, timeout: int = 600) -> None:
    cmd = [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def pretrain(ranks: int, run_dir: Path, manifest: Path, *overrides: str) -> None:
    launch(ranks, ["--module", "rsfm_ds.cli", "pretrain", "--config", "configs/pretrain/debug.yaml",
                   f"run_dir={run_dir}", f"data.shards={manifest}", "log.every_steps=1",
                   "checkpoint.every_steps=1", "checkpoint.keep_last=10",
                   # Decoding in the rank (the same batches as one worker) spares a worker process
                   # per rank here and per loader in the oracle.
                   "data.num_workers=0", *overrides])


def losses(run_dir: Path) -> dict:
    return {r["step"]: r["train/loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def source_run(millionaid_shards, tmp_path_factory) -> Path:
    """2 ranks, 2 steps of 3 per epoch (120 samples, global batch 32, drop_last), tags step 1 and 2."""
    run_dir = tmp_path_factory.mktemp("source")
    pretrain(2, run_dir, millionaid_shards, "train.max_steps=2")
    return run_dir


@pytest.fixture(scope="module")
def ckpts(source_run) -> Path:
    return source_run / "checkpoints"


def tag(ckpts: Path, step: int) -> Path:
    return ckpts / layout.tag_for(step)


# --- zero-to-fp32 ---------------------------------------------------------------------------------

@pytest.mark.distributed
def test_zero_to_fp32_equals_deepspeed_bit_for_bit(ckpts, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    reference = get_fp32_state_dict_from_zero_checkpoint(str(ckpts), tag="step_00000002")
    result = zero_to_fp32(ckpts, tmp_path / "one")  # the folder: newest complete tag
    assert [f.name for f in result.files] == ["model.safetensors"]
    ours = load_file(tmp_path / "one" / "model.safetensors")
    assert list(ours) == list(reference)
    for k, v in reference.items():
        assert ours[k].dtype == torch.float32 and torch.equal(ours[k], v), k
    assert {k: result.metadata[k] for k in ("preset", "step", "world_size", "samples_seen")} == \
        {"preset": "debug", "step": "2", "world_size": "2", "samples_seen": "64"}

    sharded = zero_to_fp32(tag(ckpts, 2), tmp_path / "sharded", max_shard_size="1MB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((tmp_path / "sharded" / s).stat().st_size <= 1_000_000 + 2 ** 16 for s in shards)
    assert [p.name for p in sharded.files] == shards + ["model.safetensors.index.json"]
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in reference.values())
    reassembled = open_source(tmp_path / "sharded" / "model.safetensors.index.json").state_dict()
    assert list(reassembled) == list(reference)
    assert all(torch.equal(reassembled[k], v) for k, v in reference.items())


@pytest.mark.distributed
def test_newest_complete_tag_wins_over_latest(ckpts, tmp_path):
    copy = tmp_path / "checkpoints"
    shutil.copytree(ckpts, copy)
    (copy / "step_00000002" / layout.COMPLETE_MARKER).unlink()  # as if killed while saving
    (copy / "latest").write_text("step_00000002")
    assert layout.resolve_tag_dir(copy) == copy / "step_00000001"
    assert layout.resolve_tag_dir(copy, "step_00000002") == copy / "step_00000002"
    for p in copy.glob("*/COMPLETE"):
        p.unlink()  # no markers at all: a foreign DeepSpeed checkpoint, DeepSpeed's `latest` decides
    assert layout.resolve_tag_dir(copy) == copy / "step_00000002"


@pytest.mark.distributed
def test_conversion_names_a_damaged_file_and_warns_on_an_unmarked_tag(ckpts, tmp_path, capsys, caplog):
    from rsfm_ds.cli import main

    copy = tmp_path / "checkpoints"
    shutil.copytree(ckpts, copy)
    cut = copy / "step_00000002" / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a partial copy
    for source in [copy, copy / "step_00000002"]:  # the newest tag, or named
        assert main(["convert", "zero-to-fp32", str(source), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"damaged checkpoint: {cut}: not a whole torch file" in err, err
        assert "an older complete checkpoint: --tag step_00000001" in err
    cut.unlink()
    assert main(["convert", "reshard", str(copy), str(tmp_path / "universal")]) == 2
    assert f"{cut}: missing (rank 1 of 2)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "universal").exists()

    # A tag cut off before its COMPLETE marker, but whole, converts with a warning.
    (copy / "step_00000001" / layout.COMPLETE_MARKER).unlink()
    with caplog.at_level("WARNING", logger="rsfm_ds.checkpoint.layout"):
        zero_to_fp32(copy / "step_00000001", tmp_path / "unmarked")
    assert "step_00000001 has no COMPLETE marker" in caplog.text
    zero_to_fp32(ckpts / "step_00000001", tmp_path / "marked")
    unmarked = load_file(tmp_path / "unmarked" / "model.safetensors")
    marked = load_file(tmp_path / "marked" / "model.safetensors")
    assert list(unmarked) == list(marked) and all(torch.equal(unmarked[k], v) for k, v in marked.items())


# A user's own script resuming with DeepSpeed's API alone: the folder, no tag.
LOAD_LATEST_SCRIPT = r'''
import json, sys
import torch
from safetensors.torch import save_file
import deepspeed
from rsfm_ds.config import load_config
from rsfm_ds.engine.config import PretrainConfig
from rsfm_ds.engine.deepspeed_setup import build_model, initialize
from rsfm_ds.engine.loop import start_run
from rsfm_ds.engine.param_groups import build_param_groups
from rsfm_ds.models.mae import build_mae

config, ckpt_dir, out = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
cfg = load_config(PretrainConfig, config, [f"run_dir={out}/run"])
run = start_run(cfg.run_dir, cfg.train, cfg.optim.clip_grad)
model = build_model(lambda: build_mae(cfg.model), run.ds_config, cfg.model.zero_init)
engine, _ = initialize(model, build_param_groups(model, cfg.optim.weight_decay), run.ds_config, cfg.optim)
path, client_state = engine.load_checkpoint(ckpt_dir)
with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
    weights = {k: v.detach().float().clone().contiguous() for k, v in engine.module.state_dict().items()}
if run.rank == 0:
    save_file(weights, f"{out}/loaded.safetensors")
    json.dump({"path": path, "step": client_state["step"]}, open(f"{out}/loaded.json", "w"))
'''


@pytest.mark.distributed
def test_deepspeeds_own_tools_find_the_newest_complete_tag(source_run, ckpts, tmp_path):
    copy = tmp_path / "checkpoints"
    shutil.copytree(ckpts, copy)
    assert (copy / layout.LATEST_FILE).read_text() == "step_00000002"
    # A newer tag cut off while saving (no COMPLETE marker) is not what `latest` names.
    shutil.copytree(copy / "step_00000002", copy / "step_00000003")
    (copy / "step_00000003" / layout.COMPLETE_MARKER).unlink()
    ours = load_file(zero_to_fp32(copy, tmp_path / "ours").files[0])

    # DeepSpeed's bundled zero_to_fp32.py as its documentation runs it: in the folder, output only.
    proc = subprocess.run([sys.executable, "zero_to_fp32.py", ".", str(tmp_path / "ds"), "--safe_serialization"],
                          cwd=copy, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    theirs = load_file(tmp_path / "ds" / "model.safetensors")
    assert sorted(theirs) == sorted(ours) and all(torch.equal(theirs[k], v) for k, v in ours.items())

    script = tmp_path / "load_latest.py"
    script.write_text(LOAD_LATEST_SCRIPT)
    launch(2, [str(script), str(source_run / "config.yaml"), str(copy), str(tmp_path)])
    loaded = json.loads((tmp_path / "loaded.json").read_text())
    assert (Path(loaded["path"]).parent.name, loaded["step"]) == ("step_00000002", 2)
    # The module holds the checkpoint's weights (bf16 training: the bf16 copy of the fp32 masters).
    module = load_file(tmp_path / "loaded.safetensors")
    assert all(torch.equal(module[k], v.to(torch.bfloat16).float()) for k, v in ours.items())


# --- backbone, position table, timm ---------------------------------------------------------------

@pytest.mark.distributed
def test_backbone_forward_equals_mae_encoder(ckpts, tmp_path):
    mae = create_mae("debug", img_size=96)
    mae.load_state_dict(open_source(ckpts).state_dict())
    mae.eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = mae.encoder.forward_features(x)  # the unmasked encoder

    zero_to_fp32(ckpts, tmp_path / "fp32")
    for src in (ckpts, tmp_path / "fp32", tmp_path / "fp32" / "model.safetensors"):
        out = tmp_path / "backbone.safetensors"
        result = mae_to_backbone(src, out, img_size=512)
        weights = load_file(out)
        assert not any(k.startswith(("decoder", "mask_token", "encoder.")) or k == "pos_embed" for k in weights)
        vit = create_vit("debug", img_size=96).eval()
        vit.load_state_dict(weights)  # strict: exactly the backbone's keys
        with torch.no_grad():
            assert torch.equal(vit.forward_features(x), expected), src
        assert result.num_params == sum(v.numel() for v in weights.values())
    sidecar = json.loads((tmp_path / "backbone.json").read_text())
    assert {k: sidecar[k] for k in ("format", "format_version", "preset", "step", "samples_seen", "img_size",
                                    "grid", "dtype", "with_pos_embed")} == \
        {"format": "rsfm-backbone", "format_version": 1, "preset": "debug", "step": 2, "samples_seen": 64,
         "img_size": 512, "grid": [32, 32], "dtype": "fp32", "with_pos_embed": False}

    mae_to_backbone(ckpts, tmp_path / "bf16.safetensors", dtype="bf16")
    half = load_file(tmp_path / "bf16.safetensors")
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, weights[k].bfloat16()) for k, v in half.items())


@pytest.mark.distributed
def test_with_pos_embed_and_resampling(ckpts, tmp_path):
    out = tmp_path / "with_pos.safetensors"
    mae_to_backbone(ckpts, out, img_size=128, with_pos_embed=True)
    table = load_file(out)["pos_embed"]
    expected = sincos_pos_embed_2d(128, (8, 8), cls_token=True)
    assert torch.equal(table, expected)
    assert resample_pos_embed(table, (8, 8)) is table  # same grid: the identity
    assert torch.equal(resample_pos_embed(table, (32, 32)), sincos_pos_embed_2d(128, (32, 32), cls_token=True))
    assert torch.equal(resample_pos_embed(table, (50, 64)), sincos_pos_embed_2d(128, (50, 64), cls_token=True))
    learned = torch.randn(1, 1 + 36, 128)
    assert resample_pos_embed(learned, (6, 6)) is learned
    assert resample_pos_embed(learned, (8, 8)).shape == (1, 1 + 64, 128)  # interpolated by timm


@pytest.mark.distributed
def test_to_timm_round_trip(ckpts, tmp_path):
    import timm

    out = tmp_path / "rsfm_debug.safetensors"
    result = to_timm(ckpts, out)
    assert result.metadata["timm_model"] == "rsfm_debug"
    model = timm.create_model("rsfm_debug", pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    mae = create_mae("debug", img_size=96)
    mae.load_state_dict(open_source(ckpts).state_dict())
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))  # any size: the table is recomputed
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), mae.eval().encoder.forward_features(x))
    with pytest.raises(ValueError, match=r"\.safetensors"):
        to_timm(ckpts, tmp_path / "rsfm_debug.pth")


# --- load_backbone --------------------------------------------------------------------------------

@pytest.mark.distributed
def test_load_backbone_reports_and_strictness(ckpts, tmp_path):
    from rsfm_ds.models.vitdet import create_vitdet, new_parameter_names

    expected = create_vit("debug", img_size=96)
    expected.load_state_dict(load_file(mae_to_backbone(ckpts, tmp_path / "b.safetensors").files[0]))
    decoder_keys = sorted(k for k in open_source(ckpts).infos() if not k.startswith("encoder."))

    vit = create_vit("debug", img_size=96, num_classes=10)  # a new classifier head is allowed
    report = load_backbone(vit, ckpts)
    assert report.missing_keys == ["head.weight", "head.bias"] and report.unexpected_keys == []
    assert sorted(report.dropped_keys) == decoder_keys
    assert all(torch.equal(vit.state_dict()[k], v) for k, v in expected.state_dict().items())

    to_timm(ckpts, tmp_path / "t.safetensors")
    det = torch.nn.ModuleDict({"backbone": create_vitdet("debug", img_size=128, window_size=4),
                               "head": torch.nn.Linear(128, 5)})
    report = load_backbone(det, tmp_path / "t.safetensors", prefix="backbone")
    new = ["backbone." + k for k in new_parameter_names(det["backbone"])]
    assert report.missing_keys == new and report.unexpected_keys == [] and report.dropped_keys == ["cls_token"]
    assert all(torch.equal(det.state_dict()["backbone." + k], v) for k, v in expected.state_dict().items()
               if k != "cls_token")

    # A wrong preset fails on its first mismatched key, naming both shapes, before anything is
    # copied (so the big models can live on the meta device).
    with torch.device("meta"):
        vit_b = create_vit("vit_b12x1")
        det_b = torch.nn.ModuleDict({"backbone": create_vitdet("vit_b12x1", img_size=64)})
    with pytest.raises(ValueError) as err:
        load_backbone(vit_b, ckpts)
    assert "'cls_token'" in str(err.value) and "(1, 1, 128)" in str(err.value) and "(1, 1, 768)" in str(err.value)
    with pytest.raises(ValueError, match=r"'backbone.patch_embed.proj.weight' .*\(128, 3, 16, 16\).*\(768, 3, 16, 16\)"):
        load_backbone(det_b, ckpts, prefix="backbone.")
    from rsfm_ds.checkpoint.backbone import check_preset

    shapes = {k: v.shape for k, v in open_source(tmp_path / "t.safetensors").infos().items()}
    with pytest.raises(ValueError, match=r"'cls_token' has shape \(1, 1, 128\) in the checkpoint, \(1, 1, 768\)"):
        check_preset(shapes, "vit_b12x1", "t.safetensors")
    assert check_preset(shapes, None, "t.safetensors") == "debug"

    partial = {k: v for k, v in load_file(tmp_path / "t.safetensors").items() if not k.startswith("norm.")}
    partial["extra.weight"] = torch.zeros(3)
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match=r"missing backbone keys norm.weight, norm.bias.*extra.weight"):
        load_backbone(create_vit("debug"), tmp_path / "partial.safetensors")
    report = load_backbone(create_vit("debug"), tmp_path / "partial.safetensors", strict_backbone=False)
    assert report.missing_keys == ["norm.weight", "norm.bias"] and report.unexpected_keys == ["extra.weight"]


ZERO3_SCRIPT = '''
import json, sys
import deepspeed, torch
from safetensors.torch import save_file
from rsfm_ds.checkpoint import load_backbone
from rsfm_ds.models.presets import create_vit
from rsfm_ds.models.vitdet import create_vitdet

from rsfm_ds.engine.deepspeed_setup import init_distributed

zero_dir, converted, out = sys.argv[-3:]
init_distributed()
rank = torch.distributed.get_rank()
# Small parameters (biases, norms) stay replicated, the rest is partitioned: both paths run.
ds = {"train_micro_batch_size_per_gpu": 1,
      "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1000}}
torch.manual_seed(rank)  # different random init per rank: only the loaded values may agree
with deepspeed.zero.Init(config_dict_or_path=ds):
    models = {"vit": create_vit("debug", img_size=96),
              "vitdet": torch.nn.ModuleDict({"backbone": create_vitdet("debug", img_size=128, window_size=4)})}
results = {}
for name, model in models.items():
    partitioned = sum(p.numel() == 0 for p in model.parameters())
    # The ViT reads the ZeRO checkpoint directly, the ViTDet backbone the converted file.
    if name == "vit":
        report = load_backbone(model, zero_dir)
    else:
        report = load_backbone(model, converted, prefix="backbone.")
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{out}/{name}_rank{rank}.safetensors")
    results[name] = dict(partitioned=partitioned, missing=report.missing_keys, unexpected=report.unexpected_keys,
                         dropped=report.dropped_keys, loaded=len(report.loaded))
if rank == 0:
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f)
'''


@pytest.mark.distributed
def test_load_into_zero3_partitioned_equals_plain(ckpts, tmp_path):
    from rsfm_ds.models.vitdet import create_vitdet

    converted = mae_to_backbone(ckpts, tmp_path / "backbone.safetensors").files[0]
    script = tmp_path / "zero3_load.py"
    script.write_text(ZERO3_SCRIPT)
    launch(2, [str(script), str(ckpts), str(converted), str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())

    plain = {"vit": create_vit("debug", img_size=96),
             "vitdet": torch.nn.ModuleDict({"backbone": create_vitdet("debug", img_size=128, window_size=4)})}
    for name, model in plain.items():
        if name == "vit":
            report = load_backbone(model, ckpts)
        else:
            report = load_backbone(model, converted, prefix="backbone.")
        r = results[name]
        assert r["partitioned"] > 0, "the script's model was not partitioned"
        assert (r["missing"], r["unexpected"], r["dropped"], r["loaded"]) == \
            (report.missing_keys, report.unexpected_keys, report.dropped_keys, len(report.loaded))
        loaded = set(report.loaded)
        for rank in range(2):
            gathered = load_file(tmp_path / f"{name}_rank{rank}.safetensors")
            for key, value in model.state_dict().items():
                if key in loaded:  # new parameters keep their (per-rank random) initialisation
                    assert torch.equal(gathered[key], value), (name, rank, key)


# --- reshard, then resume on another world size ---------------------------------------------------

def oracle_loss(run_dir: Path, weights: Path, world: int, epoch: int, micro: int, generators) -> float:
    """The loss the engine logs for one step at world size ``world``, computed in this process (see
    the module docstring)."""
    from deepspeed.runtime.zero.linear import zero3_linear_wrap

    from rsfm_ds.config import load_config
    from rsfm_ds.data.pretrain.loader import build_pretrain_loader
    from rsfm_ds.engine.config import PretrainConfig

    cfg = load_config(PretrainConfig, str(run_dir / "config.yaml"), [])
    m, t = cfg.model, cfg.train
    mae = create_mae(m.preset, img_size=m.img_size, norm_pix_loss=m.norm_pix_loss, mask_ratio=m.mask_ratio,
                     decoder=m.decoder)
    mae.load_state_dict(open_source(weights).state_dict())
    mae.to(torch.bfloat16)
    accum = t.global_batch_size // (t.micro_batch_size * world)
    threads, linear = torch.get_num_threads(), torch.nn.functional.linear
    torch.set_num_threads(1)
    torch.nn.functional.linear = zero3_linear_wrap
    try:
        total = 0.0
        for rank in range(world):
            batches = iter(build_pretrain_loader(cfg.data, t.micro_batch_size, rank, world, epoch=epoch,
                                                 start_batch=micro))
            for _ in range(accum):
                with torch.no_grad():
                    images = next(batches).images.to(torch.bfloat16)
                    total += mae(images, m.mask_ratio, generators[rank])[0].item()
    finally:
        torch.set_num_threads(threads)
        torch.nn.functional.linear = linear
    return total / (accum * world)


def saved_generators(tag_dir: Path, world: int):
    gens = []
    for rank in range(world):
        g = torch.Generator()
        g.set_state(layout.client_state(tag_dir, rank)["rng"]["generator"])
        gens.append(g)
    return gens


def adam_groups(tag_dir: Path):
    """``(step, weight_decay, lr_scale)`` of each optimizer group saved in rank 0's ZeRO file."""
    states = layout.load_deepspeed_pickle(layout.optim_state_files(tag_dir)[0])
    inner = states["optimizer_state_dict"]["optimizer_state_dict"]
    return [(int(inner["state"][i]["step"]), g["weight_decay"], g["lr_scale"])
            for i, g in enumerate(inner["param_groups"])]


def reseeded_generators(step: int, world: int, seed: int = 0):
    return [torch.Generator().manual_seed(resharded_seed(seed, step, r)) for r in range(world)]


@pytest.mark.distributed
def test_reshard_then_resume_on_other_world_sizes(source_run, ckpts, millionaid_shards, tmp_path):
    # The oracle reproduces the source run's own step 2 from its step-1 checkpoint and saved RNG.
    state = layout.client_state(tag(ckpts, 1))
    assert (state["epoch"], state["micro_in_epoch"]) == (0, 1)
    assert oracle_loss(source_run, tag(ckpts, 1), 2, 0, 1, saved_generators(tag(ckpts, 1), 2)) == \
        losses(source_run)[2]

    # 2 -> 1: 32 samples into epoch 0 are micro-batch 2 of 6 on one rank (2 per step).
    one = tmp_path / "one"
    universal = reshard(ckpts, one / "checkpoints", tag="step_00000001")
    assert universal == one / "checkpoints" / "step_00000001" and layout.is_universal(universal)
    assert (universal / layout.COMPLETE_MARKER).is_file()
    assert inspect_checkpoint(universal).kind == "deepspeed-universal"
    pretrain(1, one, millionaid_shards, "train.max_steps=2", "--resume", str(universal))
    log = (one / "train.log").read_text()
    assert "saved by 2 ranks, now 1" in log and "epoch 0, micro-batch 2 of 6" in log
    assert losses(one)[2] == oracle_loss(one, tag(ckpts, 1), 1, 0, 2, reseeded_generators(1, 1))
    # The optimizer continued with each group's own hyperparameters and Adam step count, which
    # DeepSpeed's universal loader alone gets wrong (CheckpointManager.load).
    source_groups = adam_groups(tag(ckpts, 1))
    assert [g[0] for g in source_groups] == [1, 1] and source_groups[0][1] != source_groups[1][1]
    assert adam_groups(tag(one / "checkpoints", 2)) == [(2, wd, scale) for _, wd, scale in source_groups]

    # 1 -> 2, from the 1-rank run's own checkpoint at step 2: micro-batch 4 of 6 = 64 samples,
    # which is micro-batch 2 of 3 on each of two ranks.
    one_ckpt = tag(one / "checkpoints", 2)
    assert layout.saved_world_size(one_ckpt) == 1
    assert layout.client_state(one_ckpt)["micro_in_epoch"] == 4
    two = tmp_path / "two"
    universal = reshard(one_ckpt, two / "checkpoints" / "step_00000002")
    pretrain(2, two, millionaid_shards, "train.max_steps=3", "--resume", "auto")
    assert "saved by 1 ranks, now 2" in (two / "train.log").read_text()
    assert losses(two)[3] == oracle_loss(two, one_ckpt, 2, 0, 2, reseeded_generators(2, 2))
    assert adam_groups(tag(two / "checkpoints", 3)) == [(3, wd, scale) for _, wd, scale in source_groups]
    with pytest.raises(FileExistsError):
        reshard(one_ckpt, universal)


@pytest.mark.distributed
def test_resume_config_for_checkpoint_kinds(ckpts, tmp_path):
    ds = {"zero_optimization": {"stage": 3}}
    assert resume_ds_config(ds, tag(ckpts, 1), 2) == ds
    with pytest.raises(ConfigError, match="saved by 2 ranks and this run has 1.*rsfm convert reshard"):
        resume_ds_config(ds, tag(ckpts, 1), 1)
    universal = reshard(tag(ckpts, 1), tmp_path / "u")
    for world in (1, 2, 3):
        assert resume_ds_config(ds, universal, world)["checkpoint"] == {"load_universal": True}
    # Same world size from a universal checkpoint: each rank still gets its own RNG state, although
    # DeepSpeed hands every rank rank 0's client state.
    rank0 = layout.client_state(universal, 0)
    for rank in range(2):
        mine = rank_rng_state(universal, rank, rank0)
        assert torch.equal(mine["generator"], layout.client_state(tag(ckpts, 1), rank)["rng"]["generator"])


def test_resharded_position_is_kept_in_samples():
    state = dict(epoch=3, micro_in_epoch=2, world_size=2, config={"train": {"micro_batch_size": 16}})
    # 64 samples of epoch 3 consumed: 2 steps of 32; one rank with 2 micro-batches per step.
    assert resharded_position(state, 32, steps_per_epoch=3, accum=2) == (3, 4)
    assert resharded_position(state, 32, steps_per_epoch=2, accum=2) == (4, 0)  # epoch done
    assert resharded_position(state, 48, steps_per_epoch=3, accum=1) == (3, 1)  # rounded down
    assert resharded_seed(0, 5, 1) != resharded_seed(0, 5, 0)


# --- inspect and the command line -----------------------------------------------------------------

@pytest.mark.distributed
def test_inspect_and_cli(ckpts, tmp_path, capsys):
    from rsfm_ds.cli import main

    folder = inspect_checkpoint(ckpts)
    assert folder.tags == [("step_00000001", True), ("step_00000002", True)]
    assert (folder.kind, folder.preset, folder.step, folder.samples_seen, folder.world_size) == \
        ("deepspeed-zero", "debug", 2, 64, 2)
    n_mae = sum(p.numel() for p in create_mae("debug", img_size=96).parameters())
    n_vit = sum(p.numel() for p in create_vit("debug").parameters())
    assert (folder.num_params, folder.num_backbone_params) == (n_mae, n_vit)
    assert folder.dtype == "fp32 master (bf16 training)" and len(folder.files) == 5

    assert main(["convert", "zero-to-fp32", str(ckpts), str(tmp_path / "fp32"), "--tag", "step_00000001",
                 "--max-shard-size", "2MB"]) == 0
    assert main(["convert", "mae-to-backbone", str(tmp_path / "fp32"), str(tmp_path / "b.safetensors"),
                 "--dtype", "bf16", "--img-size", "1024"]) == 0
    assert main(["convert", "to-timm", str(tmp_path / "fp32" / "model.safetensors.index.json"),
                 str(tmp_path / "t.safetensors")]) == 0
    capsys.readouterr()
    for path, kind, dtype, params in [(tmp_path / "fp32", "safetensors", "fp32", n_mae),
                                      (tmp_path / "b.safetensors", "safetensors", "bf16", n_vit),
                                      (tmp_path / "t.safetensors", "safetensors", "fp32", n_vit)]:
        assert main(["convert", "inspect", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["kind"], info["preset"], info["step"], info["samples_seen"], info["world_size"],
                info["dtype"], info["num_params"]) == (kind, "debug", 1, 32, 2, dtype, params), path
    assert main(["convert", "mae-to-backbone", str(ckpts), str(tmp_path / "b.pt")]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err

    # A plain PyTorch state dict (e.g. a timm .pth) is read with weights_only=True.
    torch.save(load_file(tmp_path / "t.safetensors"), tmp_path / "t.pth")
    info = inspect_checkpoint(tmp_path / "t.pth")
    assert (info.kind, info.dtype, info.num_params) == ("torch", "fp32", n_vit)
    vit = create_vit("debug")
    assert load_backbone(vit, tmp_path / "t.pth").missing_keys == []
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in load_file(tmp_path / "t.safetensors").items())


def test_to_timm_of_a_four_band_backbone(tmp_path):
    """A multispectral backbone exports too; timm builds it with ``in_chans=4`` and computes the
    same features as the MAE encoder it came from."""
    import timm
    from safetensors.torch import save_file

    mae = create_mae("debug", img_size=96, in_chans=4)
    save_file({k: v.contiguous() for k, v in mae.state_dict().items()}, tmp_path / "mae.safetensors",
              metadata={"preset": "debug"})
    result = to_timm(tmp_path / "mae.safetensors", tmp_path / "t.safetensors")
    assert result.metadata["in_chans"] == "4"
    model = timm.create_model("rsfm_debug", pretrained=True, in_chans=4,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "t.safetensors"))).eval()
    x = torch.randn(1, 4, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), mae.eval().encoder.forward_features(x))
