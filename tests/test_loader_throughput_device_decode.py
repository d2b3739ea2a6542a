"""``data.decode_device``: the option is validated, the CPU path is untouched by it, and the batches
for on-device decoding carry the very crops and flips the CPU path draws.

The CUDA decoder cannot run here; torchvision's CPU JPEG decoder runs the same code path
(:func:`rsfm_ds.data.pretrain.device_decode.decode_crops` with ``device="cpu"``), so everything but
the device is exercised. The oracle for pixels is OpenCV's pipeline (the CPU path): two decoders
and two resamplers must agree to resampling error, and the flips must agree image by image.
"""
import numpy as np
import pytest
import torch

from rsfm_ds.config import ConfigError
from rsfm_ds.data.pretrain import loader as loader_module
from rsfm_ds.data.pretrain.device_decode import decode_crops, pack
from rsfm_ds.data.pretrain.loader import PretrainDataConfig, build_pretrain_loader
from rsfm_ds.data.images import IMAGENET_MEAN

SIZE = 32


def cfg_for(shards, **kw) -> PretrainDataConfig:
    return PretrainDataConfig(shards=str(shards), img_size=SIZE, **{"shuffle_buffer": 20, "num_workers": 0, **kw})


def test_decode_device_must_be_a_choice():
    with pytest.raises(ConfigError, match="decode_device"):
        PretrainDataConfig(shards="m.json", decode_device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_decoding_is_refused_without_a_gpu(millionaid_shards):
    with pytest.raises(ConfigError, match=r"data\.decode_device.*no CUDA"):
        build_pretrain_loader(cfg_for(millionaid_shards, decode_device="cuda"), 16, 0, 1)


def test_cpu_decoding_is_the_default_path(millionaid_shards):
    """Naming the default changes nothing (bit for bit; batches depend on the worker count, so both
    runs use 2 workers)."""
    def epoch(cfg):
        return [(b.keys, b.pixels) for b in build_pretrain_loader(cfg, 16, 0, 1)]

    default = epoch(cfg_for(millionaid_shards, num_workers=2))
    named = epoch(cfg_for(millionaid_shards, decode_device="cpu", num_workers=2))
    assert [k for k, _ in default] == [k for k, _ in named]
    for (_, a), (_, b) in zip(default, named):
        assert torch.equal(a, b)


@pytest.fixture
def device_decoding_allowed(monkeypatch):
    """Lets ``decode_device=cuda`` build here; its batches are then decoded on the CPU."""
    monkeypatch.setattr(loader_module, "check_device_decoding", lambda device: [])


@pytest.mark.parametrize("workers", [0, 1])
def test_encoded_batches_carry_the_cpu_paths_crops(millionaid_shards, device_decoding_allowed, workers):
    cpu = list(build_pretrain_loader(cfg_for(millionaid_shards), 16, 0, 1))
    enc = list(build_pretrain_loader(cfg_for(millionaid_shards, decode_device="cuda", num_workers=workers), 16, 0, 1))
    assert [b.keys for b in enc] == [b.keys for b in cpu]
    assert all(b.pixels is None and b.encoded is not None for b in enc)
    errors, flips_agree, n = [], 0, 0
    for b_cpu, b_enc in zip(cpu, enc):
        decoded = b_enc.decoded("cpu")
        assert decoded.dtype == torch.uint8 and decoded.shape == b_cpu.pixels.shape
        ref, got = b_cpu.pixels.float(), decoded.float()
        errors.append((got - ref).abs().mean(dim=(1, 2, 3)))
        # The flip drawn for each image: the decoded image is closer to the CPU one than to its mirror.
        direct = (got - ref).abs().mean(dim=(1, 2, 3))
        mirrored = (got.flip(-1) - ref).abs().mean(dim=(1, 2, 3))
        flips_agree += int((direct <= mirrored).sum())
        n += len(b_enc)
        # normalized() decodes then normalises: the float images of the decoded pixels.
        expected = (got / 255 - torch.tensor(b_enc.mean).view(1, 3, 1, 1)) / torch.tensor(b_enc.std).view(1, 3, 1, 1)
        torch.testing.assert_close(b_enc.normalized("cpu"), expected, rtol=1e-5, atol=1e-5)
    errors = torch.cat(errors)
    # Same box, different decoder (full vs reduced IDCT) and filter: a few grey levels apart.
    assert float(errors.mean()) < 6.0, errors
    assert flips_agree == n


def test_pack_round_trips_the_streams():
    rng = np.random.default_rng(0)
    streams = [rng.integers(0, 256, int(k), dtype=np.uint8).tobytes() for k in (5, 0, 17, 3)]
    crops = [(i, 0, 1, 1, 0, 2, 2) for i in range(4)]
    enc = pack(streams, crops)
    bounds = enc.offsets.tolist()
    assert [enc.data[a:b].numpy().tobytes() for a, b in zip(bounds[:-1], bounds[1:])] == streams
    assert enc.crops.tolist() == [list(c) for c in crops]


def test_a_stream_the_decoder_rejects_becomes_mean_grey(millionaid_shards, device_decoding_allowed):
    batch = next(iter(build_pretrain_loader(cfg_for(millionaid_shards, decode_device="cuda"), 4, 0, 1)))
    enc = batch.encoded
    bounds = enc.offsets.tolist()
    streams = [enc.data[a:b].numpy().tobytes() for a, b in zip(bounds[:-1], bounds[1:])]
    broken = streams[1][:200] + b"\x00" * 64  # the header survives, the scan does not
    streams[1] = broken
    out = decode_crops(pack(streams, enc.crops.tolist()), SIZE, IMAGENET_MEAN, torch.device("cpu"))
    grey = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(out[1], grey.expand(3, SIZE, SIZE))
    assert torch.equal(out[0], batch.decoded("cpu")[0])
