"""The ``data:`` section of a pretraining run config, without the loader's imports (torch, OpenCV,
WebDataset): run configs are read by commands that build no loader (``rsfm study``, ``rsfm plan``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

from ...config import check, check_choices


@dataclass
class PretrainDataConfig:
    """The ``data:`` section of a pretraining run config."""

    shards: str
    """A ``manifest.json`` written by ``rsfm shards`` (its shards are read from its folder), or a
    WebDataset URL spec listing the manifest's shards in order (brace pattern, ``file:``,
    ``pipe:`` commands), in which case ``manifest`` names the manifest."""
    manifest: Optional[str] = None
    """The manifest giving per-shard sample counts when ``shards`` is a URL spec."""
    img_size: int = 224
    """Side of the square crops, pixels."""
    crop_scale: Tuple[float, float] = (0.2, 1.0)
    """RandomResizedCrop area range, fraction of the image."""
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    """RandomResizedCrop aspect ratio range (width / height)."""
    hflip: bool = True
    """Random horizontal flips."""
    mean: Optional[Tuple[float, float, float]] = None
    """MillionAID (8-bit RGB JPEG) shards only: per-channel RGB mean subtracted after scaling to
    [0, 1]; null takes ImageNet's. Shards of ``rsfm shards images`` are always normalised with
    their manifest's per-band statistics (raw units), and a value here is refused for them."""
    std: Optional[Tuple[float, float, float]] = None
    """MillionAID shards only: per-channel RGB standard deviation divided by; null takes ImageNet's."""
    mode: Literal["exact", "resampled"] = "exact"
    """"exact": every sample once per epoch over all ranks; "resampled": ``batches_per_epoch``
    batches per rank from shards drawn with replacement."""
    batches_per_epoch: Optional[int] = None
    """Batches per rank and epoch; required for mode=resampled, derived from the manifest for exact."""
    drop_last: bool = False
    """Exact mode: only full batches, leaving out the remainder (a different part each epoch).
    Without it every sample is used and an epoch's last batch may be smaller."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 = decode in the training process)."""
    prefetch_factor: int = 2
    """Batches each worker prepares ahead."""
    shuffle_buffer: int = 1000
    """Samples shuffled together by each worker (1 = stream order); costs that many compressed
    images of memory per worker."""
    seed: int = 0
    """Seed of shard order, shuffling and augmentation."""
    verify: Literal["none", "size", "sha256"] = "size"
    """Check shards against the manifest when the loader is built: "none", "size" (local files:
    existence and byte size, free), or "sha256" (reads every shard; each rank checks a 1/world_size
    share). A mismatch raises ShardIntegrityError."""
    pin_memory: bool = False
    """Pin batches in page-locked memory (faster host-to-GPU copies)."""
    worker_start: Literal["forkserver", "spawn", "fork"] = "forkserver"
    """How workers start: "forkserver" (default; safe in a process that runs threads, see
    rsfm_ds/data/processes.py), "spawn", or "fork" (only where the training process has no threads)."""
    decode_device: Literal["cpu", "cuda"] = "cpu"
    """Where MillionAID JPEGs are decoded: "cpu" (OpenCV in the workers, reduced-size decoding) or
    "cuda" (nvJPEG through torchvision, batched, in the training process on its GPU; the workers only
    read bytes and draw crops). "cuda" is for small presets whose GPU step outruns the CPU decoders;
    it needs a GPU and JPEG shards (docs/shards.md, on-device decoding)."""

    def __post_init__(self) -> None:
        check_choices(self)
        check(bool(self.shards), "shards", "must name a manifest.json or a shard URL spec")
        is_manifest = self.shards.endswith(".json")
        check(is_manifest or self.manifest is not None, "manifest",
              "required when shards is a URL spec: the loader plans epochs from the manifest's "
              "per-shard sample counts")
        check(self.img_size >= 8, "img_size", f"must be >= 8, got {self.img_size}")
        lo, hi = self.crop_scale
        check(0 < lo <= hi <= 1, "crop_scale", f"need 0 < min <= max <= 1, got {self.crop_scale}")
        check(0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio",
              f"need 0 < min <= max, got {self.crop_ratio}")
        check(self.mean is None or len(self.mean) == 3, "mean", f"needs 3 values, got {self.mean}")
        check(self.std is None or (len(self.std) == 3 and all(s > 0 for s in self.std)), "std",
              f"needs 3 positive values, got {self.std}")
        if self.mode == "resampled":
            check(self.batches_per_epoch is not None and self.batches_per_epoch > 0,
                  "batches_per_epoch", "a positive number is required for mode=resampled")
        else:
            check(self.batches_per_epoch is None, "batches_per_epoch",
                  "only for mode=resampled; an exact epoch's length follows from the manifest")
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.prefetch_factor >= 1, "prefetch_factor", f"must be >= 1, got {self.prefetch_factor}")
        check(self.shuffle_buffer >= 1, "shuffle_buffer", f"must be >= 1, got {self.shuffle_buffer}")


__all__ = ["PretrainDataConfig"]
