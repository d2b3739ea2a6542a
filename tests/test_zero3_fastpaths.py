"""The exact ZeRO-3 shortcuts (rsfm_ds.engine.zero3_fastpaths).

Oracles: ``torch.cat`` for the gradient view; DeepSpeed's own code paths (the same engine steps with
the shortcuts disabled) for training, compared bit for bit on one rank (both shortcuts) and two
ranks (the gradient view). DeepSpeed runs in subprocesses (this file is their worker), so the test
process keeps no process group.
"""
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsfm_ds.engine.zero3_fastpaths import adjacent_span  # noqa: E402

from launching import free_port  # noqa: E402


def test_adjacent_slices_of_one_buffer_are_one_view_equal_to_their_concatenation():
    buf = torch.randn(100)
    parts = [buf[3:10], buf[10:40].view(5, 6), buf[40:41]]
    span = adjacent_span(parts)
    assert torch.equal(span, torch.cat([p.reshape(-1) for p in parts]))
    assert span.data_ptr() == buf[3:].data_ptr()  # a view: no copy
    span.add_(1)
    assert torch.equal(buf[3:41], span)


@pytest.mark.parametrize("case", ["gap", "reversed", "two_buffers", "strided", "dtype", "empty_list"])
def test_tensors_that_are_not_one_run_of_memory_have_no_view(case):
    buf = torch.randn(64)
    parts = {
        "gap": [buf[0:8], buf[9:16]],
        "reversed": [buf[8:16], buf[0:8]],
        "two_buffers": [buf[0:8], torch.randn(8)],
        "strided": [buf[0:8], buf[8:24:2]],
        "dtype": [buf[0:8], buf.view(torch.int32)[8:16]],
        "empty_list": [],
    }[case]
    assert adjacent_span(parts) is None


def worker(out: Path) -> None:
    """Every rank: two engines from the same weights, one with the shortcuts and one with
    DeepSpeed's own paths, each training 3 optimizer steps of 2 micro-steps with clipping."""
    import deepspeed

    from rsfm_ds.engine import zero3_fastpaths
    from rsfm_ds.engine.config import OptimConfig
    from rsfm_ds.engine.deepspeed_setup import init_distributed, initialize, reconcile_ds_config
    from rsfm_ds.engine.param_groups import build_param_groups
    from rsfm_ds.models.mae import create_mae

    rank, _, world = init_distributed()
    ds = reconcile_ds_config(
        {"zero_optimization": {"stage": 3, "reduce_bucket_size": 20000, "stage3_param_persistence_threshold": 100},
         "optimizer": {"type": "AdamW", "params": {"torch_adam": True}}},
        micro_batch_size=2, global_batch_size=4 * world, world_size=world, precision="fp32", clip_grad=0.05)
    cfg = OptimConfig()
    runs = {}
    for name, ctx in (("fast", nullcontext), ("deepspeed", zero3_fastpaths.disabled)):
        torch.manual_seed(0)
        model = create_mae("debug_s", img_size=64)
        engine, optimizer = initialize(model, build_param_groups(model, cfg.weight_decay), ds, cfg)
        for g in optimizer.param_groups:
            g["lr"] = 1e-3
        data = torch.Generator().manual_seed(10 + rank)
        torch.manual_seed(1 + rank)  # the same masks for both engines
        losses = []
        for _ in range(6):
            imgs = torch.randn(2, 3, 64, 64, generator=data)
            with ctx():
                loss, _, _ = engine(imgs)
                engine.backward(loss)
                engine.step()
            losses.append(loss.item())
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params):
            runs[name] = dict(losses=losses, weights=[p.detach().clone() for p in params])
    fast, ref = runs["fast"], runs["deepspeed"]
    torch.manual_seed(0)
    start = [p.detach() for p in create_mae("debug_s", img_size=64).parameters()]
    result = dict(
        losses_equal=fast["losses"] == ref["losses"],
        weights_equal=all(torch.equal(a, b) for a, b in zip(fast["weights"], ref["weights"])),
        moved=max((a - b).abs().max().item() for a, b in zip(fast["weights"], start)),
        taken=dict(zero3_fastpaths.taken))
    if rank == 0:
        out.write_text(json.dumps(result))


@pytest.mark.distributed
@pytest.mark.parametrize("ranks", [1, 2])
def test_training_with_the_shortcuts_equals_deepspeed_bit_for_bit(ranks, tmp_path):
    out = tmp_path / "result.json"
    port = str(free_port())
    procs = []
    for rank in range(ranks):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        with open(tmp_path / f"rank{rank}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, str(out)], cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), \
        "\n".join((tmp_path / f"rank{k}.log").read_text()[-3000:] for k in range(ranks))
    r = json.loads(out.read_text())
    assert r["moved"] > 1e-3, r  # the steps trained
    # Both shortcuts were taken by the fast engine (and only by it: DeepSpeed's paths ran too).
    assert r["taken"]["grad_view"] >= 3 and r["taken"]["grad_flatten"] == r["taken"]["grad_view"], r
    assert (r["taken"]["world1_reduce_scatter"] > 0) == (ranks == 1), r
    assert r["losses_equal"] and r["weights_equal"], r


if __name__ == "__main__":
    from rsfm_ds.engine.process_end import finish_process

    worker(Path(sys.argv[1]))
    finish_process(0)  # without the interpreter's teardown, which can abort a rank
