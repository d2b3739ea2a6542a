"""ViTDet backbone: window attention, padding, shapes per preset, position tables (absolute,
relative), layer decay, weight loading."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from rsfm_ds.engine.param_groups import build_param_groups
from rsfm_ds.models.mae import create_mae
from rsfm_ds.models.presets import PRESETS, get_preset
from rsfm_ds.models.vit import Attention, sincos_pos_embed_2d
from rsfm_ds.checkpoint.backbone import mae_to_backbone
from rsfm_ds.checkpoint.loading import load_backbone
from rsfm_ds.errors import CheckpointError, ConfigError
from rsfm_ds.models.vitdet import (ViTDetAttention, ViTDetConfig, build_vitdet, create_vitdet, decomposed_rel_pos_bias,
                                   new_parameter_names, relative_position_table, window_partition,
                                   window_unpartition)


def attention_pair(window_size: int, use_rel_pos: bool, fused: bool, grid=(6, 6), dim=32, heads=2):
    """A window and a global attention with the same (random, incl. rel-pos) weights."""
    torch.manual_seed(0)
    win = ViTDetAttention(dim, heads, fused_attn=fused, window_size=window_size,
                          use_rel_pos=use_rel_pos, rel_pos_grid=grid)
    glob = ViTDetAttention(dim, heads, fused_attn=fused, window_size=0, use_rel_pos=use_rel_pos,
                           rel_pos_grid=grid)
    if use_rel_pos:
        nn.init.normal_(win.rel_pos_h, std=0.5)
        nn.init.normal_(win.rel_pos_w, std=0.5)
    glob.load_state_dict(win.state_dict())
    return win, glob


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("use_rel_pos", [False, True])
def test_window_equal_to_grid_equals_global_attention(fused, use_rel_pos):
    win, glob = attention_pair(window_size=6, use_rel_pos=use_rel_pos, fused=fused)
    x = torch.randn(2, 6, 6, 32)
    torch.testing.assert_close(win(x), glob(x), rtol=1e-5, atol=1e-6)


def test_global_attention_equals_the_encoder_attention_on_flat_tokens():
    torch.manual_seed(0)
    glob = ViTDetAttention(32, 2)
    plain = Attention(32, 2)
    plain.load_state_dict(glob.state_dict())
    x = torch.randn(2, 5, 7, 32)
    torch.testing.assert_close(glob(x).reshape(2, 35, 32), plain(x.reshape(2, 35, 32)),
                               rtol=1e-5, atol=1e-6)


def test_window_partition_pads_to_a_multiple_and_round_trips():
    x = torch.randn(2, 50, 50, 8)
    windows, padded = window_partition(x, 14)
    assert padded == (56, 56) and windows.shape == (2 * 16, 14, 14, 8)
    # Window 5 of image 1 is row 1, column 1 of the 4 x 4 window grid.
    torch.testing.assert_close(windows[16 + 5], x[1, 14:28, 14:28], rtol=0, atol=0)
    assert windows[15, 8:].abs().sum() == 0 and windows[15, :, 8:].abs().sum() == 0  # padding
    torch.testing.assert_close(window_unpartition(windows, 14, padded, (50, 50)), x, rtol=0, atol=0)


def test_800px_windows_are_padded_and_cropped_like_explicit_windows():
    """Grid 50, window 14: each window of the zero-padded 56 x 56 grid attends on its own, padding
    tokens included (ViTDet / SAM semantics), and the crop returns the 50 x 50 real tokens."""
    torch.manual_seed(0)
    win = ViTDetAttention(32, 2, window_size=14)
    oracle = Attention(32, 2, fused_attn=False)
    oracle.load_state_dict(win.state_dict())
    x = torch.randn(1, 50, 50, 32)
    padded = torch.zeros(1, 56, 56, 32)
    padded[:, :50, :50] = x
    expected = torch.empty(1, 56, 56, 32)
    for r in range(0, 56, 14):
        for c in range(0, 56, 14):
            tokens = padded[:, r:r + 14, c:c + 14].reshape(1, 196, 32)
            expected[:, r:r + 14, c:c + 14] = oracle(tokens).reshape(1, 14, 14, 32)
    out = win(x)
    assert out.shape == (1, 50, 50, 32)
    torch.testing.assert_close(out, expected[:, :50, :50], rtol=1e-5, atol=1e-5)

    # Attended, not masked: in the bottom-right window (8 x 8 real tokens of 14 x 14) masking the
    # padding would give a different result.
    real = x[:, 42:, 42:].reshape(1, 64, 32)
    masked = oracle(real).reshape(1, 8, 8, 32)
    assert not torch.allclose(out[:, 42:, 42:], masked, atol=1e-3)


def test_backbone_at_800px_pads_its_window_blocks_to_56():
    model = create_vitdet("debug", img_size=800, out_channels=16, drop_path_rate=0.0).eval()
    seen = {}
    for i, blk in enumerate(model.blocks):
        blk.attns[0].attn.qkv.register_forward_hook(
            lambda mod, inp, out, i=i: seen.__setitem__(i, tuple(inp[0].shape)))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 800, 800))
    # debug: layers 1 and 3 global (50 x 50 grid), 0 and 2 in 16 windows of 14 x 14 (56 x 56).
    assert seen == {0: (16, 14, 14, 128), 1: (1, 50, 50, 128),
                    2: (16, 14, 14, 128), 3: (1, 50, 50, 128)}
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (200, 200), "p3": (100, 100), "p4": (50, 50), "p5": (25, 25)}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_output_shapes_for_every_preset_on_meta_at_1024_and_800(preset):
    p = get_preset(preset)
    with torch.device("meta"):
        model = create_vitdet(preset, img_size=1024, extra_p6=True)
        outs = {img: model(torch.empty(2, 3, img, img)) for img in (1024, 800)}
    assert model.out_strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert model.out_channels == 256
    for img, out in outs.items():
        grid = img // 16
        sizes = {"p2": 4 * grid, "p3": 2 * grid, "p4": grid, "p5": grid // 2,
                 "p6": (grid // 2 + 1) // 2}
        assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, 256, s, s)
                                                                for k, s in sizes.items()}
        assert list(out) == list(model.out_strides)
    # Global layers are the preset's, and every branch of a global layer is global.
    for i, blk in enumerate(model.blocks):
        attns = [blk.attn] if p.num_branches == 1 else [b.attn for b in blk.attns]
        assert len(attns) == p.num_branches
        assert {a.window_size for a in attns} == {0 if i in p.global_attn_indexes else 14}


def test_input_not_a_multiple_of_the_patch_is_zero_padded():
    torch.manual_seed(0)
    model = create_vitdet("debug", img_size=64, out_channels=16).eval()
    x = torch.randn(1, 3, 70, 61)
    padded = torch.zeros(1, 3, 80, 64)
    padded[..., :70, :61] = x
    with torch.no_grad():
        out, ref = model(x), model(padded)
    assert out["p4"].shape[-2:] == (5, 4)
    for k in out:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)


def test_layer_decay_table_for_the_debug_backbone_with_pyramid():
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = create_vitdet("debug", img_size=64, out_channels=16, use_rel_pos=True)
    model.head = nn.Linear(16, 3)
    groups = build_param_groups(model, 0.05, layer_decay=0.75, num_layers=4,
                                backbone_prefix="backbone.")
    got = {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}

    decayed = ("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight")
    # The trainable position table is stem (layer 0) and not decayed, as detectron2's
    # get_vit_lr_decay_rate and its ViTDet optimizer overrides ({"pos_embed": weight_decay 0}).
    table = {"backbone.patch_embed.proj.weight": (0.75 ** 5, 0.05),
             "backbone.patch_embed.proj.bias": (0.75 ** 5, 0.0),
             "backbone.pos_embed": (0.75 ** 5, 0.0),
             "backbone.norm.weight": (1.0, 0.0), "backbone.norm.bias": (1.0, 0.0),
             "head.weight": (1.0, 0.05), "head.bias": (1.0, 0.0)}
    for i in range(4):
        for kind in ("attns", "mlps"):
            for b in range(2):
                prefix = f"backbone.blocks.{i}.{kind}.{b}"
                rate = 0.75 ** (4 - i)
                table[f"{prefix}.norm.weight"] = table[f"{prefix}.norm.bias"] = (rate, 0.0)
                layer = ["attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "attn.rel_pos_h",
                         "attn.rel_pos_w"] if kind == "attns" else \
                        ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
                for name in layer:
                    table[f"{prefix}.{name}"] = (rate, 0.05 if name.endswith(decayed) else 0.0)
    for level in ("p2", "p3", "p4", "p5"):
        prefix = f"backbone.pyramid.levels.{level}"
        for part in ("lateral", "output"):
            table[f"{prefix}.{part}.conv.weight"] = (1.0, 0.05)
            table[f"{prefix}.{part}.norm.weight"] = table[f"{prefix}.{part}.norm.bias"] = (1.0, 0.0)
    for name in ("resample.0.weight", "resample.3.weight"):
        table[f"backbone.pyramid.levels.p2.{name}"] = (1.0, 0.05)
    for name in ("resample.0.bias", "resample.1.weight", "resample.1.bias", "resample.3.bias"):
        table[f"backbone.pyramid.levels.p2.{name}"] = (1.0, 0.0)
    table["backbone.pyramid.levels.p3.resample.weight"] = (1.0, 0.05)
    table["backbone.pyramid.levels.p3.resample.bias"] = (1.0, 0.0)

    assert got.keys() == table.keys()
    for name, (scale, wd) in table.items():
        assert got[name][0] == pytest.approx(scale), name
        assert got[name][1] == wd, name


def saved(state_dict, path):
    """``state_dict`` written as a PyTorch file, the way a user hands weights to the loader."""
    torch.save(state_dict, path)
    return path


def test_loading_mae_weights_gives_the_mae_encoder_tokens(tmp_path):
    torch.manual_seed(0)
    mae = create_mae("debug", img_size=64)
    for name, p in mae.named_parameters():  # make norms and biases non-trivial
        if p.ndim == 1:
            nn.init.normal_(p, std=0.1)
    # Window 4 on the 4 x 4 grid: every layer sees the whole grid, as the encoder does; the
    # position table of the MAE's (64 px) grid is the MAE's own, so nothing is resampled.
    model = create_vitdet("debug", img_size=64, window_size=4, out_channels=16, pretrain_img_size=64).eval()
    report = load_backbone(model, saved(mae.state_dict(), tmp_path / "mae.pt"))
    assert report.unexpected_keys == []
    assert sorted(report.missing_keys) == sorted(new_parameter_names(model))
    assert all(k.startswith("pyramid.") or k == "pos_embed" for k in report.missing_keys)
    assert sorted(report.dropped_keys) == sorted(k for k in mae.state_dict() if not k.startswith("encoder.")
                                                 or k == "encoder.cls_token")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        enc = mae.encoder
        expected = enc.norm(enc.run_blocks(enc.embed(x)))  # all patches, no class token
        tokens = model.forward_tokens(x)
    torch.testing.assert_close(tokens.reshape(2, 16, 128), expected, rtol=1e-5, atol=1e-5)

    # A converted encoder (VisionTransformer keys) maps the same way.
    again = create_vitdet("debug", img_size=64, window_size=4, out_channels=16, use_rel_pos=True)
    report = load_backbone(again, saved(mae.encoder.state_dict(), tmp_path / "encoder.pt"))
    assert report.dropped_keys == ["cls_token"]
    assert sorted(report.missing_keys) == sorted(new_parameter_names(again))
    assert any(".rel_pos_h" in k for k in report.missing_keys)


def test_zero_initialised_rel_pos_keeps_the_pretrained_function(tmp_path):
    torch.manual_seed(0)
    plain = create_vitdet("debug", img_size=64, out_channels=16).eval()
    rel = create_vitdet("debug", img_size=64, out_channels=16, use_rel_pos=True).eval()
    report = load_backbone(rel, saved(plain.state_dict(), tmp_path / "plain.pt"))
    assert report.missing_keys and all(".rel_pos_" in k for k in report.missing_keys)
    x = torch.randn(1, 3, 96, 80)  # another grid: the global tables are resampled
    with torch.no_grad():
        for k, v in plain(x).items():
            torch.testing.assert_close(rel(x)[k], v, rtol=1e-5, atol=1e-5)


def test_strict_loading_names_what_does_not_fit(tmp_path):
    model = create_vitdet("debug", img_size=64, out_channels=16)
    state = create_mae("debug", img_size=64).encoder.state_dict()
    with pytest.raises(ValueError, match="blocks.0.attns.0.attn.extra"):
        load_backbone(model, saved({**state, "blocks.0.attns.0.attn.extra": torch.zeros(1)}, tmp_path / "a.pt"))
    del state["blocks.2.mlps.1.mlp.fc1.weight"]
    with pytest.raises(ValueError, match="blocks.2.mlps.1.mlp.fc1.weight"):
        load_backbone(model, saved(state, tmp_path / "b.pt"))
    report = load_backbone(model, tmp_path / "b.pt", strict_backbone=False)
    assert "blocks.2.mlps.1.mlp.fc1.weight" in report.missing_keys


def test_relative_position_table_indexes_offsets():
    table = torch.arange(7.0).unsqueeze(1)  # offsets -3..3 for size 4
    rel = relative_position_table(table, 4)[..., 0]
    assert torch.equal(rel, torch.tensor([[3.0 + i - j for j in range(4)] for i in range(4)]))
    # Decomposed bias: q . R_h[i_q - i_k] + q . R_w[j_q - j_k], written out on a 3 x 2 grid.
    torch.manual_seed(0)
    q = torch.randn(1, 1, 6, 5)
    rh, rw = torch.randn(5, 5), torch.randn(3, 5)
    bias = decomposed_rel_pos_bias(q, rh, rw, (3, 2))
    for a in range(6):
        for b in range(6):
            (ia, ja), (ib, jb) = divmod(a, 2), divmod(b, 2)
            want = q[0, 0, a] @ rh[ia - ib + 2] + q[0, 0, a] @ rw[ja - jb + 1]
            torch.testing.assert_close(bias[0, 0, a, b], want, rtol=1e-5, atol=1e-6)


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = create_vitdet("debug", img_size=64, out_channels=16, use_rel_pos=True, extra_p6=True)
    out = model(torch.randn(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_vitdet("debug", img_size=64, out_channels=16, drop_path_rate=0.3).train()
    x = torch.randn(2, 3, 64, 64)

    def grads(checkpointing: bool):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(5)  # same stochastic-depth draws in both runs
        sum(v.square().mean() for v in model(x).values()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ga, gb = grads(False), grads(True)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=0, atol=1e-6, msg=name)


def test_init_weights_sets_every_parameter():
    with torch.device("meta"):
        model = create_vitdet("debug", img_size=64, out_channels=16, use_rel_pos=True)
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.fill_(float("nan"))
    model.init_weights()
    assert [n for n, p in model.named_parameters() if torch.isnan(p).any()] == []
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if ".rel_pos_" in n)
    # From scratch the trainable table is the sin-cos table of the pretraining grid (224 px: 14).
    assert torch.equal(model.pos_embed, sincos_pos_embed_2d(128, (14, 14)).reshape(1, 14, 14, 128))


@pytest.mark.parametrize("kwargs, message", [
    (dict(global_attn_indexes=(1, 4)), "global_attn_indexes"),
    (dict(window_size=0), "window_size"),
])
def test_bad_arguments_are_named(kwargs, message):
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        create_vitdet("debug", img_size=64, **kwargs)


# --- absolute position table ---------------------------------------------------------------------

def vit_table(grid: int, dim: int = 128, seed: int = 0) -> torch.Tensor:
    """A learned-looking table in the MAE / timm layout ``[1, 1 + grid^2, dim]``, class row first."""
    return torch.randn(1, 1 + grid * grid, dim, generator=torch.Generator().manual_seed(seed))


def timm_resampled(table: torch.Tensor, grid) -> torch.Tensor:
    """The oracle: timm's resampling without antialiasing (detectron2's get_abs_pos), class row
    dropped, as ``[1, gh, gw, D]``."""
    out = resample_abs_pos_embed(table, new_size=list(grid), num_prefix_tokens=1, antialias=False)
    return out[:, 1:].reshape(1, grid[0], grid[1], table.shape[-1])


def first_block_input(model, x: torch.Tensor) -> torch.Tensor:
    """What the first block receives (patch embedding + position table), without running the rest."""
    class Seen(Exception):
        pass

    got = []

    def hook(module, args):
        got.append(args[0])
        raise Seen

    handle = model.blocks[0].register_forward_pre_hook(hook)
    try:
        with torch.no_grad(), pytest.raises(Seen):
            model(x)
    finally:
        handle.remove()
    return got[0]


def test_interpolated_table_equals_timms_resample_abs_pos_embed(tmp_path):
    table = vit_table(14)
    state = {**create_mae("debug", img_size=64).encoder.state_dict(), "pos_embed": table}
    model = create_vitdet("debug", img_size=1024, out_channels=16)
    report = load_backbone(model, saved(state, tmp_path / "encoder.pt"))
    assert "pos_embed" in report.loaded and "pos_embed" not in report.missing_keys
    # Held at the pretraining grid without the class row, as detectron2 keeps it.
    assert torch.equal(model.pos_embed.detach(), table[:, 1:].reshape(1, 14, 14, 128))
    with torch.no_grad():
        for grid in ((64, 64), (50, 64), (4, 4)):
            torch.testing.assert_close(model.pos_embed_for(grid), timm_resampled(table, grid),
                                       rtol=1e-5, atol=1e-5)


def test_mae_converted_at_224_and_built_at_1024_uses_the_resampled_table(tmp_path):
    torch.manual_seed(0)
    mae = create_mae("debug", img_size=224)
    src = saved(mae.state_dict(), tmp_path / "mae.pt")
    mae_to_backbone(src, tmp_path / "with.safetensors", with_pos_embed=True)  # the MAE's 14 x 14 table
    mae_to_backbone(src, tmp_path / "without.safetensors")
    sincos14 = sincos_pos_embed_2d(128, (14, 14), cls_token=True)

    model = create_vitdet("debug", img_size=1024, out_channels=16).eval()
    report = load_backbone(model, tmp_path / "with.safetensors")
    assert "pos_embed" in report.loaded
    x = torch.randn(1, 3, 1024, 1024)
    expected = model.patch_embed(x) + timm_resampled(sincos14, (64, 64))
    used = first_block_input(model, x)
    torch.testing.assert_close(used, expected, rtol=1e-5, atol=1e-5)
    # Stretched from the pretraining grid, not the sin-cos function of the 64 x 64 grid.
    exact64 = model.patch_embed(x) + sincos_pos_embed_2d(128, (64, 64)).reshape(1, 64, 64, 128)
    assert not torch.allclose(used, exact64, atol=1e-2)

    # A file without a table leaves the sin-cos start of the same grid: the same table.
    bare = create_vitdet("debug", img_size=1024, out_channels=16)
    assert "pos_embed" in load_backbone(bare, tmp_path / "without.safetensors").missing_keys
    assert torch.equal(bare.pos_embed, model.pos_embed)

    # abs_pos="sincos" computes the 64 x 64 function itself and keeps no table in its state.
    fixed = create_vitdet("debug", img_size=1024, out_channels=16, abs_pos="sincos").eval()
    report = load_backbone(fixed, tmp_path / "with.safetensors")
    assert "pos_embed" in report.dropped_keys and "pos_embed" not in fixed.state_dict()
    torch.testing.assert_close(first_block_input(fixed, x), exact64, rtol=1e-5, atol=1e-5)


def test_a_table_of_another_grid_is_resampled_on_load(tmp_path):
    encoder = create_mae("debug", img_size=64).encoder.state_dict()
    table = vit_table(32, seed=1)  # e.g. pretrained at 512 px
    model = create_vitdet("debug", img_size=128, window_size=4, out_channels=16)  # table grid 14
    load_backbone(model, saved({**encoder, "pos_embed": table}, tmp_path / "a.pt"))
    torch.testing.assert_close(model.pos_embed.detach(), timm_resampled(table, (14, 14)), rtol=1e-5, atol=1e-5)

    # A fine-tuned ViTDet table ([1, h, w, D], no class row) loads as well.
    other = create_vitdet("debug", img_size=128, window_size=4, out_channels=16, pretrain_img_size=96)
    load_backbone(other, saved(model.state_dict(), tmp_path / "b.pt"), strict_backbone=False)
    torch.testing.assert_close(other.pos_embed.detach(), resample_abs_pos_embed(
        model.pos_embed.detach().reshape(1, 196, 128), new_size=[6, 6], num_prefix_tokens=0,
        antialias=False).reshape(1, 6, 6, 128), rtol=1e-5, atol=1e-5)

    with pytest.raises(CheckpointError, match="pos_embed"):  # another width
        load_backbone(model, saved({**encoder, "pos_embed": torch.zeros(1, 197, 64)}, tmp_path / "c.pt"))
    with pytest.raises(CheckpointError, match="neither a square grid"):
        load_backbone(model, saved({**encoder, "pos_embed": torch.zeros(1, 199, 128)}, tmp_path / "d.pt"))


# --- relative position tables ----------------------------------------------------------------------

def test_config_defaults_follow_vitdet_and_size_the_rel_pos_tables_like_it():
    cfg = ViTDetConfig(preset="debug", img_size=512, window_size=7)
    assert (cfg.use_rel_pos, cfg.abs_pos, cfg.pretrain_img_size) == (True, "interpolate", 224)
    with torch.device("meta"):
        model = build_vitdet(cfg)
    head_dim = 128 // 4
    for i, blk in enumerate(model.blocks):
        for branch in blk.attns:
            side = 32 if i in (1, 3) else 7  # global: the 512 px grid; window: the window
            assert branch.attn.rel_pos_h.shape == branch.attn.rel_pos_w.shape == (2 * side - 1, head_dim)
    assert tuple(model.pos_embed.shape) == (1, 14, 14, 128) and model.pos_embed.requires_grad


def linear_resize_oracle(table: np.ndarray, length: int) -> np.ndarray:
    """Half-pixel linear interpolation along rows, written out (what detectron2's get_rel_pos
    asks of F.interpolate(mode="linear"), align_corners=False)."""
    n = table.shape[0]
    out = np.empty((length, table.shape[1]))
    for i in range(length):
        src = max((i + 0.5) * n / length - 0.5, 0.0)
        lo = min(int(np.floor(src)), n - 1)
        hi = min(lo + 1, n - 1)
        out[i] = (1 - (src - lo)) * table[lo] + (src - lo) * table[hi]
    return out


def test_global_rel_pos_tables_are_resized_linearly_for_another_grid():
    table = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))  # built for a grid of 4
    got = relative_position_table(table, 6)  # [6, 6, 3]: offsets -5..5 from 11 resized rows
    resized = linear_resize_oracle(table.numpy().astype(np.float64), 11)
    want = np.stack([np.stack([resized[i - j + 5] for j in range(6)]) for i in range(6)])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_window_block_equal_to_the_grid_equals_the_global_block_in_a_backbone():
    torch.manual_seed(0)
    win = create_vitdet("debug", img_size=64, window_size=4, out_channels=16, use_rel_pos=True,
                        global_attn_indexes=()).eval()
    glob = create_vitdet("debug", img_size=64, window_size=4, out_channels=16, use_rel_pos=True,
                         global_attn_indexes=(0, 1, 2, 3)).eval()
    for name, p in win.named_parameters():
        if ".rel_pos_" in name:
            nn.init.normal_(p, std=0.5)
    glob.load_state_dict(win.state_dict())  # same table sizes: window 4 = the 4 x 4 grid
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = win(x), glob(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("field, value", [("abs_pos", "learned"), ("pretrain_img_size", 100)])
def test_bad_position_options_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        ViTDetConfig(**{field: value})
