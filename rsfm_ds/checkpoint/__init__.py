"""Checkpoint conversion and loading: ``rsfm convert <verb>``, each verb also a function here.

===================  =====================================  ==========================================
verb                 function                               module
===================  =====================================  ==========================================
``zero-to-fp32``     :func:`zero_to_fp32`                   ``zero_fp32.py``
``mae-to-backbone``  :func:`mae_to_backbone`                ``backbone.py``
``to-timm``          :func:`to_timm`                        ``timm_export.py``
``reshard``          :func:`reshard`                        ``reshard.py``
``inspect``          :func:`inspect_checkpoint`             ``inspection.py``
(library)            :func:`load_backbone`                  ``loading.py``
===================  =====================================  ==========================================

Shared pieces: ``layout.py`` (where a DeepSpeed tag's files are; the one place that unpickles
them), ``sources.py`` (every input read as lazy tensors), ``safetensors_io.py`` (streaming
safetensors writer, shards and index, metadata). Formats and measured memory: docs/checkpoints.md.
"""
from .backbone import mae_to_backbone, resample_pos_embed
from .inspection import CheckpointInfo, inspect_checkpoint
from .loading import LoadReport, load_backbone
from .reshard import reshard
from .safetensors_io import ConversionResult
from .sources import open_source
from .timm_export import to_timm
from .zero_fp32 import zero_to_fp32

__all__ = ["zero_to_fp32", "mae_to_backbone", "resample_pos_embed", "to_timm", "reshard", "inspect_checkpoint",
           "CheckpointInfo", "load_backbone", "LoadReport", "ConversionResult", "open_source"]
