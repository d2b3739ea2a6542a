"""Pure-PyTorch models: no DeepSpeed, data or engine imports here (docs/architecture.md).

The names below are imported on first use (PEP 562), so that importing a light submodule such as
:mod:`rsfm_ds.models.preset_specs` does not import torch.
"""
import importlib

_WHERE = {"MaskedAutoencoder": ".mae", "create_mae": ".mae", "PRESETS": ".preset_specs",
          "get_preset": ".preset_specs", "count_trainable": ".presets", "create_vit": ".presets",
          "VisionTransformer": ".vit"}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


__all__ = list(_WHERE)
