"""Engine pieces that need no process group: DeepSpeed config reconciliation, schedules,
parameter groups, checkpoint bookkeeping, the run config."""
import math
import re
from pathlib import Path

import pytest
import torch

from rsfm_ds.checkpoint import layout
from rsfm_ds.config import ConfigError, load_config
from rsfm_ds.engine.checkpointing import CheckpointManager
from rsfm_ds.engine.state import rng_state, set_rng_state
from rsfm_ds.errors import CheckpointError
from rsfm_ds.engine.config import PretrainConfig
from rsfm_ds.engine.deepspeed_setup import load_ds_config, reconcile_ds_config
from rsfm_ds.engine.param_groups import build_param_groups
from rsfm_ds.engine.schedule import warmup_cosine, warmup_multistep, warmup_poly
from rsfm_ds.models.mae import create_mae

ROOT = Path(__file__).resolve().parents[1]


def test_ds_config_is_filled_from_the_run_config():
    ds = reconcile_ds_config({"zero_optimization": {"stage": 3}}, micro_batch_size=8, global_batch_size=64,
                             world_size=2, precision="bf16", clip_grad=1.0)
    assert ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 64
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["gradient_clipping"] == 1.0


@pytest.mark.parametrize("ds, message", [
    ({"train_batch_size": 128}, "train_batch_size is 128 but train.global_batch_size gives 64"),
    ({"train_micro_batch_size_per_gpu": 4}, "train_micro_batch_size_per_gpu is 4"),
    ({"fp16": {"enabled": True}}, "fp16.enabled is True but train.precision is 'bf16'"),
    ({"bf16": {"enabled": False}}, "bf16.enabled is False but train.precision is 'bf16'"),
    ({"gradient_clipping": 0.5}, "gradient_clipping is 0.5 but optim.clip_grad gives 1.0"),
])
def test_contradicting_ds_config_is_refused(ds, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        reconcile_ds_config(ds, micro_batch_size=8, global_batch_size=64, world_size=2,
                            precision="bf16", clip_grad=1.0, source="x.json")


def test_global_batch_must_divide_over_ranks():
    with pytest.raises(ConfigError, match="train.global_batch_size: 48 is not a multiple of .* = 32"):
        reconcile_ds_config({}, micro_batch_size=16, global_batch_size=48, world_size=2,
                            precision="fp32", clip_grad=None)


@pytest.mark.parametrize("name", ["zero3_bf16", "zero3_fp16", "zero3_offload", "cpu_debug"])
def test_shipped_ds_configs_load_and_reconcile(name):
    ds = load_ds_config(str(ROOT / "ds_configs" / f"{name}.json"))
    precision = "fp16" if "fp16" in name else "bf16"
    out = reconcile_ds_config(ds, micro_batch_size=4, global_batch_size=64, world_size=8,
                              precision=precision, clip_grad=None)
    assert out["zero_optimization"]["stage"] == 3
    assert out["gradient_accumulation_steps"] == 2


def test_warmup_cosine_by_hand():
    assert warmup_cosine(0, 100, 10, 1.0) == 0.0
    assert warmup_cosine(5, 100, 10, 1.0) == 0.5
    assert warmup_cosine(10, 100, 10, 1.0) == 1.0
    assert math.isclose(warmup_cosine(55, 100, 10, 1.0), 0.5)
    assert math.isclose(warmup_cosine(100, 100, 10, 1.0, floor=0.1), 0.1)
    assert math.isclose(warmup_cosine(32, 100, 10, 2.0), 0.5 * 2.0 * (1 + math.cos(math.pi * 22 / 90)))


def test_poly_and_multistep_by_hand():
    assert math.isclose(warmup_poly(50, 100, 0, 1.0, power=1.0), 0.5)
    assert math.isclose(warmup_poly(50, 100, 0, 1.0, power=0.9), 0.5 ** 0.9)
    assert warmup_multistep(7, 0, 1.0, [8, 11]) == 1.0
    assert math.isclose(warmup_multistep(8, 0, 1.0, [8, 11]), 0.1)
    assert math.isclose(warmup_multistep(11, 0, 1.0, [8, 11]), 0.01)
    assert math.isclose(warmup_multistep(0, 10, 1.0, [8, 11], warmup_ratio=1 / 3), 1 / 3)


def test_pretrain_param_groups_exempt_norms_biases_and_tokens():
    mae = create_mae("debug", img_size=64)
    groups = build_param_groups(mae, weight_decay=0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    exempt = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert "encoder.cls_token" in exempt and "mask_token" in exempt
    assert "encoder.norm.weight" in exempt and "encoder.blocks.0.attns.0.attn.proj.bias" in exempt
    assert "encoder.blocks.0.attns.0.attn.qkv.weight" in decayed
    assert "encoder.patch_embed.proj.weight" in decayed
    assert decayed | exempt == {n for n, _ in mae.named_parameters()}
    assert not decayed & exempt


def manager(ckpt_dir, resume="auto", keep_last=3):
    return CheckpointManager(ckpt_dir, every_steps=10, keep_last=keep_last, resume=resume)


def fake_tag(ckpt_dir, step, complete=True, world=2):
    """A ZeRO-3 tag as DeepSpeed lays it out: per rank a model-states file (with our client state)
    and an optimizer file, small but real torch archives."""
    tag = ckpt_dir / layout.tag_for(step)
    tag.mkdir(parents=True)
    for rank in range(world):
        torch.save({"step": step, "world_size": world}, tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
        torch.save({"optimizer_state_dict": {}}, tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    if complete:
        layout.mark_complete(tag, step)
    return tag


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    for step, complete in [(10, True), (20, True), (30, False)]:
        fake_tag(tmp_path, step, complete)
    assert manager(tmp_path).resume_path() == tmp_path / "step_00000020"
    assert manager(tmp_path, resume=None).resume_path() is None
    with pytest.raises(CheckpointError, match="step_00000030 is not a complete checkpoint"):
        manager(tmp_path, resume=str(tmp_path / "step_00000030")).resume_path()
    assert manager(tmp_path / "nothing-here").resume_path() is None


@pytest.mark.parametrize("damage, named", [
    ("missing", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt: missing (rank 1 of 2)"),
    ("truncated", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt: not a whole torch file")])
def test_resume_passes_over_a_damaged_newest_checkpoint(tmp_path, damage, named):
    fake_tag(tmp_path, 10)
    newest = fake_tag(tmp_path, 20)
    rank1 = newest / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    if damage == "missing":
        rank1.unlink()
    else:
        rank1.write_bytes(rank1.read_bytes()[:40])
    ckpts = manager(tmp_path)
    assert ckpts.resume_path() == tmp_path / "step_00000010"
    assert len(ckpts.passed_over) == 1
    assert "not resuming from step_00000020, it is damaged" in ckpts.passed_over[0] and named in ckpts.passed_over[0]
    with pytest.raises(CheckpointError, match=f"damaged checkpoint: .*{re.escape(named)}"):
        manager(tmp_path, resume=str(newest)).resume_path()
    with pytest.raises(CheckpointError, match=f"{re.escape(named)}.*older complete checkpoint: --tag step_00000010"):
        layout.resolve_tag_dir(tmp_path)


def test_prune_keeps_the_last_k_and_drops_stale_partials(tmp_path):
    for step in (10, 20, 30, 40):
        fake_tag(tmp_path, step, complete=step != 20)
    manager(tmp_path, keep_last=2).prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000030", "step_00000040"]


def test_latest_names_the_newest_complete_whole_tag_and_survives_pruning(tmp_path):
    fake_tag(tmp_path, 10)
    assert layout.point_latest(tmp_path) == "step_00000010"
    fake_tag(tmp_path, 20, complete=False)  # being written, or cut off while saving
    assert layout.point_latest(tmp_path) == "step_00000010"
    assert (tmp_path / "latest").read_text() == "step_00000010"
    for step in (30, 40):
        fake_tag(tmp_path, step)
    manager(tmp_path, keep_last=1).prune()
    assert layout.point_latest(tmp_path) == "step_00000040"
    assert (tmp_path / (tmp_path / "latest").read_text()).is_dir()
    cut = tmp_path / "step_00000040" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    cut.write_bytes(cut.read_bytes()[:40])
    assert layout.point_latest(tmp_path) is None and not (tmp_path / "latest").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging file left


def test_rng_state_round_trip():
    g = torch.Generator().manual_seed(3)
    state = rng_state(g)
    a = (torch.rand(3), torch.rand(3, generator=g))
    set_rng_state(state, g)
    b = (torch.rand(3), torch.rand(3, generator=g))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("preset", ["debug", "vit_b12x1", "vit_l12x4", "vit_1b3", "vit_2b4"])
def test_shipped_pretrain_configs_validate(preset):
    cfg = load_config(PretrainConfig, ROOT / "configs" / "pretrain" / f"{preset}.yaml")
    assert cfg.model.preset == preset
    assert cfg.train.global_batch_size % cfg.train.micro_batch_size == 0


def test_run_config_cross_checks_name_the_field():
    with pytest.raises(ConfigError, match="data.img_size: 96 differs from model.img_size 224"):
        load_config(PretrainConfig, overrides=["data.img_size=96", "model.img_size=224"])
    with pytest.raises(ConfigError, match="model.img_size: must be a positive multiple of the patch size 16"):
        load_config(PretrainConfig, overrides=["model.img_size=100", "data.img_size=100"])


def test_detection_fraction_keeps_whole_source_images_and_nests():
    import numpy as np

    from rsfm_ds.data.det.dataset import DetRecord
    from rsfm_ds.engine.detection import _image_fraction

    empty = np.zeros((0, 8), np.float32)
    records = [DetRecord(f"P{img:04d}__1024__{x}___0", None, empty, np.zeros(0, np.int64), np.zeros(0, np.int64))
               for img in range(40) for x in (0, 824)]
    sources = {}
    for fraction in (0.1, 0.25, 1.0):
        kept = _image_fraction(records, fraction, seed=3)
        by_source = {}
        for r in kept:
            by_source.setdefault(r.image_id.split("__")[0], []).append(r.image_id)
        # Both patches of each chosen image, and ceil(fraction * 40) images.
        assert all(len(v) == 2 for v in by_source.values())
        assert len(by_source) == int(np.ceil(fraction * 40))
        sources[fraction] = set(by_source)
    assert sources[0.1] < sources[0.25] < sources[1.0]


def test_finish_process_ends_as_a_normal_exit_would(tmp_path):
    """A rank's process ends through finish_process: its status, non-daemon threads finished,
    atexit handlers run, buffered output written; the interpreter's teardown (module finalizers)
    skipped."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, concurrent.futures, sys, threading, time
        from rsfm_ds.engine.process_end import finish_process

        class Finalized:
            def __del__(self):
                sys.stdout.write(" teardown")

        # Reachable to the end: finalized by the interpreter's teardown only, which is skipped.
        kept = Finalized()
        atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, "w").write("ran"))
        done = {str(tmp_path / 'thread')!r}
        worker = threading.Thread(target=lambda: (time.sleep(0.3), open(done, "w").write("done")))
        worker.start()
        # An executor left open: its idle worker thread is stopped by threading's exit hooks.
        pool = concurrent.futures.ThreadPoolExecutor(1)
        pool.submit(int).result()
        sys.stdout.write("unflushed result")
        finish_process(3)
        print("not reached")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 3, out.stderr
    assert out.stdout == "unflushed result"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
