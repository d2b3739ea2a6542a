"""ZeRO-3 on one rank (rsfm_ds.engine.deepspeed_setup.one_rank_zero3): the setting applies only
where a partition is the whole model, and a one-rank ZeRO-3 training step with it computes what
a plain PyTorch AdamW step computes.

The step test runs DeepSpeed in a subprocess (this file is its worker), so the test process keeps
no process group and no patched ``torch.nn.functional``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsfm_ds.engine.deepspeed_setup import LEAF_BLOCKS_KEY, reconcile_ds_config  # noqa: E402

BASE = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1e4}}


def _reconcile(ds, world, **kw):
    return reconcile_ds_config(ds, micro_batch_size=2, global_batch_size=2 * world, world_size=world,
                               precision="fp32", clip_grad=None, **kw)


def test_one_rank_settings_apply_to_one_rank_zero3_only():
    one = _reconcile(BASE, 1)
    assert one["zero_optimization"] == {**BASE["zero_optimization"], "memory_efficient_linear": False}
    assert one[LEAF_BLOCKS_KEY] is True
    assert BASE["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 1e4}  # not mutated
    for ds, world, kw in [(BASE, 2, {}), (BASE, 1, {"tune_one_rank": False}),
                          ({"zero_optimization": {"stage": 2}}, 1, {})]:
        reconciled = _reconcile(ds, world, **kw)
        assert reconciled["zero_optimization"] == ds["zero_optimization"], (world, kw)
        assert LEAF_BLOCKS_KEY not in reconciled


def worker(grad_ckpt: bool) -> None:
    """One rank: a ZeRO-3 step and a plain AdamW step from the same weights; print the largest
    parameter difference and both losses (the ZeRO-3 model with its blocks as leaf modules, and
    with activation checkpointing when asked)."""
    import torch

    from rsfm_ds.engine.config import OptimConfig
    from rsfm_ds.engine.deepspeed_setup import init_distributed, initialize
    from rsfm_ds.engine.param_groups import build_param_groups
    from rsfm_ds.models.mae import create_mae

    init_distributed()
    ds = _reconcile({"zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW",
                     "params": {"torch_adam": True}}}, 1)
    imgs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cfg = OptimConfig()

    def model():
        torch.manual_seed(0)
        return create_mae("debug_s", img_size=64)

    plain = model()
    groups = build_param_groups(plain, cfg.weight_decay)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k not in ("names", "lr_scale")} for g in groups],
                            lr=1e-3, betas=cfg.betas, eps=cfg.eps)
    torch.manual_seed(1)
    loss_plain, _, _ = plain(imgs)
    loss_plain.backward()
    opt.step()

    zmodel = model()
    zmodel.set_grad_checkpointing(grad_ckpt)
    engine, optimizer = initialize(zmodel, build_param_groups(zmodel, cfg.weight_decay), ds, cfg)
    for g in optimizer.param_groups:
        g["lr"] = 1e-3
    torch.manual_seed(1)  # the same masks
    loss_zero, _, _ = engine(imgs)
    engine.backward(loss_zero)
    engine.step()
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        diff = max((p.detach() - q.detach()).abs().max().item()
                   for p, q in zip(params, plain.parameters()))
        moved = max((p.detach() - q.detach()).abs().max().item()
                    for p, q in zip(params, model().parameters()))
    from deepspeed.utils import z3_leaf_module

    from rsfm_ds.models.vit import Block

    leaves = sum(z3_leaf_module(m) for m in engine.module.modules())
    blocks = sum(isinstance(m, Block) for m in engine.module.modules())
    print("RESULT " + json.dumps(dict(diff=diff, moved=moved, leaves=leaves, blocks=blocks,
                                      loss_plain=loss_plain.item(), loss_zero=loss_zero.item())), flush=True)


@pytest.mark.parametrize("grad_ckpt", [False, True])
def test_one_rank_zero3_step_equals_a_plain_adamw_step(grad_ckpt):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, __file__, str(int(grad_ckpt))], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["loss_zero"] == pytest.approx(r["loss_plain"], rel=1e-6)
    assert r["leaves"] == r["blocks"] > 0  # every encoder and decoder block fetched as one unit
    assert r["moved"] > 1e-4  # the step changed the weights (AdamW moves each by about lr)
    assert r["diff"] < 1e-6, r


if __name__ == "__main__":
    from rsfm_ds.engine.process_end import finish_process

    worker(bool(int(sys.argv[1])))
    finish_process(0)  # without the interpreter's teardown, which can abort a rank
