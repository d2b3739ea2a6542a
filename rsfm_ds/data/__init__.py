"""Data: dataset readers, synthetic generators in the real formats, shards and loaders.

Pretraining path (docs/shards.md):
  millionaid.py        scan ``train/<L1>/<L2>/[<L3>]/*.jpg`` into a class tree (deterministic order)
  synth_millionaid.py  remote-sensing-like JPEGs in that layout
  shards.py            parallel, resumable shard writer; sample keys
  manifest.py          manifest.json schema, verification
  epoch_plan.py        per-rank / per-worker / per-batch sample plans (exact and resampled epochs)
  shard_reader.py      reads planned samples out of shards, reporting what cannot be read
  jpeg.py, transforms.py  OpenCV decoding (reduced where possible) and MAE augmentation
  pretrain_loader.py   ``PretrainDataConfig``, ``build_pretrain_loader``, ``PretrainLoader``

Submodules are imported explicitly (``from rsfm_ds.data.pretrain.loader import ...``) so that a
command needing one reader does not import torch, OpenCV and WebDataset for all of them.
"""
