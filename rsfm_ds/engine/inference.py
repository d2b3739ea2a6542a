"""A fine-tuned model outside training: its run config, its weights, inference in one process.

:func:`load_finetuned_model` builds the model a fine-tuning config describes (the task registry's
``build_model``, as :func:`~rsfm_ds.engine.finetune.finetune` does) and fills *every* tensor of it
from a checkpoint that :func:`~rsfm_ds.checkpoint.sources.open_source` reads:

* a training run's DeepSpeed checkpoint: a tag directory (``<run_dir>/checkpoints/step_XXXXXXXX``
  or ``best_step_XXXXXXXX``) or the checkpoints folder (newest complete tag, or ``tag``); the ZeRO
  partitions are consolidated to fp32 by DeepSpeed's own reader, tensor by tensor;
* a consolidated file: ``rsfm convert zero-to-fp32`` output (``model.safetensors`` or its index),
  any ``.safetensors``, or a PyTorch state dict (``.pth``; a ``module.`` prefix is dropped).

Loading is strict: every model key must come from the checkpoint with its shape, and every
checkpoint key must have a place. A pretrained backbone (no head weights) or a checkpoint of the
other task (detection heads for a segmentation config) fails with a message saying so.

:func:`predict_detections` and :func:`predict_segmentation` run the evaluation's inference (the
same datasets, resize, normalisation and sliding windows as ``DetectionTask.evaluate`` /
``SegmentationTask.evaluate``) on one device, without DeepSpeed or a process group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint.sources import open_source
from ..config import ConfigError
from ..data.det.dataset import collate_detection
from ..errors import CheckpointError, UserError, few
from ..evaluation.detection_results import ImageResult, predict
from ..evaluation.sliding_window import sliding_window_inference
from .config import FinetuneConfig
from .deepspeed_setup import model_dtype
from .task import FinetuneTask
from .tasks import TASKS, get_task

PathLike = Union[str, Path]
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class InferenceOptions:
    """How inference runs (one process, one device)."""

    device: Optional[str] = None
    """``cpu``, ``cuda`` or ``cuda:N``; None takes the first GPU when there is one, else the CPU."""
    precision: Optional[str] = None
    """fp32, bf16 or fp16; None takes the run config's ``train.precision`` on a GPU and fp32 on the
    CPU (half precision on a CPU is slow and not what the training evaluation ran)."""
    batch_size: int = 2
    """Detection: images per forward pass; segmentation: sliding windows per forward pass."""
    workers: int = 2
    """DataLoader worker processes reading and decoding images (0: in this process)."""

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0, got {self.workers}")

    def resolve_device(self) -> torch.device:
        """The device to run on.

        Raises:
            ConfigError: a CUDA device asked for where there is none.
        """
        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"device: not a device name: {self.device!r} (cpu, cuda, cuda:N)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device: {self.device} asked for, but this machine has no usable GPU")
        return device

    def resolve_dtype(self, cfg: FinetuneConfig, device: torch.device) -> torch.dtype:
        """The model's dtype (see :attr:`precision`)."""
        if self.precision is not None:
            return model_dtype(self.precision)
        return model_dtype(cfg.train.precision) if device.type == "cuda" else torch.float32


@dataclass
class LoadedModel:
    """A fine-tuned model ready for inference (eval mode, on its device, in its dtype).

    Attributes:
        task: the task object of the run config (datasets, classes).
        model: the model.
        device, dtype: where and in which precision it runs.
        source: the checkpoint file or tag directory read.
        metadata: what the checkpoint says of its origin (step, preset...).
    """

    task: FinetuneTask
    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    source: str
    metadata: Dict[str, str] = field(default_factory=dict)


def load_task_config(task: str, path: PathLike, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """The run config of ``task`` (``det`` or ``seg``) from ``path`` and overrides.

    Raises:
        ConfigError: the config does not load; when it is a config of another task, the message
            says which and names an example of the right kind.
    """
    spec = get_task(task)
    try:
        return spec.load_config(path, overrides)
    except ConfigError:
        for other in TASKS.values():
            if other.name == task:
                continue
            try:
                other.load_config(path, overrides)
            except UserError:
                continue
            raise ConfigError(f"{path}: a {other.name} run config ({other.summary}); this command needs a "
                              f"{task} config ({spec.summary}), e.g. {spec.example}") from None
        raise


def _mismatch(have: Sequence[str], want: Sequence[str]) -> str:
    """Why checkpoint keys ``have`` do not fit model keys ``want``, in the user's terms."""
    heads = sorted({k.split(".", 1)[0] for k in have} - {"backbone"})
    model_heads = sorted({k.split(".", 1)[0] for k in want} - {"backbone"})
    if not any(k.startswith("backbone.") for k in have):
        return "no 'backbone.' keys: a pretraining or converted-backbone checkpoint, not a fine-tuned model"
    if not heads:
        return "backbone weights only: a pretrained backbone, not a fine-tuned model"
    if set(heads).isdisjoint(model_heads):
        return (f"it holds {', '.join(heads)} where the model has {', '.join(model_heads)}: a checkpoint of "
                f"another task?")
    return "a model of another configuration"


def load_full_weights(model: nn.Module, checkpoint: PathLike, tag: Optional[str] = None) -> Dict[str, str]:
    """Fill every tensor of ``model`` (a plain, unpartitioned module) from ``checkpoint``, strictly.

    Returns:
        The checkpoint's provenance metadata (step, preset, ...), possibly empty.

    Raises:
        CheckpointError: no such checkpoint; keys missing or unexpected (a backbone-only
            checkpoint, another task's, another class count...); a shape mismatch (named key and
            both shapes).
    """
    source = open_source(checkpoint, tag)
    infos = source.infos()
    names = {k[len("module."):] if k.startswith("module.") else k: k for k in infos}
    targets = model.state_dict()
    missing = [k for k in targets if k not in names]
    unexpected = [k for k in names if k not in targets]
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: the checkpoint does not fit the model of this config "
                              f"({_mismatch(list(names), list(targets))}); missing keys {few(missing, 4)}, "
                              f"unexpected keys {few(unexpected, 4)}")
    for key, tensor in targets.items():
        shape = tuple(infos[names[key]].shape)
        if shape != tuple(tensor.shape):
            raise CheckpointError(f"{checkpoint}: {key!r} has shape {shape} in the checkpoint but "
                                  f"{tuple(tensor.shape)} in the model of this config (another preset, class "
                                  f"count or head size)")
    with torch.no_grad():
        for key, tensor in targets.items():
            tensor.copy_(source.get(names[key]))
    return dict(source.metadata)


def load_finetuned_model(task: str, cfg: FinetuneConfig, checkpoint: PathLike, tag: Optional[str] = None,
                         options: InferenceOptions = InferenceOptions()) -> LoadedModel:
    """The fine-tuned model of the run config ``cfg`` (:func:`load_task_config`) of ``task`` with
    the weights of ``checkpoint``, in eval mode.

    Raises:
        ConfigError: see :meth:`InferenceOptions.resolve_device`.
        CheckpointError: see :func:`load_full_weights`.
    """
    if not Path(checkpoint).exists():
        raise CheckpointError(f"{checkpoint}: no such checkpoint file or directory")
    device = options.resolve_device()
    runner = get_task(task).build(cfg)
    model = runner.build_model()
    metadata = load_full_weights(model, checkpoint, tag)
    dtype = options.resolve_dtype(cfg, device)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(runner, model, device, dtype, str(checkpoint), metadata)


def _loader(dataset: Dataset, batch_size: int, workers: int, collate) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      persistent_workers=False)


@torch.no_grad()
def predict_detections(loaded: LoadedModel, dataset: Dataset, options: InferenceOptions = InferenceOptions()
                       ) -> Dict[str, ImageResult]:
    """``{image id: (boxes [D, 5] le90, scores [D], labels [D])}`` in the files' pixels, for every
    sample of a :class:`~rsfm_ds.data.det.dataset.DetectionDataset` built with ``train=False``."""
    device, dtype = loaded.device, loaded.dtype

    def batches() -> Iterator[Tuple[Dict[str, Any], List[bool]]]:
        for batch in _loader(dataset, options.batch_size, options.workers, collate_detection):
            yield batch, [False] * len(batch["image_ids"])

    def to_device(batch: Dict[str, Any]) -> Dict[str, Any]:
        return dict(batch, images=batch["images"].to(device=device, dtype=dtype))

    return dict(predict(loaded.model, batches(), to_device))


def _collate_segmentation(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    # Whole images may differ in size: one image per batch, windows batched inside it.
    (sample,) = samples
    return {"image": sample["image"][None], "name": sample["name"], "label": sample.get("label")}


@torch.no_grad()
def predict_segmentation(loaded: LoadedModel, dataset: Dataset, num_classes: int, crop: int, stride: int,
                         flip_test: bool = False, options: InferenceOptions = InferenceOptions()
                         ) -> Iterator[Tuple[str, np.ndarray, Optional[torch.Tensor]]]:
    """``(file name, class indices uint8 [H, W], label int64 [H, W] or None)`` per image of a
    :class:`~rsfm_ds.data.seg.dataset.SegDataset` built with ``train=False``, in dataset order:
    sliding windows of ``crop`` every ``stride`` px, logits averaged, argmax (the evaluation's)."""
    flips = ("horizontal",) if flip_test else ()
    for item in _loader(dataset, 1, options.workers, _collate_segmentation):
        images = item["image"].to(device=loaded.device, dtype=loaded.dtype)
        logits = sliding_window_inference(loaded.model.logits, images, num_classes, crop=crop, stride=stride,
                                          batch_size=options.batch_size, flips=flips)
        pred = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        yield item["name"], pred, item["label"]


__all__ = ["InferenceOptions", "LoadedModel", "load_task_config", "load_full_weights", "load_finetuned_model",
           "predict_detections", "predict_segmentation", "PRECISIONS"]
