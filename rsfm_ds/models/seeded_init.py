"""Seeded initialisation whose values do not depend on how a parameter is split.

A parameter's initial values are a pure function of ``(seed, parameter name, flat index)``: the
flattened parameter is cut into fixed chunks of :data:`CHUNK` values, and chunk ``k`` of parameter
``name`` is drawn from its own generator seeded with ``(seed, stable hash of name, k)``. Any slice
of the flat parameter can therefore be generated on its own, and a rank that owns a ZeRO-3
partition (a flat slice) writes exactly the values the whole-model initialisation would have put
there: the same seed gives the same weights at any world size, with or without ``zero.Init``. The
engine's in-place partition initialiser (``rsfm_ds/engine/zero_inplace_init.py``) and a plain build
(:meth:`SeededInit.init_weights`) both go through :func:`fill_flat`.

The generator is NumPy's PCG64 behind a ``SeedSequence`` (128-bit state, so chunk streams of
different parameters do not collide; torch's CPU generator keeps only 32 bits of a seed), and the
name hash is BLAKE2b, which unlike Python's ``hash()`` is the same in every process. The values
depend on NumPy's PCG64 stream and its float32 ``random`` / ``standard_normal``; NumPy keeps those
stable across releases, but a change there would change (not break) the initialisation.

Models describe their initialisation as *rules*, one per parameter (:class:`Normal`,
:class:`Uniform`, :class:`Constant`, :class:`Values`), computed from module attributes rather than
from the tensor, because a parameter built under ``zero.Init`` holds an empty shard.
"""
from __future__ import annotations

import abc
import hashlib
import math
from dataclasses import dataclass
from typing import Dict, Union

import numpy as np
import torch
import torch.nn as nn

CHUNK = 1 << 16
"""Values per generator stream. Small enough that a rank whose partition starts or ends inside a
chunk wastes little generation (at most two chunks per parameter), large enough that the cost of
seeding a generator (~10 us) is negligible against drawing the chunk."""


@dataclass(frozen=True)
class Normal:
    """``N(mean, std^2)`` (``torch.nn.init.normal_``)."""

    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Uniform:
    """``U[low, high)`` (``torch.nn.init.uniform_``)."""

    low: float
    high: float


@dataclass(frozen=True)
class Constant:
    """Every value ``value`` (``zeros_``, ``ones_``, ``constant_``)."""

    value: float


@dataclass(frozen=True, eq=False)
class Values:
    """Exact values (a deterministic table such as a sin-cos position table); ``table`` has the
    parameter's number of elements, in the parameter's row-major order."""

    table: torch.Tensor


Rule = Union[Normal, Uniform, Constant, Values]


def xavier_uniform(fan_in: int, fan_out: int, gain: float = 1.0) -> Uniform:
    """``torch.nn.init.xavier_uniform_``: ``U(-a, a)``, ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return Uniform(-bound, bound)


def kaiming_normal(fan: int, gain: float = math.sqrt(2.0)) -> Normal:
    """``torch.nn.init.kaiming_normal_``: ``N(0, (gain / sqrt(fan))^2)`` (ReLU gain by default)."""
    return Normal(0.0, gain / math.sqrt(fan))


def fan_in_uniform(fan_in: int) -> Uniform:
    """PyTorch's default for convolution and linear weights and biases
    (``kaiming_uniform_(a=sqrt(5))`` and the bias rule of ``reset_parameters``): ``U(-b, b)``,
    ``b = 1 / sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return Uniform(-bound, bound)


def name_key(name: str) -> int:
    """A 64-bit hash of a parameter name that is the same in every process (BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def fill_flat(out: torch.Tensor, rule: Rule, seed: int, name: str, numel: int, start: int) -> None:
    """Write the values of flat indexes ``[start, start + out.numel())`` of parameter ``name``.

    Args:
        out: 1-D contiguous destination of any floating dtype and device; values are drawn in
            float32 on the CPU and cast once, so a bf16 partition rounds exactly as a cast fp32
            parameter would.
        rule: the parameter's distribution.
        seed: the run seed.
        name: the parameter's name in the model (``encoder.blocks.0.attn.qkv.weight``).
        numel: elements of the whole parameter (fixes the length of its last chunk).
        start: flat index of ``out[0]`` in the parameter; ``start + out.numel() <= numel``.
    """
    count = out.numel()
    if start < 0 or start + count > numel:
        raise ValueError(f"{name}: slice [{start}, {start + count}) outside a parameter of {numel} values")
    if count == 0:
        return
    with torch.no_grad():
        if isinstance(rule, Constant):
            out.fill_(rule.value)
            return
        if isinstance(rule, Values):
            out.copy_(rule.table.reshape(-1)[start:start + count])
            return
        direct = out.device.type == "cpu" and out.dtype == torch.float32
        host = out.numpy() if direct else np.empty(count, dtype=np.float32)
        _draw(host, rule, seed, name_key(name), numel, start)
        if not direct:
            out.copy_(torch.from_numpy(host))


def _draw(host: np.ndarray, rule: Rule, seed: int, key: int, numel: int, start: int) -> None:
    """Fill ``host`` (float32) with flat indexes ``[start, start + len(host))`` of a random rule."""
    stop = start + host.size
    for k in range(start // CHUNK, -(-stop // CHUNK)):
        lo, hi = k * CHUNK, min((k + 1) * CHUNK, numel)
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key, k])))
        # The whole chunk is always drawn, so its values never depend on which slice is asked for.
        if lo >= start and hi <= stop:
            buf = host[lo - start:hi - start]
            _sample(gen, rule, buf)
        else:
            buf = np.empty(hi - lo, dtype=np.float32)
            _sample(gen, rule, buf)
            a, b = max(lo, start), min(hi, stop)
            host[a - start:b - start] = buf[a - lo:b - lo]


def _sample(gen: np.random.Generator, rule: Rule, buf: np.ndarray) -> None:
    if isinstance(rule, Normal):
        gen.standard_normal(dtype=np.float32, out=buf)
        buf *= np.float32(rule.std)
        buf += np.float32(rule.mean)
    elif isinstance(rule, Uniform):
        gen.random(dtype=np.float32, out=buf)
        buf *= np.float32(rule.high - rule.low)
        buf += np.float32(rule.low)
    else:
        raise TypeError(f"not a random rule: {rule!r}")


def _draw_seed() -> int:
    """A seed from torch's global generator, so ``torch.manual_seed`` keeps builds reproducible."""
    # An explicit CPU device: a model built under ``torch.device("meta")`` still gets a number.
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64, device="cpu").item())


class SeededInit(abc.ABC):
    """Mixin for models that describe their initialisation with :meth:`init_rules`.

    ``init_rules(m)`` returns ``{local parameter name: rule}`` for the parameters ``m`` owns
    directly; the model's own rules cover every parameter it has (the engine's in-place
    partition initialiser refuses a parameter without one).
    """

    @abc.abstractmethod
    def init_rules(self, m: nn.Module) -> Dict[str, Rule]:
        """The rules of the parameters ``m`` owns directly (every model class gives its own)."""

    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every parameter from ``seed`` (default: drawn from torch's global
        generator). Parameters with no values here (ZeRO-3 shards, meta tensors) are skipped: the
        engine initialises shards in place."""
        seed = _draw_seed() if seed is None else seed
        for prefix, module in self.named_modules():
            for local, rule in self.init_rules(module).items():
                p = module._parameters[local]
                name = f"{prefix}.{local}" if prefix else local
                if p.numel() and not p.is_meta:
                    fill_flat(p.data.view(-1), rule, seed, name, p.numel(), 0)

    def init_module(self, m: nn.Module) -> None:
        """Initialise the parameters ``m`` owns directly from a seed drawn from torch's global
        generator: for engines and wrapping models that gather one module's ZeRO-3 partitions at
        a time and initialise it on one rank."""
        seed = _draw_seed()
        for local, rule in self.init_rules(m).items():
            p = m._parameters[local]
            if not p.is_meta:
                fill_flat(p.data.view(-1), rule, seed, local, p.numel(), 0)


__all__ = ["CHUNK", "Constant", "Normal", "Rule", "SeededInit", "Uniform", "Values", "fan_in_uniform",
           "fill_flat", "kaiming_normal", "name_key", "xavier_uniform"]
