"""``rsfm convert to-timm``: backbone weights that ``timm.create_model`` loads by name.

Every preset is registered with timm as ``rsfm_<preset>`` (:mod:`rsfm_ds.models.presets`) and our
:class:`~rsfm_ds.models.vit.VisionTransformer` uses timm's key names, so a timm file is the
backbone state dict itself: fp32, no ``pos_embed`` (the registered model recomputes its fixed table,
and a stored one would be an unexpected key to its strict load) and no head (the registered
configs have ``num_classes=0``). ``to_timm`` checks the result against the registered model's keys
and shapes, so the file loads with::

    import rsfm_ds.models.presets  # registers rsfm_<preset> with timm
    model = timm.create_model("rsfm_vit_l12x4", pretrained=True,
                              pretrained_cfg_overlay=dict(file="vit_l12x4.safetensors"))

timm reads ``.safetensors`` files with the safetensors library (no pickle). A sidecar json as for
``mae-to-backbone`` records the provenance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .backbone import convert_backbone, first_mismatch, in_chans_of, preset_shapes
from .safetensors_io import ConversionResult
from .sources import SafetensorsSource


def to_timm(src: Union[str, Path], out: Union[str, Path], tag: Optional[str] = None) -> ConversionResult:
    """Write ``out`` (``.safetensors``) loadable by ``timm.create_model('rsfm_<preset>', pretrained=True,
    pretrained_cfg_overlay=dict(file=out))`` (plus ``in_chans=N`` for an N-band backbone); ``src`` as
    for :func:`~rsfm_ds.checkpoint.backbone.mae_to_backbone`. The metadata names the timm model
    (``timm_model``)."""
    result = convert_backbone(src, Path(out), kind="timm", tag=tag, dtype="fp32")
    preset = result.metadata["preset"]
    written = {k: tuple(v.shape) for k, v in SafetensorsSource(Path(out)).infos().items()}
    mismatch = first_mismatch(written, preset_shapes(preset, in_chans_of(written)))
    if mismatch is not None:  # the conversion rules and the registered model disagree: a bug here
        key, have, want = mismatch
        raise RuntimeError(f"{out}: key {key!r} has shape {have}, timm model rsfm_{preset} expects {want}")
    return result


__all__ = ["to_timm"]
