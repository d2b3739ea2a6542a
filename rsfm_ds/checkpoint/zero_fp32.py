"""``rsfm convert zero-to-fp32``: a ZeRO checkpoint -> consolidated fp32 safetensors, streamed.

DeepSpeed owns the ZeRO partition layouts, so the tensors come from its
``get_fp32_state_dict_from_zero_checkpoint(..., lazy_mode=True)``: the per-rank optimizer files are
memory-mapped and each parameter is stitched from its rank partitions only when asked for. The
values are therefore bit-identical to DeepSpeed's own consolidation (tested).

Why not DeepSpeed's ``convert_zero_checkpoint_to_fp32_state_dict``: it picks the tag from the
``latest`` file (a run killed while saving leaves it pointing at a half-written tag; we take the
newest tag with our ``COMPLETE`` marker), it materialises a whole shard before writing it (we write
tensor by tensor: peak memory is one tensor plus the mapped pages of the source), and its
safetensors files carry no provenance (ours carry preset, step, samples seen, world size, source).

Output: ``OUT/model.safetensors``, or ``OUT/model-0000i-of-0000n.safetensors`` plus
``OUT/model.safetensors.index.json`` when the weights exceed ``max_shard_size``. Keys are the
training model's (for MAE: ``encoder.*``, ``decoder_*``, ``mask_token``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import ConfigError, check_output_is_not_input
from . import layout
from .safetensors_io import ConversionResult, TensorInfo, provenance, save_sharded
from .sources import ZeroSource


def zero_to_fp32(ckpt_dir: Union[str, Path], out: Union[str, Path], tag: Optional[str] = None,
                 max_shard_size: Union[int, str] = "5GB") -> ConversionResult:
    """Consolidate the fp32 master weights of a ZeRO checkpoint into safetensors under ``out``.

    Args:
        ckpt_dir: a tag directory (``.../checkpoints/step_00000020``) or a checkpoints folder.
        out: output folder (created; earlier ``model*.safetensors`` outputs in it are replaced).
        tag: with a checkpoints folder, the tag; default the newest complete one.
        max_shard_size: bytes per file at most (int, or ``"5GB"``, ``"500MB"``, ``"2GiB"``); a
            tensor larger than that gets a file of its own.

    Returns:
        The files written and the provenance metadata stored in them. Floating tensors are fp32;
        integer buffers keep their dtype.
    """
    if Path(out).suffix in (".safetensors", ".json"):
        raise ConfigError(f"{out}: the output is a folder (it receives model.safetensors or shards and an index)")
    source = ZeroSource(layout.resolve_tag_dir(ckpt_dir, tag))
    check_output_is_not_input(out, [source.path])
    entries = [(name, TensorInfo(info.shape, torch.float32 if info.dtype.is_floating_point else info.dtype))
               for name, info in source.infos().items()]
    metadata = provenance("fp32-consolidated", **source.metadata, dtype="fp32")
    files = save_sharded(Path(out), entries, source.get, max_shard_size, metadata)
    return ConversionResult(files, len(entries), sum(info.numel for _, info in entries), metadata)


__all__ = ["zero_to_fp32"]
