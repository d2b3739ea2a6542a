"""Multispectral MAE: the target covers every band; a 4-band pretraining run on shards cut from a
real 4-band Sentinel-2 crop learns under DeepSpeed ZeRO-3 on 2 CPU ranks; its conversion gives a
4-band backbone that records the bands and their normalisation; a model whose in_chans disagrees
with the shards is refused in one line before anything starts.
"""
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from launching import DEEPSPEED, MARK, ROOT, free_port, job_processes, wait_for

S2 = Path(__file__).parent / "data" / "scenes" / "sentinel2_b02_b03_b04_b08_crop.tif"
CONFIG = "configs/pretrain/debug_4band.yaml"


def test_mae_target_normalises_each_patch_over_all_bands():
    from rsfm_ds.models.mae import create_mae

    torch.manual_seed(0)
    model = create_mae("debug", img_size=32, in_chans=4)
    p = model.patch_size
    assert model.encoder.patch_embed.proj.weight.shape[1] == 4
    assert model.decoder_pred.out_features == p * p * 4
    imgs = torch.randn(2, 4, 32, 32) * torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(1, 4, 1, 1)
    target = model.target(imgs)
    grid = 32 // p
    for n, i, j in [(0, 0, 0), (1, 1, 0), (1, grid - 1, grid - 1)]:
        # facebookresearch/mae's patchify: pixels of a patch in (row, col, band) order.
        patch = imgs[n, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(1, 2, 0).reshape(-1)
        expect = (patch - patch.mean()) / (patch.var() + 1e-6) ** 0.5
        torch.testing.assert_close(target[n, i * grid + j], expect)
    loss, pred, mask = model(imgs)
    assert pred.shape == (2, grid * grid, p * p * 4) and torch.isfinite(loss)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from rsfm_ds.data.pretrain.scenes import write_image_shards

    d = tmp_path_factory.mktemp("s2")
    (d / "scenes").mkdir()
    shutil.copy(S2, d / "scenes" / S2.name)
    # 256 px, tile 64, stride 16: 13 x 13 windows.
    report = write_image_shards(d / "scenes", d / "shards", tile=64, stride=16, maxcount=40)
    assert report.manifest.num_samples == 169
    return report.manifest_path


def test_in_chans_must_match_the_shards(shards, tmp_path, capsys, monkeypatch):
    from rsfm_ds.cli import main

    monkeypatch.chdir(ROOT)  # CONFIG is relative to the repository
    code = main(["pretrain", "--config", CONFIG, f"run_dir={tmp_path / 'run'}", f"data.shards={shards}",
                 "model.in_chans=3"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.in_chans: 3" in lines[0] and str(shards) in lines[0]
    assert "4 bands (blue, green, red, nir)" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.distributed
def test_4band_pretraining_learns_and_converts(shards, tmp_path):
    from safetensors import safe_open

    from rsfm_ds.checkpoint import mae_to_backbone
    from rsfm_ds.data.pretrain.manifest import load_manifest
    from rsfm_ds.models.presets import get_preset

    run_dir, mark = tmp_path / "run", uuid.uuid4().hex
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "rsfm_ds.cli",
           "pretrain", "--config", CONFIG, f"run_dir={run_dir}", f"data.shards={shards}", "log.every_steps=1",
           "checkpoint.every_steps=40", "train.epochs=4", "train.max_steps=40",
           "data.num_workers=0"]
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", MARK: mark},
                              stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, log.read_text()[-6000:]
    assert wait_for(lambda: not job_processes(mark), 30), job_processes(mark)
    curve = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        curve[record["step"]] = record["train/loss"]
    assert sorted(curve) == list(range(1, 41))
    first = sum(curve[s] for s in range(1, 9)) / 8
    last = sum(curve[s] for s in range(33, 41)) / 8
    # Predicting zeros (every patch's mean) scores (n - 1) / n against per-patch normalised
    # targets of n = p*p*4 values: the model must beat that floor, not just its own start.
    n = get_preset("debug").patch_size ** 2 * 4
    assert last < 0.9 * first and last < 0.95 * (n - 1) / n, (first, last)

    out = tmp_path / "backbone.safetensors"
    result = mae_to_backbone(run_dir / "checkpoints", out)
    manifest = load_manifest(shards)
    norm = manifest.normalization()
    with safe_open(str(out), "pt") as f:
        assert f.get_slice("patch_embed.proj.weight").get_shape()[1] == 4
        meta = f.metadata()
    assert meta["in_chans"] == "4"
    assert json.loads(meta["band_names"]) == ["blue", "green", "red", "nir"]
    assert json.loads(meta["band_mean"]) == list(norm.mean)
    assert json.loads(meta["band_std"]) == list(norm.std)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["in_chans"] == 4 and sidecar["band_std"] == list(norm.std)
    assert result.metadata["preset"] == "debug"

    # ... and fine-tuning takes it up as it is: a 4-band ViTDet loads every pretrained tensor
    # (no adaptation) and its inputs are normalised with the pretraining manifest's statistics.
    from rsfm_ds.checkpoint.loading import load_backbone
    from rsfm_ds.engine.inputs import BandsConfig, resolve_inputs
    from rsfm_ds.models.vitdet import create_vitdet

    vitdet = create_vitdet("debug", img_size=64, window_size=4, in_chans=4)
    report = load_backbone(vitdet, out)
    with safe_open(str(out), "pt") as f:
        assert torch.equal(vitdet.patch_embed.proj.weight, f.get_tensor("patch_embed.proj.weight"))
    assert "patch_embed.proj.weight" not in report.missing_keys
    inputs, source = resolve_inputs(BandsConfig(), 4, str(out))
    assert inputs.normalization == norm and "backbone.pretrained" in source
