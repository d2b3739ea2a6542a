"""rsfm-ds: billion-scale remote-sensing foundation models on DeepSpeed.

Dependencies are pinned to the ranges the project is tested with. Why each one is here:
- torch / torchvision: the model code; torchvision owns horizontal NMS and RoIAlign.
- deepspeed: ZeRO-3 sharding, mixed precision, checkpoint files and their consolidation.
- timm: ViT building blocks (PatchEmbed, Mlp, DropPath) and the model registry users load from.
- webdataset: tar-shard streaming with node/worker splitting and shuffling.
- numpy, opencv-python: arrays, fast JPEG decoding and geometric transforms. OpenCV stays below 5:
  with torch loaded, an OpenCV 5 process starts ~240 MB larger (every rank and data worker pays
  it; the memory planner's CPU profile is measured on 4.x), and 5.x is not what we test.
- mmcv-lite: image I/O and generic transforms shared with the OpenMMLab ecosystem.
- tensorboard: training logs.
- safetensors: the converted checkpoint format (no pickles, memory-mappable, shardable).
- pyyaml: run configs.
- matplotlib: plots in reports and the scaling study.
- ninja: DeepSpeed JIT-builds its CPU Adam op on first use.
- shapely: GEOS polygon clipping for `rsfm dota split`, the same geometry the DOTA devkit and mmrotate
  splitters call, so their labels are reproduced exactly (>= 2.1 for vectorised `orient_polygons`).
- rasterio: GeoTIFF and every other GDAL raster, read by window without loading a scene, with its
  CRS and affine transform, and written back georeferenced (`rsfm shards images`, own datasets,
  `rsfm predict`); the maintained, wheel-packaged binding of the library the field reads rasters with.
- tqdm: the progress bar of `rsfm predict` (already required by DeepSpeed; named for the direct use).
"""
from setuptools import find_packages, setup

setup(
    name="rsfm-ds",
    version="0.1.0",
    description="Pretrain and fine-tune billion-scale remote-sensing foundation models with DeepSpeed",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["rsfm_ds", "rsfm_ds.*"]),
    # ops/csrc: C++ sources JIT-built on first use (docs/rotated_ops.md, "The fused CPU kernel").
    package_data={"rsfm_ds": ["resources/*", "ops/csrc/*.cpp"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "deepspeed>=0.19,<0.20",
        "timm>=1.0,<1.1",
        "webdataset>=1.0,<1.1",
        "numpy>=1.26",
        "opencv-python>=4.8,<5",
        "mmcv-lite==2.2.0",
        "tensorboard>=2.15",
        "safetensors>=0.4",
        "pyyaml>=6.0",
        "matplotlib>=3.8",
        "ninja>=1.11",
        "shapely>=2.1,<3",
        "rasterio>=1.4,<2",
        "tqdm>=4.66",
    ],
    extras_require={
        # shapely is the exact-geometry oracle the rotated-op tests compare against; pytest-xdist
        # runs the suite's files two at a time (launch/test.sh): much of it waits, not computes.
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "shapely>=2.0"],
    },
    entry_points={"console_scripts": ["rsfm = rsfm_ds.cli.entry:run"]},
)
