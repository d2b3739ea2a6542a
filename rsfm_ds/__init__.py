"""rsfm-ds: pretrain and fine-tune billion-scale remote-sensing foundation models with DeepSpeed."""
__version__ = "0.1.0"
