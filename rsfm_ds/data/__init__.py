"""Data: dataset readers, synthetic generators in the real formats, shards and loaders.

Pretraining path (docs/shards.md):
  millionaid.py        scan ``train/<L1>/<L2>/[<L3>]/*.jpg`` into a class tree (deterministic order)
  scenes.py            any tree of rasters (GeoTIFF scenes too) -> windows, valid masks, ``.npy`` samples
  band_stats.py        per-band statistics of those samples, merged exactly across shards
  shards.py            parallel, resumable shard writer; sample keys
  manifest.py          manifest.json schema, verification
  epoch_plan.py        per-rank / per-worker / per-batch sample plans (exact and resampled epochs)
  shard_reader.py      reads planned samples out of shards, reporting what cannot be read
  jpeg.py, transforms.py  OpenCV decoding (reduced where possible) and MAE augmentation
  config.py            ``PretrainDataConfig`` (the run config's ``data:`` section; no torch)
  loader.py            ``build_pretrain_loader``, ``PretrainLoader``
  (synthetic MillionAID JPEGs: synth/millionaid.py)

Shared by all: raster.py (any raster by window, its georeference, the per-band normalisation),
images.py, tiling.py, bands.py (the fine-tuning data's band selection and statistics).

Submodules are imported explicitly (``from rsfm_ds.data.pretrain.loader import ...``) so that a
command needing one reader does not import torch, OpenCV and WebDataset for all of them.
"""
