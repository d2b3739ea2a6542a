"""``rsfm convert inspect``: what a checkpoint is, where it came from, and which files make it up.

Reads headers, shapes and the client state only, never tensor data, so it is instant even for the
2.4B model: for a ZeRO or universal tag directory the rank-0 model-states file (parameter shapes,
client state; a pickle, see :mod:`~rsfm_ds.checkpoint.layout`), for a checkpoints folder its tags
and then the newest complete one, for safetensors files (converted weights, an index, a timm
export) the header, for a PyTorch file its tensors' shapes (``weights_only=True``, memory-mapped).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from . import layout
from .sources import SafetensorsSource, TorchFileSource, open_source

_LISTED_FILES = 12  # a universal checkpoint has three files per parameter
_DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


@dataclass
class CheckpointInfo:
    """Summary of a checkpoint; fields a format does not record are None.

    Attributes:
        path: what was inspected.
        kind: ``deepspeed-zero``, ``deepspeed-universal``, ``safetensors`` or ``torch``.
        preset: backbone preset.
        step: optimizer step of the weights.
        samples_seen: training samples seen at that step.
        world_size: data-parallel ranks that wrote it (for ZeRO: its number of partitions).
        dtype: stored dtype(s) of the weights; for ZeRO, ``fp32 master (<training precision>
            training)``.
        num_params: elements over all stored tensors (all parameters, decoder included for MAE).
        num_backbone_params: of which the encoder / backbone (``encoder.*`` for MAE).
        files: ``(path, bytes)`` of every file of the checkpoint.
        tags: for a checkpoints folder, ``(tag, complete)`` for every tag, oldest first; the other
            fields then describe ``tag_dir``.
        problem: what makes a DeepSpeed tag unusable (a rank's file missing or cut short), if
            anything.
        tag_dir: the tag directory described, for DeepSpeed checkpoints.
        metadata: the provenance strings stored with the checkpoint.
    """

    path: str
    kind: str
    preset: Optional[str] = None
    step: Optional[int] = None
    samples_seen: Optional[int] = None
    world_size: Optional[int] = None
    dtype: Optional[str] = None
    num_params: Optional[int] = None
    num_backbone_params: Optional[int] = None
    files: List[Tuple[str, int]] = field(default_factory=list)
    tags: List[Tuple[str, bool]] = field(default_factory=list)
    tag_dir: Optional[str] = None
    problem: Optional[str] = None
    metadata: Dict[str, str] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """Human-readable lines."""
        lines = [f"{self.path}: {self.kind}"]
        if self.problem:
            lines.append(f"DAMAGED: {self.problem}")
        if self.tags:
            lines.append("tags: " + ", ".join(f"{t}{'' if ok else ' (incomplete)'}" for t, ok in self.tags))
            lines.append(f"describing {self.tag_dir}")
        for name in ("preset", "step", "samples_seen", "world_size", "dtype"):
            value = getattr(self, name)
            lines.append(f"{name}: {'unknown' if value is None else value}")
        if self.num_params is not None:
            lines.append(f"parameters: {self.num_params:,}"
                         + (f" (backbone {self.num_backbone_params:,})" if self.num_backbone_params is not None else ""))
        total = sum(size for _, size in self.files)
        lines.append(f"files: {len(self.files)}, {total / 1e6:.1f} MB")
        shown = self.files if len(self.files) <= _LISTED_FILES else self.files[:_LISTED_FILES]
        lines += [f"  {path}  {size / 1e6:.1f} MB" for path, size in shown]
        if len(shown) < len(self.files):
            lines.append(f"  ... and {len(self.files) - len(shown)} more (--json lists them all)")
        return "\n".join(lines)


def inspect_checkpoint(path: Union[str, Path], tag: Optional[str] = None) -> CheckpointInfo:
    """Describe the checkpoint at ``path`` (a tag directory, a checkpoints folder, a safetensors file
    or index or a folder holding one, or a PyTorch file)."""
    path = Path(path)
    if path.is_dir() and not layout.is_tag_dir(path) and not (path / "model.safetensors").is_file() \
            and not (path / "model.safetensors.index.json").is_file():
        tag_dir = layout.resolve_tag_dir(path, tag, verify=False)
        info = _inspect_tag(tag_dir)
        info.path = str(path)
        info.tags = [(p.name, layout.is_complete(p)) for p in layout.tag_dirs(path)]
        return info
    if path.is_dir() and layout.is_tag_dir(path):
        return _inspect_tag(path)
    return _inspect_tensors(open_source(path, tag), path)


def _inspect_tag(tag_dir: Path) -> CheckpointInfo:
    problem = layout.tag_damage(tag_dir)
    states = layout.read_model_states(tag_dir)
    universal = layout.is_universal(tag_dir)
    shapes = {k: v for group in states.get("param_shapes", []) for k, v in group.items()}
    shapes.update(states.get("frozen_param_shapes") or {})
    numels = {k: int(v.numel()) for k, v in shapes.items()}
    config = states.get("config") or {}
    precision = (config.get("train") or {}).get("precision") or _ds_precision(states.get("ds_config") or {})
    world = states.get("world_size") or layout.saved_world_size(tag_dir)
    files = sorted(p for p in tag_dir.rglob("*") if p.is_file())
    return CheckpointInfo(
        path=str(tag_dir), kind="deepspeed-universal" if universal else "deepspeed-zero",
        preset=states.get("preset"), step=states.get("step"), samples_seen=states.get("samples_seen"),
        world_size=world, dtype=f"fp32 master ({precision} training)", num_params=sum(numels.values()),
        num_backbone_params=_backbone_numel(numels), files=[(str(p), p.stat().st_size) for p in files],
        tag_dir=str(tag_dir), problem=problem,
        metadata={k: str(v) for k, v in (("ds_version", states.get("ds_version")),) if v})


def _inspect_tensors(source, path: Path) -> CheckpointInfo:
    infos = source.infos()
    numels = {k: v.numel for k, v in infos.items()}
    meta = dict(source.metadata)
    if isinstance(source, SafetensorsSource):
        files = list(source.files)
        index = source.files[0].parent / "model.safetensors.index.json"
        if path.suffix == ".json" or (path.is_dir() and index.is_file()):
            files.append(index)
        sidecar = path.with_suffix(".json") if path.suffix == ".safetensors" else None
        if sidecar is not None and sidecar.is_file():
            files.append(sidecar)
            meta.update({k: str(v) for k, v in json.loads(sidecar.read_text()).items()
                         if k not in meta and not isinstance(v, (list, dict))})
        kind = "safetensors"
    else:
        files, kind = [path], TorchFileSource.kind
    dtypes = sorted({_DTYPE_NAMES.get(str(v.dtype), str(v.dtype)) for v in infos.values()})
    return CheckpointInfo(
        path=str(path), kind=kind, preset=meta.get("preset"), step=_int(meta.get("step")),
        samples_seen=_int(meta.get("samples_seen")), world_size=_int(meta.get("world_size")),
        dtype=", ".join(dtypes) or None, num_params=sum(numels.values()), num_backbone_params=_backbone_numel(numels),
        files=[(str(p), p.stat().st_size) for p in files], metadata=meta)


def _backbone_numel(numels: Dict[str, int]) -> int:
    from .backbone import map_to_backbone

    mapping, _ = map_to_backbone(numels)
    return sum(numels[k] for k in mapping)


def _ds_precision(ds_config: Dict[str, Any]) -> str:
    for name in ("bf16", "fp16"):
        if (ds_config.get(name) or {}).get("enabled"):
            return name
    return "fp32"


def _int(value: Optional[str]) -> Optional[int]:
    return None if value is None else int(value)


__all__ = ["CheckpointInfo", "inspect_checkpoint"]
