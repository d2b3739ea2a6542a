"""Patch-embedding adaptation (rsfm_ds.checkpoint.loading): a backbone pretrained on one band count
loaded into a model of another, by timm's adapt_input_conv rule, plainly and under ZeRO-3."""
import json
import os
import subprocess

import pytest
import torch
from launching import DEEPSPEED, ROOT, free_port
from safetensors.torch import load_file, save_file
from timm.models._manipulate import adapt_input_conv

from rsfm_ds.checkpoint.loading import adapt_input_channels, load_backbone
from rsfm_ds.errors import CheckpointError
from rsfm_ds.models.presets import create_vit
from rsfm_ds.models.vitdet import create_vitdet


@pytest.fixture(scope="module")
def rgb_backbone(tmp_path_factory):
    """A 3-band debug encoder saved as a backbone file, and its tensors."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in create_vit("debug", img_size=96).state_dict().items()}
    path = tmp_path_factory.mktemp("rgb") / "backbone.safetensors"
    save_file(state, path, metadata={"preset": "debug"})
    return path, state


def test_rule_by_hand():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    r, g, b = w[:, 0:1], w[:, 1:2], w[:, 2:3]
    # 1 band: the sum of the three filters.
    assert torch.equal(adapt_input_channels(w, 1), r + g + b)
    # 4 bands: R G B R, each scaled by 3/4; 5 bands: R G B R G scaled by 3/5.
    assert torch.allclose(adapt_input_channels(w, 4), torch.cat([r, g, b, r], 1) * 0.75)
    assert torch.allclose(adapt_input_channels(w, 5), torch.cat([r, g, b, r, g], 1) * 0.6)
    # 6 bands (two copies of RGB, halved): an image of two equal RGB halves responds as the RGB image did.
    x = torch.randn(1, 3, 2, 2)
    conv = torch.nn.functional.conv2d
    assert torch.allclose(conv(torch.cat([x, x], 1), adapt_input_channels(w, 6)), conv(x, w), atol=1e-4)
    assert adapt_input_channels(w, 3) is w


@pytest.mark.parametrize("base,target", [(3, 1), (3, 2), (3, 4), (3, 5), (3, 13), (4, 3), (4, 1), (13, 4)])
def test_rule_equals_timm(base, target):
    w = torch.randn(8, base, 4, 4)
    ours = adapt_input_channels(w, target)
    theirs = adapt_input_conv(target, w.clone(), base_chans=base)
    assert ours.shape == (8, target, 4, 4) and torch.equal(ours, theirs)
    half = w.to(torch.bfloat16)
    assert adapt_input_channels(half, target).dtype == torch.bfloat16


def test_load_rgb_backbone_into_four_bands_and_the_error_option(rgb_backbone):
    path, state = rgb_backbone
    model = torch.nn.ModuleDict({"backbone": create_vitdet("debug", img_size=128, window_size=4, in_chans=4)})
    report = load_backbone(model, path, prefix="backbone.")
    expected = torch.cat([state["patch_embed.proj.weight"], state["patch_embed.proj.weight"][:, :1]], 1) * 0.75
    assert torch.allclose(model["backbone"].patch_embed.proj.weight, expected)
    assert torch.equal(model["backbone"].patch_embed.proj.bias, state["patch_embed.proj.bias"])
    assert report.notes == ["patch embedding adapted from 3 to 4 bands (timm adapt_input_conv rule: bands "
                            "repeated cyclically, scaled by 3/4)"]
    with pytest.raises(CheckpointError) as err:
        load_backbone(model, path, prefix="backbone.", patch_embed_adapt="error")
    assert "\n" not in str(err.value) and "takes 3 bands but the model 4 (backbone.in_chans)" in str(err.value)
    # Another patch size is no band-count adaptation: still the shape error.
    other = torch.nn.ModuleDict({"backbone": create_vitdet("debug", img_size=128, window_size=4, in_chans=4,
                                                           patch_size=8)})
    with pytest.raises(CheckpointError, match="patch_embed.proj.weight"):
        load_backbone(other, path, prefix="backbone.")


ZERO3_SCRIPT = r'''
import json, sys
import deepspeed, torch
from safetensors.torch import save_file
from rsfm_ds.checkpoint import load_backbone
from rsfm_ds.engine.deepspeed_setup import init_distributed
from rsfm_ds.models.vitdet import create_vitdet

path, out = sys.argv[-2:]
init_distributed()
rank = torch.distributed.get_rank()
ds = {"train_micro_batch_size_per_gpu": 1,
      "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1000}}
torch.manual_seed(rank)  # different random init per rank: only loaded values may agree
with deepspeed.zero.Init(config_dict_or_path=ds):
    model = torch.nn.ModuleDict({"backbone": create_vitdet("debug", img_size=128, window_size=4, in_chans=4)})
weight = model["backbone"].patch_embed.proj.weight
partitioned = weight.numel() == 0
report = load_backbone(model, path, prefix="backbone.")
with deepspeed.zero.GatheredParameters([weight]):
    save_file({"w": weight.detach().clone().contiguous()}, f"{out}/w_rank{rank}.safetensors")
if rank == 0:
    json.dump({"partitioned": partitioned, "notes": report.notes}, open(f"{out}/result.json", "w"))
'''


@pytest.mark.distributed
def test_zero3_load_of_rgb_backbone_into_four_band_model(rgb_backbone, tmp_path):
    path, state = rgb_backbone
    script = tmp_path / "zero3_adapt.py"
    script.write_text(ZERO3_SCRIPT)
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), str(script), str(path), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["partitioned"], "the patch embedding was not partitioned"
    assert result["notes"] == ["patch embedding adapted from 3 to 4 bands (timm adapt_input_conv rule: bands "
                               "repeated cyclically, scaled by 3/4)"]
    oracle = adapt_input_conv(4, state["patch_embed.proj.weight"].clone())
    for rank in range(2):
        assert torch.equal(load_file(tmp_path / f"w_rank{rank}.safetensors")["w"], oracle), rank
