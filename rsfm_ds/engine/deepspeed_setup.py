"""DeepSpeed set-up shared by every engine: process group, config reconciliation, initialisation.

The run config is the single source of truth for batch sizes, precision and clipping. A DeepSpeed
JSON may leave those out (they are filled in) or repeat them, but a value that contradicts the run
config is refused before anything is built, naming both fields: silently training with another
batch size or precision than the one asked for is the worst kind of bug on a cluster.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..config import ConfigError
from ..models.seeded_init import SeededInit
from . import zero3_fastpaths
from .config import DEFAULT_COLLECTIVE_TIMEOUT_S
from .launcher_guard import follow_launcher
from .zero_inplace_init import init_partitions_in_place, supports_inplace


def init_distributed(timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> Tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed (NCCL on GPUs, gloo on CPU).

    Works under the ``deepspeed`` launcher, ``torchrun``, SLURM's ``srun`` (DeepSpeed maps its
    variables) and as a single process. A collective operation that waits longer than
    ``timeout_s`` for the other ranks fails (a rank stopped, hung or died) instead of waiting
    forever. Returns ``(rank, local_rank, world_size)``.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        # A plain `python` process: a world of one, so the same code runs without a launcher.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    follow_launcher()  # a rank never outlives the job it belongs to (engine/launcher_guard.py)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                                   timeout=datetime.timedelta(seconds=timeout_s))
        if not torch.cuda.is_available():
            _release_shm_allreduce_buffer()
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count() or 1)))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return rank, local_rank, world


def _release_shm_allreduce_buffer() -> None:
    """Unlink this rank's DeepSpeed CPU shared-memory all-reduce segment once every rank mapped it.

    DeepSpeed's CPU backend creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``
    (66 MB) per rank and never unlinks it, so every CPU run leaves its segments behind in RAM-backed
    tmpfs; a test suite leaks gigabytes. Peers open each other's segments inside
    ``init_distributed``; after a barrier every mapping exists, and unlinking only drops the name
    (the memory stays valid until the processes exit, then the kernel frees it).
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return
    if torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{torch.distributed.get_rank()}"
    try:
        os.unlink(Path("/dev/shm") / name)
    except FileNotFoundError:
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def load_ds_config(path: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"train.ds_config: DeepSpeed config {path} not found")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _agree(ds: Dict[str, Any], key: str, want: Any, run_field: str, source: str) -> None:
    """Fill ``ds[key]`` with ``want`` or refuse a contradicting value."""
    have = ds.get(key, "auto")
    if have == "auto" or have is None:
        ds[key] = want
    elif have != want:
        raise ConfigError(f"{source}: {key} is {have!r} but {run_field} gives {want!r}; "
                          f"remove it from the DeepSpeed config or make them agree")


def reconcile_ds_config(ds_config: Dict[str, Any], *, micro_batch_size: int, global_batch_size: int,
                        world_size: int, precision: str, clip_grad: Optional[float],
                        source: str = "DeepSpeed config", tune_one_rank: bool = True) -> Dict[str, Any]:
    """The DeepSpeed config with batch sizes, precision and clipping filled from the run config.

    With ``tune_one_rank`` a ZeRO-3 config for a world of one rank also gets
    :func:`one_rank_zero3` (see there). Raises :class:`ConfigError` when the global batch does not
    divide into micro batches over the world size, or when the DeepSpeed config contradicts the
    run config.
    """
    stage = ds_config.get("zero_optimization", {}).get("stage")
    if stage is not None and stage not in (0, 1, 2, 3):
        raise ConfigError(f"{source}: zero_optimization.stage: must be 0, 1, 2 or 3, got {stage!r}")
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        raise ConfigError(
                          f"train.global_batch_size: {global_batch_size} is not a multiple of micro_batch_size "
                          f"{micro_batch_size} x world size {world_size} = {per_step}")
    ds = copy.deepcopy(ds_config)
    _agree(ds, "train_micro_batch_size_per_gpu", micro_batch_size, "train.micro_batch_size", source)
    _agree(ds, "gradient_accumulation_steps", global_batch_size // per_step,
           "train.global_batch_size / (micro_batch_size x world size)", source)
    _agree(ds, "train_batch_size", global_batch_size, "train.global_batch_size", source)
    for name in ("bf16", "fp16"):
        section = ds.setdefault(name, {})
        enabled = section.get("enabled", "auto")
        want = precision == name
        if enabled == "auto":
            section["enabled"] = want
        elif bool(enabled) != want:
            raise ConfigError(f"{source}: {name}.enabled is {enabled} but train.precision is {precision!r}")
    _agree(ds, "gradient_clipping", float(clip_grad) if clip_grad else 0.0, "optim.clip_grad", source)
    if tune_one_rank and world_size == 1 and stage == 3:
        one_rank_zero3(ds)
    return ds


# A key of the reconciled config that DeepSpeed never sees: initialize() takes it out and marks
# the model's transformer blocks as ZeRO-3 leaf modules (one_rank_zero3).
LEAF_BLOCKS_KEY = "rsfm_zero3_leaf_blocks"


def one_rank_zero3(ds: Dict[str, Any]) -> None:
    """ZeRO-3 settings for a world of one rank (in place): ``memory_efficient_linear: false`` and
    transformer blocks as leaf modules (``LEAF_BLOCKS_KEY``).

    DeepSpeed's memory-efficient linear (``deepspeed/runtime/zero/linear.py``) replaces
    ``torch.nn.functional.linear`` for the whole process with an autograd function that keeps no
    gathered weight alive after ZeRO-3 releases it, at the price of an unfused matmul + bias and
    Python bookkeeping per call (measured: 3-5% of a ``debug_l`` step, neutral for ``vit_b12x1``;
    docs/benchmarks.md). On one rank a gathered weight is a copy of a partition that already
    holds the whole parameter, so keeping it until the backward pass costs at most one more copy
    of the weights in the training dtype, next to the 16 bytes per parameter of training states.
    With more ranks it would keep every gathered weight alive, i.e. undo ZeRO-3's parameter
    sharding, so configs for several ranks are passed through unchanged. (A persistence threshold
    above every parameter was measured too and did not help: DeepSpeed then re-gathers all
    persistent parameters after every optimizer step.)

    ZeRO-3 hooks every module with parameters (forward and backward, before and after: four
    Python hooks each, ~270 modules in ``debug_l``). A leaf module is fetched and released as one
    unit (``deepspeed.utils.set_z3_leaf_modules``), so with each transformer block a leaf its
    norms, projections and MLP need no hooks of their own: 9% of a ``debug_l`` step. On one rank
    a block's parameters gathered at once are a copy of what the rank holds anyway.
    """
    ds.setdefault("zero_optimization", {})["memory_efficient_linear"] = False
    ds[LEAF_BLOCKS_KEY] = True


def mark_leaf_blocks(model: nn.Module) -> int:
    """Mark every transformer block of ``model`` as a ZeRO-3 leaf module; returns how many."""
    from deepspeed.utils import set_z3_leaf_modules

    from ..models.vit import Block, ParallelBlock

    present = [cls for cls in (Block, ParallelBlock) if any(type(m) is cls for m in model.modules())]
    return len(set_z3_leaf_modules(model, present)) if present else 0


def zero_stage(ds_config: Dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def model_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_model(factory, ds_config: Dict[str, Any], zero_init: bool, seed: int = 0) -> nn.Module:
    """Build ``factory()``; under ``zero.Init`` when asked (ZeRO-3 only), partitioned from the start.

    A model that declares its initialisation as rules (``init_rules``, see
    :mod:`rsfm_ds.models.seeded_init`) is initialised from ``seed``: a plain build fills every
    parameter, a ``zero.Init`` build has each rank write its own partitions in place
    (:mod:`rsfm_ds.engine.zero_inplace_init`), and both give the same weights at any world size.
    Other models built under ``zero.Init`` (ones that only provide ``init_module(m)``) are
    initialised module by module with the module's partitions gathered and rank 0's values
    broadcast, which costs a broadcast of the whole model.
    """
    if not zero_init:
        model = factory()
        if isinstance(model, SeededInit):
            model.init_weights(seed)
        return model
    if zero_stage(ds_config) != 3:
        raise ConfigError("model.zero_init needs ZeRO stage 3 in the DeepSpeed config")
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = factory()
    if supports_inplace(model):
        init_partitions_in_place(model, seed)
    elif hasattr(model, "init_module"):
        for module in model.modules():
            params = list(module.parameters(recurse=False))
            ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=0) if params else nullcontext()
            with ctx:
                if torch.distributed.get_rank() == 0 or not params:
                    model.init_module(module)
    return model


def initialize(model: nn.Module, param_groups: List[Dict], ds_config: Dict[str, Any], optim_cfg):
    """``deepspeed.initialize`` with AdamW built by DeepSpeed from the run config's optimizer fields.

    DeepSpeed picks the optimizer implementation for the hardware (fused Adam on GPU, its CPU Adam
    with offload, a JIT-built CPU op otherwise). Param groups keep their ``lr_scale``.
    """
    import deepspeed

    ds = copy.deepcopy(ds_config)
    if ds.pop(LEAF_BLOCKS_KEY, False):  # only one_rank_zero3 sets it, for ZeRO-3
        mark_leaf_blocks(model)
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    if str(opt.get("type", "")).lower() not in ("adamw", "adam"):
        raise ConfigError(f"DeepSpeed config optimizer.type is {opt.get('type')!r}; rsfm-ds trains with AdamW")
    params = opt.setdefault("params", {})
    params.update(lr=0.0, betas=list(optim_cfg.betas), eps=optim_cfg.eps,
                  weight_decay=optim_cfg.weight_decay)
    if opt["type"].lower() == "adam":
        params["adam_w_mode"] = True
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups]
    if zero_stage(ds) == 3:
        zero3_fastpaths.install()  # exact shortcuts for two per-step copies (engine/zero3_fastpaths.py)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds)
    # DeepSpeed casts parameters to the training precision but leaves buffers (BatchNorm running
    # statistics) in fp32, which mixed-dtype kernels reject; cast them as module.to(dtype) would.
    dtype = torch.bfloat16 if ds.get("bf16", {}).get("enabled") else (
        torch.float16 if ds.get("fp16", {}).get("enabled") else None)
    if dtype is not None:
        for buf in engine.module.buffers():
            if buf.is_floating_point():
                buf.data = buf.data.to(dtype)
    return engine, optimizer


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory (GPU) or peak resident set size of this process (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


KNOWN_PEAK_TFLOPS = {  # dense bf16/fp16 tensor-core peaks from the vendors' data sheets
    "H100": 989.0, "H200": 989.0, "A100": 312.0, "V100": 125.0, "L40S": 362.0, "A10": 125.0,
}


def device_peak_tflops(device: torch.device, configured: Optional[float]) -> Optional[float]:
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return value
    return None
