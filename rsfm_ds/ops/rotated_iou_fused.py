"""The fused CPU rotated-IoU kernel: building it, and choosing between it and the plain path.

What was chosen and why: the plain path (``polygon_iou``) clips every candidate pair with a
dozen whole-tensor torch operations per half-plane, so each pair costs about 1 KB of memory
traffic and a few microseconds; a compiled loop that keeps one pair's polygon in registers costs
a few hundred flops. The kernel (``csrc/rotated_iou.cpp``) is a C++ extension JIT-built with
``torch.utils.cpp_extension.load``, the way DeepSpeed builds its ops: the source ships inside the
package and is compiled on first use into the torch extensions cache (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``), which needs a C++ compiler and ninja (a dependency of
this package). It runs the plain path's algorithm (Sutherland-Hodgman clipping of prepared
``ConvexSet`` rows, float64, the same tolerance, clamps and zero conventions), so the two agree
to rounding; the intersection method of mmcv's ``mmcv/ops/csrc/common/box_iou_rotated_utils.hpp``
(edge crossings plus contained vertices, then a convex hull) was not used because its hull step
needs a sort and its own epsilons, which would give degenerate pairs different conventions from
the reference path. Pairs are spread over torch's intra-op threads (OpenMP).

Selection (``select_kernel``), per call:

* ``RSFM_ROTATED_OPS=plain`` always takes the plain path;
* ``RSFM_ROTATED_OPS=fused`` takes the kernel for CPU tensors and raises if it does not build;
* unset (``auto``): the kernel for CPU tensors when it builds; on a build failure one warning,
  then the plain path for the rest of the process.

CUDA tensors always take the plain path: it is vectorised over pairs and runs on the device
as it is, and a CUDA kernel could not be tested without a GPU. Neither path is differentiable
(the plain one writes into preallocated tensors); every caller (the RoI assigner, NMS, the
evaluation, the DOTA merge) runs without gradients.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from ..errors import ConfigError

ENV_VAR = "RSFM_ROTATED_OPS"
CHOICES = ("auto", "plain", "fused")
SOURCE = Path(__file__).with_name("csrc") / "rotated_iou.cpp"
EXTENSION_NAME = "rsfm_rotated_iou"

_lock = threading.Lock()
_module: Optional[ModuleType] = None
_failure: Optional[str] = None
build_seconds: Optional[float] = None  # wall time of this process's build or cache load


def requested_backend() -> str:
    """The value of ``RSFM_ROTATED_OPS`` (``auto`` when unset or empty)."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ConfigError(f"{ENV_VAR}: must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


def load_kernel() -> ModuleType:
    """Build (first use) or load (cache hit) the extension; raises on failure, every time."""
    global _module, _failure, build_seconds
    with _lock:
        if _module is not None:
            return _module
        if _failure is not None:
            raise RuntimeError(_failure)
        from torch.utils import cpp_extension

        start = time.perf_counter()
        try:
            _module = cpp_extension.load(
                name=EXTENSION_NAME, sources=[str(SOURCE)],
                extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # a missing compiler or ninja shows up as several types
            _failure = f"building the fused rotated-IoU kernel failed: {exc}"
            raise RuntimeError(_failure) from exc
        build_seconds = time.perf_counter() - start
        return _module


def select_kernel(device: torch.device) -> Optional[ModuleType]:
    """The extension module when the fused path applies to tensors on ``device``, else ``None``."""
    backend = requested_backend()
    if backend == "plain" or device.type != "cpu":
        return None
    if backend == "fused":
        return load_kernel()
    if _failure is not None:
        return None
    try:
        return load_kernel()
    except RuntimeError as exc:
        warnings.warn(f"{exc}; using the plain torch path (set {ENV_VAR}=plain to silence this)",
                      RuntimeWarning, stacklevel=3)
        return None
