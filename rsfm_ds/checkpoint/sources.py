"""Read any checkpoint we handle as lazy tensors: names, shapes and dtypes first, data on demand.

Every conversion and :func:`~rsfm_ds.checkpoint.loading.load_backbone` reads through
:func:`open_source`, so they accept the same inputs and keep memory to what they touch:

* a DeepSpeed ZeRO tag directory, or a checkpoints folder (newest complete tag, or ``tag``): the
  fp32 master weights, through DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint(...,
  lazy_mode=True)`` (DeepSpeed owns the ZeRO partition layouts; its optimizer files are
  memory-mapped and each parameter is stitched from its rank partitions when asked for);
* a safetensors file, a ``model.safetensors.index.json``, or a folder holding either (our
  ``zero-to-fp32`` output, converted backbones, timm exports);
* a PyTorch file (``.pth``/``.pt``/``.bin``, e.g. a timm checkpoint), read with
  ``torch.load(weights_only=True, mmap=True)``.

``metadata`` carries what is known of the origin (preset, step, samples seen, world size, image
size) as strings, from our client state or a safetensors header.
"""
from __future__ import annotations

import contextlib
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..errors import CheckpointError
from . import layout
from .safetensors_io import DTYPE_OF_CODE, TensorInfo, read_metadata, safetensors_files, stored_names

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class TensorSource(ABC):
    """Named tensors, read lazily. ``infos`` is ordered as the checkpoint stores them."""

    path: Path
    kind: str
    metadata: Dict[str, str]

    @abstractmethod
    def infos(self) -> Dict[str, TensorInfo]:
        """Name -> shape and dtype, without reading tensor data."""

    @abstractmethod
    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` on the CPU (read now; free it when done)."""

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Every tensor materialised (for small models and tests)."""
        return {name: self.get(name) for name in self.infos()}


class ZeroSource(TensorSource):
    """fp32 master weights of a ZeRO-1/2/3 tag directory (not a universal checkpoint)."""

    kind = "deepspeed-zero"

    def __init__(self, tag_dir: Path):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        self.path = tag_dir
        if layout.is_universal(tag_dir):
            raise CheckpointError(f"{tag_dir}: a DeepSpeed universal checkpoint; convert the ZeRO checkpoint it "
                                  f"was made from, or resume training from it")
        state = layout.client_state(tag_dir)
        self.metadata = _client_metadata(state, source=str(tag_dir))
        self.metadata["world_size"] = str(layout.saved_world_size(tag_dir))
        # DeepSpeed narrates each stage on stdout; a library call should not.
        with contextlib.redirect_stdout(io.StringIO()):
            self._lazy = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                                                  lazy_mode=True)
        self._infos = {name: TensorInfo(tuple(t.shape), t.dtype) for name, t in self._lazy.items()}

    def infos(self) -> Dict[str, TensorInfo]:
        return dict(self._infos)

    def get(self, name: str) -> torch.Tensor:
        return self._lazy[name].contiguous()


class SafetensorsSource(TensorSource):
    """One safetensors file or the shards of an index; tensors are read memory-mapped."""

    kind = "safetensors"

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self.files = safetensors_files(path)
        self._file_of: Dict[str, Path] = {}
        self._infos: Dict[str, TensorInfo] = {}
        for file in self.files:
            with safe_open(str(file), "pt") as f:  # validates the file
                for name in stored_names(file):
                    sl = f.get_slice(name)
                    self._infos[name] = TensorInfo(tuple(sl.get_shape()), _st_dtype(sl.get_dtype(), file, name))
                    self._file_of[name] = file
        self.metadata = read_metadata(self.files[0])

    def infos(self) -> Dict[str, TensorInfo]:
        return dict(self._infos)

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._file_of[name]), "pt") as f:
            return f.get_tensor(name)


class TorchFileSource(TensorSource):
    """A plain PyTorch state-dict file (e.g. a timm ``.pth``), loaded with ``weights_only=True``."""

    kind = "torch"

    def __init__(self, path: Path):
        self.path = path
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        for key in ("state_dict", "model", "module"):  # common single-key wrappers
            if isinstance(obj, dict) and set(obj) == {key}:
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path}: not a state dict of tensors")
        self._tensors: Dict[str, torch.Tensor] = obj
        self.metadata = {"source": str(path)}

    def infos(self) -> Dict[str, TensorInfo]:
        return {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in self._tensors.items()}

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]


def open_source(path: Union[str, Path], tag: Optional[str] = None) -> TensorSource:
    """A lazy reader for ``path`` (see the module docstring for what it may be).

    Raises:
        CheckpointError: naming ``path`` when it is none of the supported kinds.
    """
    path = Path(path)
    if path.is_dir():
        if tag is None and any((path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
            return SafetensorsSource(path)
        return ZeroSource(layout.resolve_tag_dir(path, tag))
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.suffix in (".safetensors", ".json"):
        return SafetensorsSource(path)
    if path.suffix in _TORCH_SUFFIXES:
        return TorchFileSource(path)
    raise CheckpointError(f"{path}: unknown checkpoint kind; expected a DeepSpeed checkpoint directory, "
                          f".safetensors, model.safetensors.index.json or a PyTorch {'/'.join(_TORCH_SUFFIXES)} file")


def _client_metadata(state: Dict, source: str) -> Dict[str, str]:
    """Provenance strings from our client state (empty fields for foreign checkpoints)."""
    cfg = state.get("config") or {}
    model = cfg.get("model") or {}
    fields = dict(preset=state.get("preset", model.get("preset")), step=state.get("step"),
                  samples_seen=state.get("samples_seen"), world_size=state.get("world_size"),
                  img_size=model.get("img_size"), precision=(cfg.get("train") or {}).get("precision"),
                  source=source)
    # Input bands of the run (rsfm_ds/engine/pretrain.py band_metadata): in_chans and, for own
    # imagery, band names and normalisation as JSON strings.
    fields.update(state.get("bands") or {})
    return {k: str(v) for k, v in fields.items() if v is not None}


def _st_dtype(code: str, file: Path, name: str) -> torch.dtype:
    if code not in DTYPE_OF_CODE:
        raise CheckpointError(f"{file}: tensor {name} has dtype {code}, which rsfm-ds does not read")
    return DTYPE_OF_CODE[code]


__all__ = ["TensorSource", "ZeroSource", "SafetensorsSource", "TorchFileSource", "open_source"]
