"""Streaming safetensors writer, size-sharded outputs with an HF-style index, and our metadata.

Everything rsfm-ds writes is safetensors: no pickles, memory-mappable, readable by timm and HF.
``safetensors.torch.save_file`` needs every tensor of a file in memory at once, which for the
2.4B backbone in fp32 is a second 9.6 GB copy next to the source. The format is simple enough
(8-byte little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}`` and
``__metadata__``, then the raw bytes) to write tensor by tensor: the header is computed from shapes
and dtypes alone, and each tensor is materialised, written and freed in turn, so the peak memory of
a conversion is one tensor plus what the source maps. Files are read back with the safetensors
library, which validates them.

Sharded outputs follow the Hugging Face layout: ``model.safetensors`` when one file suffices, else
``model-00001-of-00003.safetensors``... plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes, ...}, "weight_map": {name: file}}``).

Metadata (every file's ``__metadata__``, all strings): ``format: pt``, ``rsfm_format`` (what the
file holds: ``fp32-consolidated``, ``backbone``, ``timm``), ``rsfm_format_version``, and the
provenance fields of :func:`provenance` (preset, step, samples_seen, world_size, source...).
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import CheckpointError, ConfigError, writing

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

_DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPE_OF_CODE = {code: dtype for dtype, code in _DTYPE_CODES.items()}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a tensor that has not been materialised."""

    shape: Tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class ConversionResult:
    """What a conversion wrote.

    Attributes:
        files: the files written (safetensors files, then any index or sidecar json).
        num_tensors: tensors written.
        num_params: their total number of elements.
        metadata: the provenance written into every file's header.
    """

    files: List[Path]
    num_tensors: int
    num_params: int
    metadata: Dict[str, str]


def parse_size(size: Union[int, str]) -> int:
    """Bytes in ``size``: an int, or a string such as ``"5GB"`` (10^9, as HF) or ``"512MiB"``."""
    if isinstance(size, int):
        value = size
    else:
        m = _SIZE.match(size)
        if m is None:
            raise ConfigError(f"max shard size {size!r}: expected a number of bytes or e.g. 5GB, 500MB, 2GiB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if value <= 0:
        raise ConfigError(f"max shard size must be positive, got {size!r}")
    return value


def provenance(kind: str, **fields: Any) -> Dict[str, str]:
    """The ``__metadata__`` of a file we write: ``kind`` (``rsfm_format``), the format version, and
    every field that is not None, as strings (safetensors metadata holds strings only)."""
    meta = {"format": "pt", "rsfm_format": kind, "rsfm_format_version": str(FORMAT_VERSION)}
    meta.update({k: str(v) for k, v in fields.items() if v is not None})
    return meta


def write_safetensors(path: Path, entries: Sequence[Tuple[str, TensorInfo]],
                      get: Callable[[str], torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> int:
    """Write one safetensors file, materialising one tensor at a time.

    Args:
        path: output file.
        entries: ``(name, info)`` in file order; ``info`` fixes the stored shape and dtype.
        get: returns the tensor of a name (any dtype: it is cast to ``info.dtype``; any device).
        metadata: string fields for ``__metadata__``.

    Returns:
        Bytes of tensor data written. Raises ValueError naming the tensor when ``get`` returns a
        shape other than the declared one.
    """
    header: Dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, info in entries:
        if info.dtype not in _DTYPE_CODES:
            raise ValueError(f"{name}: dtype {info.dtype} has no safetensors code")
        header[name] = {"dtype": _DTYPE_CODES[info.dtype], "shape": list(info.shape),
                        "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the spec allows trailing spaces; 8-byte alignment of the data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        with writing(path), open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, info in entries:
                t = get(name)
                if tuple(t.shape) != tuple(info.shape):
                    raise ValueError(f"{name}: source tensor has shape {tuple(t.shape)}, expected {info.shape}")
                t = t.detach().to(device="cpu", dtype=info.dtype).contiguous()
                # Bytes without a copy: little-endian hosts (x86, ARM) store tensors in safetensors' order.
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                del t
        tmp.replace(path)  # a crash mid-write never leaves a truncated file under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return offset


def plan_shards(entries: Sequence[Tuple[str, TensorInfo]], max_shard_size: int) -> List[List[Tuple[str, TensorInfo]]]:
    """Greedy split of ``entries`` (in order) into shards of at most ``max_shard_size`` bytes; a
    tensor larger than the limit gets a shard of its own."""
    shards: List[List[Tuple[str, TensorInfo]]] = [[]]
    size = 0
    for entry in entries:
        n = entry[1].nbytes
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += n
    return shards


def save_sharded(out_dir: Path, entries: Sequence[Tuple[str, TensorInfo]], get: Callable[[str], torch.Tensor],
                 max_shard_size: Union[int, str], metadata: Mapping[str, str]) -> List[Path]:
    """Write ``entries`` under ``out_dir`` as ``model.safetensors`` or as size-limited shards with
    ``model.safetensors.index.json`` (replacing such files from an earlier run); returns the files
    written (index last)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(entries, parse_size(max_shard_size))
    for stale in [out_dir / WEIGHTS_NAME, out_dir / INDEX_NAME, *out_dir.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)  # a rerun with another shard count must not leave old shards
    if len(shards) == 1:
        path = out_dir / WEIGHTS_NAME
        write_safetensors(path, shards[0], get, metadata)
        return [path]
    written, weight_map, total = [], {}, 0
    for i, shard in enumerate(shards):
        path = out_dir / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(path, shard, get, metadata)
        weight_map.update({name: path.name for name, _ in shard})
        written.append(path)
    index = out_dir / INDEX_NAME
    index.write_text(json.dumps({"metadata": {"total_size": total, **metadata}, "weight_map": weight_map},
                                indent=2) + "\n")
    return written + [index]


def safetensors_files(path: Path) -> List[Path]:
    """The safetensors files of a file, an index json, or a folder holding either (in index order)."""
    path = Path(path)
    if path.is_dir():
        for name in (INDEX_NAME, WEIGHTS_NAME):
            if (path / name).is_file():
                return safetensors_files(path / name)
        raise CheckpointError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".json":
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{path}: not a safetensors index (no weight_map)") from None
        return [path.parent / name for name in dict.fromkeys(weight_map.values())]
    return [path]


def read_header(path: Path) -> Dict[str, Any]:
    """The JSON header of a safetensors file: ``{name: {dtype, shape, data_offsets}}`` plus
    ``__metadata__``. Only the header bytes are read."""
    with open(path, "rb") as f:
        size = f.read(8)
        if len(size) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its header length)")
        (n,) = struct.unpack("<Q", size)
        try:
            return json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from None


def read_metadata(path: Path) -> Dict[str, str]:
    """``__metadata__`` of a safetensors file."""
    return dict(read_header(path).get("__metadata__") or {})


def stored_names(path: Path) -> List[str]:
    """Tensor names of a safetensors file in storage order (``safe_open().keys()`` sorts them)."""
    header = read_header(path)
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


__all__ = ["FORMAT_VERSION", "WEIGHTS_NAME", "INDEX_NAME", "DTYPES", "DTYPE_OF_CODE", "TensorInfo", "ConversionResult", "parse_size", "provenance",
           "write_safetensors", "plan_shards", "save_sharded", "safetensors_files", "read_header", "read_metadata",
           "stored_names"]
