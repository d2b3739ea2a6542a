"""In-place initialisation of ZeRO-3 partitions (rsfm_ds/engine/zero_inplace_init.py) and the
chunked seeded initialiser behind it (rsfm_ds/models/seeded_init.py).

The distributed tests build models under ``zero.Init`` on 2 and on 1 CPU rank(s), gather the
weights and compare them bit for bit with the same seed's plain build in this process. The models
have odd widths so that parameters straddle generator chunks and partition boundaries and need
padding. This file is also the rank worker (``python tests/test_zero_init_inplace.py OUT``).
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rsfm_ds.models.seeded_init import CHUNK, Normal, Uniform, fill_flat  # noqa: E402

SEED = 1234
DS_CONFIG = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
             "train_micro_batch_size_per_gpu": 1}


def build_models():
    """``{name: factory}``: an MAE with a 260-wide encoder (fc1 has 260 x 1001 values, several
    chunks; its 1001 biases need padding over 2 ranks) and a ViTDet backbone with relative
    positions, the ``interpolate`` table and the pyramid's convolutions."""
    from rsfm_ds.models.mae import MaskedAutoencoder
    from rsfm_ds.models.vit import VisionTransformer
    from rsfm_ds.models.vitdet import ViTDetBackbone

    return {
        "mae": lambda: MaskedAutoencoder(
            VisionTransformer(img_size=64, embed_dim=260, depth=2, num_heads=5, mlp_dim=1001,
                              num_branches=2), decoder_dim=68, decoder_depth=1, decoder_heads=4),
        "vitdet": lambda: ViTDetBackbone(img_size=64, embed_dim=68, depth=2, num_heads=4, mlp_dim=137,
                                         window_size=2, global_attn_indexes=(1,), use_rel_pos=True,
                                         out_channels=20, pretrain_img_size=64),
    }


def worker(out: Path) -> None:
    """One rank: build every model in place under zero.Init, gather, rank 0 saves the weights."""
    import deepspeed

    from rsfm_ds.engine.deepspeed_setup import build_model, init_distributed

    rank, _, _ = init_distributed()
    weights = {}
    for name, factory in build_models().items():
        model = build_model(factory, DS_CONFIG, zero_init=True, seed=SEED)
        params = list(model.parameters())
        assert all(p.numel() == 0 for p in params), "expected partitioned parameters"
        with deepspeed.zero.GatheredParameters(params):
            weights[name] = {n: p.detach().clone() for n, p in model.named_parameters()}
    if rank == 0:
        torch.save(weights, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _launch(ranks: int, out: Path) -> None:
    from launching import free_port

    port = str(free_port())
    procs = []
    for r in range(ranks):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(ranks),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, str(out)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:  # none outlives the test, even on a timeout
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]


@pytest.mark.distributed
@pytest.mark.parametrize("ranks", [2, 1])
def test_zero_init_in_place_equals_plain_build(ranks, tmp_path):
    from rsfm_ds.engine.deepspeed_setup import build_model

    out = tmp_path / "weights.pt"
    _launch(ranks, out)
    gathered = torch.load(out)
    for name, factory in build_models().items():
        torch.manual_seed(99)  # the constructor's own draw must not matter
        plain = dict(build_model(factory, DS_CONFIG, zero_init=False, seed=SEED).named_parameters())
        assert gathered[name].keys() == plain.keys()
        for key, value in plain.items():
            assert torch.equal(gathered[name][key], value.detach()), f"{name}: {key} differs"
        # Not a constant model: the random rules really drew values.
        assert gathered[name][next(k for k in plain if k.endswith("fc1.weight"))].std() > 0


def test_slices_equal_the_whole():
    """Any slice, generated on its own, equals that slice of the whole parameter."""
    numel = 3 * CHUNK + 777
    whole = torch.empty(numel)
    fill_flat(whole, Uniform(-1.0, 1.0), 7, "p", numel, 0)
    for start, stop in [(0, 1), (CHUNK - 3, CHUNK + 5), (12345, 2 * CHUNK + 99), (numel - 10, numel)]:
        part = torch.empty(stop - start)
        fill_flat(part, Uniform(-1.0, 1.0), 7, "p", numel, start)
        assert torch.equal(part, whole[start:stop])
    other = torch.empty(numel)
    fill_flat(other, Uniform(-1.0, 1.0), 7, "q", numel, 0)  # another name: another stream
    assert not torch.equal(other, whole)


def test_moments_match_the_distributions():
    """Independent truths: N(0, 0.02^2) has mean 0 and std 0.02; xavier-uniform U(-a, a) with
    a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010) has std a / sqrt(3) and never leaves
    [-a, a]. 2^20 draws put the sample std within 0.5% of the truth (its standard error is
    about 0.07%)."""
    from rsfm_ds.models.seeded_init import kaiming_normal, xavier_uniform

    n = 1 << 20
    x = torch.empty(n, dtype=torch.float64)
    fill_flat(x, Normal(0.0, 0.02), 0, "cls_token", n, 0)
    assert abs(x.mean().item()) < 5 * 0.02 / math.sqrt(n)
    assert x.std().item() == pytest.approx(0.02, rel=5e-3)
    # Normal tails: about 4.55% of draws beyond 2 std.
    assert (x.abs() > 0.04).double().mean().item() == pytest.approx(0.0455, abs=2e-3)

    fan_in, fan_out = 768, 3072
    a = math.sqrt(6.0 / (fan_in + fan_out))
    rule = xavier_uniform(fan_in, fan_out)
    fill_flat(x, rule, 0, "fc1.weight", n, 0)
    assert x.abs().max().item() <= a
    assert x.std().item() == pytest.approx(a / math.sqrt(3.0), rel=5e-3)
    assert abs(x.mean().item()) < 5 * a / math.sqrt(3.0 * n)

    # kaiming_normal (fan out, ReLU): std sqrt(2 / fan_out).
    fill_flat(x, kaiming_normal(256 * 9), 0, "conv.weight", n, 0)
    assert x.std().item() == pytest.approx(math.sqrt(2.0 / (256 * 9)), rel=5e-3)


def test_same_seed_same_model_whatever_the_global_generator():
    """``init_weights(seed)`` depends on the seed only; without one it follows torch.manual_seed."""
    from rsfm_ds.models.mae import create_mae

    torch.manual_seed(0)
    a = create_mae("debug")
    torch.manual_seed(1)
    b = create_mae("debug")
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    a.init_weights(5)
    b.init_weights(5)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


if __name__ == "__main__":
    from rsfm_ds.engine.process_end import finish_process

    worker(Path(sys.argv[1]))
    finish_process(0)  # without the interpreter's teardown, which can abort a rank
