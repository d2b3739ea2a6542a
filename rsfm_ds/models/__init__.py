"""Pure-PyTorch models: no DeepSpeed, data or engine imports here (docs/architecture.md)."""
from .mae import MaskedAutoencoder, create_mae
from .presets import PRESETS, count_trainable, create_vit, get_preset
from .vit import VisionTransformer

__all__ = ["MaskedAutoencoder", "create_mae", "PRESETS", "count_trainable", "create_vit",
           "get_preset", "VisionTransformer"]
