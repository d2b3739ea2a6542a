"""Training engines: MAE pretraining and the shared fine-tuning engine, on DeepSpeed."""
