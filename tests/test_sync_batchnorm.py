"""Synchronised BatchNorm: on 2 gloo ranks it equals ``nn.BatchNorm2d`` over the concatenated batch
(outputs, running statistics, input and parameter gradients); on one process it is BatchNorm2d."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import torch
import torch.nn as nn
from launching import MARK, free_port, job_processes

from rsfm_ds.models.sync_batchnorm import SyncBatchNorm

C = 3
# Per step: the batch of each rank. Unequal counts check the weighting by count; an empty rank and
# micro-batch 1 per rank on a 1x1 map (UperNet's pyramid-pooling cell) are the edge cases.
STEPS = [((3, 5, 5), (1, 5, 5)), ((2, 4, 6), (2, 4, 6)), ((4, 5, 5), (0, 5, 5)), ((1, 1, 1), (1, 1, 1))]


def step_data(step: int):
    """The full batch of ``step`` (rank 0's samples first) and the upstream gradient ``dL/dy``."""
    g = torch.Generator().manual_seed(100 + step)
    (b0, h, w), (b1, _, _) = STEPS[step]
    x = torch.randn(b0 + b1, C, h, w, generator=g) * 3 + torch.tensor([5.0, -2.0, 0.5]).view(1, C, 1, 1)
    return x, torch.randn(b0 + b1, C, h, w, generator=g)


def init_params(bn: nn.Module) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))


def rank_slice(step: int, rank: int) -> slice:
    b0 = STEPS[step][0][0]
    return slice(0, b0) if rank == 0 else slice(b0, None)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        bn = SyncBatchNorm(C)
        init_params(bn)
        record = {"out": [], "grad_x": [], "grad_w": [], "grad_b": []}
        for step in range(len(STEPS)):
            x, dy = step_data(step)
            x, dy = x[rank_slice(step, rank)].clone().requires_grad_(True), dy[rank_slice(step, rank)]
            bn.zero_grad()
            out = bn(x)
            (out * dy).sum().backward()
            record["out"].append(out.detach())
            record["grad_x"].append(x.grad)
            record["grad_w"].append(bn.weight.grad.clone())
            record["grad_b"].append(bn.bias.grad.clone())
        record["running"] = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
        # Eval mode: running statistics, no collective (rank 1 alone would hang if there were one).
        bn.eval()
        if rank == 1:
            record["eval"] = bn(step_data(0)[0])
        # bf16 as DeepSpeed runs it (parameters and buffers cast): statistics still computed in fp32.
        half = SyncBatchNorm(C).train()
        init_params(half)
        half = half.to(torch.bfloat16)
        x = step_data(0)[0][rank_slice(0, rank)].to(torch.bfloat16).requires_grad_(True)
        out = half(x)
        out.float().sum().backward()
        record["bf16"] = (out.dtype, x.grad.dtype, half.running_mean.dtype, out.float())
        torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_equal_batchnorm_over_the_whole_batch(tmp_path):
    launch_two_ranks("batchnorm", tmp_path, timeout=120)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    ref = nn.BatchNorm2d(C)
    init_params(ref)
    for step in range(len(STEPS)):
        x, dy = step_data(step)
        x.requires_grad_(True)
        ref.zero_grad()
        out = ref(x)
        (out * dy).sum().backward()
        for rank, got in enumerate(ranks):
            s = rank_slice(step, rank)
            torch.testing.assert_close(got["out"][step], out[s].detach(), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["grad_x"][step], x.grad[s], atol=1e-5, rtol=1e-5)
        # Each rank holds the gradient of its own loss; the engine's data-parallel reduction sums them.
        torch.testing.assert_close(ranks[0]["grad_w"][step] + ranks[1]["grad_w"][step], ref.weight.grad,
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ranks[0]["grad_b"][step] + ranks[1]["grad_b"][step], ref.bias.grad,
                                   atol=1e-4, rtol=1e-5)
    for rank, got in enumerate(ranks):
        mean, var, tracked = got["running"]
        torch.testing.assert_close(mean, ref.running_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(var, ref.running_var, atol=1e-6, rtol=1e-6)  # the unbiased global variance
        assert int(tracked) == len(STEPS)
    assert torch.equal(ranks[0]["running"][0], ranks[1]["running"][0])  # identical buffers on every rank
    assert torch.equal(ranks[0]["running"][1], ranks[1]["running"][1])
    torch.testing.assert_close(ranks[1]["eval"], ref.eval()(step_data(0)[0]), atol=1e-6, rtol=1e-6)

    x = step_data(0)[0]
    half_ref = nn.BatchNorm2d(C)
    init_params(half_ref)
    expected = half_ref(x.to(torch.bfloat16).float())
    for rank, got in enumerate(ranks):
        out_dtype, grad_dtype, buffer_dtype, out = got["bf16"]
        assert out_dtype == grad_dtype == buffer_dtype == torch.bfloat16
        torch.testing.assert_close(out, expected[rank_slice(0, rank)].detach(), atol=0.05, rtol=0.02)


def test_one_process_is_batchnorm2d_exactly():
    torch.manual_seed(0)
    sync, ref = SyncBatchNorm(C), nn.BatchNorm2d(C)
    init_params(sync)
    init_params(ref)
    assert sync.state_dict().keys() == ref.state_dict().keys()  # checkpoints interchange with norm="bn"
    for step in range(3):
        x, dy = step_data(step)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        (sync(xa) * dy).sum().backward()
        (ref(xb) * dy).sum().backward()
        assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(sync.weight.grad, ref.weight.grad) and torch.equal(sync.bias.grad, ref.bias.grad)
    assert torch.equal(sync.running_mean, ref.running_mean) and torch.equal(sync.running_var, ref.running_var)
    x = step_data(1)[0]
    assert torch.equal(sync.eval()(x), ref.eval()(x))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SyncBatchNorm(C).train()(torch.randn(1, C, 1, 1))


def _deepspeed_worker(rank: int, port: int, out_dir: str) -> None:
    """A few ZeRO-2 steps of a small UperNet, fp32 and bf16, set up as the fine-tuning engine does."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)

    from rsfm_ds.engine.config import OptimConfig
    from rsfm_ds.engine.deepspeed_setup import init_distributed, initialize
    from rsfm_ds.models.heads import UperNet, UperNetConfig

    init_distributed()  # also unlinks DeepSpeed's CPU shared-memory segments once mapped
    try:
        record = {}
        for precision, norm in (("fp32", "syncbn"), ("bf16", "syncbn"), ("fp32", "bn")):
            torch.manual_seed(0)  # the same initial weights on both ranks
            model = UperNet(3, in_channels=8, cfg=UperNetConfig(channels=16, aux_channels=8, norm=norm))
            ds_config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2,
                         "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2},
                         "optimizer": {"type": "AdamW", "params": {"torch_adam": True}},
                         "bf16": {"enabled": precision == "bf16"}, "steps_per_print": 10 ** 9}
            engine, optimizer = initialize(model, [{"params": list(model.parameters())}], ds_config,
                                           OptimConfig(lr=1e-2))
            for group in optimizer.param_groups:
                group["lr"] = 1e-2
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            for step in range(3):
                g = torch.Generator().manual_seed(10 * step + rank)  # each rank its own batch
                feats = {f"p{i}": torch.randn(2, 8, 32 // 2 ** i, 32 // 2 ** i, generator=g).to(dtype)
                         for i in (2, 3, 4, 5)}
                labels = torch.randint(0, 3, (2, 32, 32), generator=g)
                engine.backward(sum(engine.module.loss(feats, labels).values()))
                engine.step()
            record[f"{precision}-{norm}"] = {k: v.float().clone() for k, v in engine.module.state_dict().items()}
        torch.save(record, os.path.join(out_dir, f"ds_rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def launch_two_ranks(worker: str, out_dir, timeout: float) -> None:
    """Run ``worker`` of this file as ranks 0 and 1 (separate processes, gloo); none is left behind."""
    mark, port = uuid.uuid4().hex, free_port()
    env = {**os.environ, MARK: mark, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, __file__, worker, str(rank), str(port), str(out_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    try:
        logs = [proc.communicate(timeout=timeout)[0] for proc in ranks]
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in ranks] == [0, 0], [log[-3000:] for log in logs]
    assert job_processes(mark) == {}


@pytest.mark.distributed
def test_running_statistics_stay_equal_across_ranks_under_zero2(tmp_path):
    """Under DeepSpeed ZeRO-2 (fp32 and bf16, buffers cast as the engine does), SyncBN's running
    statistics are the same on both ranks after training steps on different data; per-rank BN's differ."""
    launch_two_ranks("deepspeed", tmp_path, timeout=240)
    ranks = [torch.load(tmp_path / f"ds_rank{r}.pt") for r in range(2)]
    for run in ("fp32-syncbn", "bf16-syncbn"):
        a, b = ranks[0][run], ranks[1][run]
        stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
        assert len(stats) >= 2 * 8, run  # every conv-norm-ReLU of both heads
        for key in a:  # parameters (replicated by ZeRO-2) and BatchNorm buffers
            assert torch.equal(a[key], b[key]), (run, key)
        assert all(int(a[k.replace("running_mean", "num_batches_tracked")]) == 3 for k in stats if "mean" in k)
    a, b = ranks[0]["fp32-bn"], ranks[1]["fp32-bn"]
    assert not torch.equal(a["decode.fpn_bottleneck.1.running_mean"], b["decode.fpn_bottleneck.1.running_mean"])


if __name__ == "__main__":  # one rank of a distributed test: WORKER RANK PORT OUT_DIR
    from rsfm_ds.engine.process_end import finish_process

    {"batchnorm": _worker, "deepspeed": _deepspeed_worker}[sys.argv[1]](int(sys.argv[2]), int(sys.argv[3]),
                                                                         sys.argv[4])
    finish_process(0)  # without the interpreter's teardown, which can abort a rank
