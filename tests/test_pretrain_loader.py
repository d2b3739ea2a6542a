"""The pretraining loader: exact epochs over ranks and workers, determinism, resume, bad data."""
import io
import json
import logging
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rsfm_ds.config import ConfigError, load_config
from rsfm_ds.data.pretrain import transforms
from rsfm_ds.data.pretrain.epoch_plan import augment_seed, plan_exact_epoch, plan_resampled_epoch
from rsfm_ds.data.pretrain.manifest import ShardIntegrityError, load_manifest
from rsfm_ds.data.pretrain.loader import (PAD_KEY, PretrainDataConfig, build_pretrain_loader,
                                          loader_state_to_start)
from rsfm_ds.data.pretrain.transforms import CropFlip, hwc_to_chw
from rsfm_ds.errors import DataError

SIZE = 32  # small crops keep the tests fast; the pipeline is the same at 224


def cfg_for(shards, **kw) -> PretrainDataConfig:
    return PretrainDataConfig(shards=str(shards), img_size=SIZE, **{"shuffle_buffer": 20, **kw})


def run_epoch(cfg, batch_size, world_size, epoch=0):
    """Per rank: the list of batches (keys, uint8 pixels) of one epoch, and the loaders."""
    out, loaders = [], []
    for rank in range(world_size):
        loader = build_pretrain_loader(cfg, batch_size, rank, world_size, epoch=epoch)
        out.append([(b.keys, b.pixels) for b in loader])
        loaders.append(loader)
    return out, loaders


def shard_members(manifest_path: Path):
    """{key: {ext: bytes}} over all shards, read with plain tarfile."""
    samples = {}
    for record in load_manifest(manifest_path).shards:
        with tarfile.open(manifest_path.parent / record.name) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_exact_epoch_two_ranks_two_workers_every_image_once_with_identical_pixels(
        millionaid_tree, millionaid_shards):
    cfg = cfg_for(millionaid_shards, num_workers=2)
    batch_size = 7  # 120 samples = 60 per rank = 8 full batches + 4
    epochs, loaders = run_epoch(cfg, batch_size, world_size=2, epoch=1)
    assert [len(e) for e in epochs] == [len(l) for l in loaders] == [9, 9]
    keys = [k for e in epochs for ks, _ in e for k in ks]
    assert len(keys) == 120 and Counter(keys).most_common(1)[0][1] == 1
    members = shard_members(millionaid_shards)
    assert set(keys) == set(members)
    # Each image is the augmentation of the *original file's* bytes: decode the source JPEG
    # independently with the planned augmentation seed and compare bit for bit.
    crop = CropFlip(SIZE, cfg.crop_scale, cfg.crop_ratio, cfg.hflip)
    scratch, expected = np.empty((SIZE, SIZE, 3), np.uint8), np.empty((3, SIZE, SIZE), np.uint8)
    for rank, epoch in enumerate(epochs):
        for index, (batch_keys, pixels) in enumerate(epoch):
            assert pixels.shape == (len(batch_keys), 3, SIZE, SIZE) and pixels.dtype == torch.uint8
            for slot, key in enumerate(batch_keys):
                source = (millionaid_tree / json.loads(members[key]["json"])["path"]).read_bytes()
                assert source == members[key]["jpg"]
                rng = np.random.default_rng(augment_seed(cfg.seed, 1, rank, index, slot))
                assert crop.apply_into(source, rng, scratch)
                hwc_to_chw(scratch, expected)
                assert np.array_equal(pixels[slot].numpy(), expected)
    assert all(l.stats.num_skipped == 0 and l.stats.samples == 60 for l in loaders)


def test_batches_normalise_to_float_on_demand(millionaid_shards):
    batch = next(iter(build_pretrain_loader(cfg_for(millionaid_shards, num_workers=1), 8, 0, 1)))
    images = batch.images
    assert images.shape == (8, 3, SIZE, SIZE) and images.dtype == torch.float32
    mean = torch.tensor(batch.mean).view(1, 3, 1, 1)
    std = torch.tensor(batch.std).view(1, 3, 1, 1)
    assert torch.allclose(images, (batch.pixels.float() / 255 - mean) / std, atol=1e-5)
    assert batch.images is images  # made once
    assert torch.equal(batch.normalized("cpu", torch.bfloat16), images.to(torch.bfloat16))


@pytest.mark.parametrize("total,world_size,batch_size", [
    (120, 2, 7), (121, 2, 7), (29, 3, 5), (30, 4, 4), (31, 4, 4), (7, 7, 3), (104, 8, 1), (50, 3, 50)])
def test_exact_plans_cover_every_sample_once_with_equal_batch_counts(total, world_size, batch_size):
    rng = np.random.default_rng(total)
    counts = list(rng.multinomial(total, np.ones(6) / 6))
    for workers in (1, 2, 3):
        seen = Counter()
        lengths = set()
        for rank in range(world_size):
            plan = plan_exact_epoch(counts, seed=0, epoch=2, rank=rank, world_size=world_size,
                                    batch_size=batch_size, drop_last=False, num_workers=workers,
                                    shuffle_buffer=4)
            lengths.add(len(plan))
            assert all(0 < s <= batch_size for s in plan.batch_sizes)
            batches = {}
            for w in range(workers):
                work = plan.worker(w)
                offsets = np.cumsum([0] + [len(s) for s in work.segments])
                for j, positions in work.batches:
                    assert j % workers == w
                    batches[j] = positions
                    for p in positions:  # position -> (shard, index): the sample identity
                        s = int(np.searchsorted(offsets, p, side="right")) - 1
                        seg = work.segments[s]
                        seen[(seg.shard, seg.lo + int(p) - offsets[s])] += 1
            assert sorted(batches) == list(range(len(plan)))
            assert [len(batches[j]) for j in range(len(plan))] == list(plan.batch_sizes)
        assert len(lengths) == 1
        assert sum(seen.values()) == total and set(seen.values()) == {1}


def test_batch_size_one_with_a_remainder_asks_for_drop_last():
    with pytest.raises(ConfigError, match="drop_last"):
        plan_exact_epoch([5], seed=0, epoch=0, rank=0, world_size=2, batch_size=1, drop_last=False,
                         num_workers=1, shuffle_buffer=1)


def test_drop_last_gives_full_batches_without_repeats(millionaid_shards):
    cfg = cfg_for(millionaid_shards, num_workers=0, drop_last=True)
    epochs, _ = run_epoch(cfg, batch_size=8, world_size=3)  # 120 // 24 = 5 batches per rank
    assert [len(e) for e in epochs] == [5, 5, 5]
    keys = [k for e in epochs for ks, _ in e for k in ks]
    assert all(len(ks) == 8 for e in epochs for ks, _ in e)
    assert len(keys) == len(set(keys)) == 120


def test_same_seed_and_epoch_give_the_same_batches(millionaid_shards):
    cfg = cfg_for(millionaid_shards, num_workers=2)
    a, _ = run_epoch(cfg, 9, world_size=2, epoch=3)
    b, _ = run_epoch(cfg, 9, world_size=2, epoch=3)
    for ea, eb in zip(a, b):
        assert [k for k, _ in ea] == [k for k, _ in eb]
        assert all(torch.equal(ia, ib) for (_, ia), (_, ib) in zip(ea, eb))
    other_epoch, _ = run_epoch(cfg, 9, world_size=2, epoch=4)
    other_seed, _ = run_epoch(cfg_for(millionaid_shards, num_workers=2, seed=1), 9, world_size=2, epoch=3)
    order = [k for ks, _ in a[0] for k in ks]
    assert order != [k for ks, _ in other_epoch[0] for k in ks]
    assert order != [k for ks, _ in other_seed[0] for k in ks]


def test_resume_mid_epoch_continues_without_repeats_or_gaps(millionaid_shards, monkeypatch):
    cfg = cfg_for(millionaid_shards, num_workers=2)
    full = build_pretrain_loader(cfg, 5, rank=1, world_size=2, epoch=2)
    reference = [(b.keys, b.pixels) for b in full]
    assert len(reference) == 12
    first = build_pretrain_loader(cfg, 5, rank=1, world_size=2, epoch=2)
    taken = []
    for batch in first:
        taken.append(batch.keys)
        if len(taken) == 5:  # "checkpoint" after an odd number of batches, mid-epoch
            break
    state = first.state_dict()
    assert (state["epoch"], state["batches_done"]) == (2, 5)
    epoch, start = loader_state_to_start(state, cfg, batch_size=5, world_size=2)
    resumed = build_pretrain_loader(cfg, 5, rank=1, world_size=2, epoch=epoch, start_batch=start)
    assert len(resumed) == 7
    rest = [(b.keys, b.pixels) for b in resumed]
    assert taken + [k for k, _ in rest] == [k for k, _ in reference]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, reference[5:]))
    assert resumed.state_dict()["batches_done"] == 12
    assert loader_state_to_start(resumed.state_dict()) == (3, 0)

    # The skipped batches are not decoded: count decodes in-process (num_workers=0).
    calls = []
    decode = transforms.decode_jpeg
    monkeypatch.setattr(transforms, "decode_jpeg", lambda *a: calls.append(1) or decode(*a))
    in_process = build_pretrain_loader(cfg_for(millionaid_shards, num_workers=0), 5, rank=1,
                                       world_size=2, epoch=2, start_batch=5)
    assert sum(len(b.keys) for b in in_process) == len(calls) == 60 - 25


def test_resume_mid_epoch_refuses_a_different_run_shape(millionaid_shards):
    cfg = cfg_for(millionaid_shards, num_workers=2)
    loader = build_pretrain_loader(cfg, 5, rank=0, world_size=2)
    state = {**loader.state_dict(), "batches_done": 3}
    with pytest.raises(ConfigError, match="data.num_workers"):
        loader_state_to_start(state, cfg_for(millionaid_shards, num_workers=1), 5, 2)
    with pytest.raises(ConfigError, match="batch_size"):
        loader_state_to_start(state, cfg, 6, 2)
    finished = {**state, "batches_done": state["num_batches"]}
    assert loader_state_to_start(finished, cfg_for(millionaid_shards, num_workers=1), 6, 4) == (1, 0)
    loader.load_state_dict(state)
    assert (loader.epoch, loader.start_batch, len(loader)) == (0, 3, loader.num_batches - 3)


def rewrite_sample_jpg(shard: Path, key: str, data: bytes) -> None:
    """Replace one sample's .jpg member in a tar (as bit rot or a bad copy would)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, payload in members:
            if m.name == f"{key}.jpg":
                payload = data
                m.size = len(data)
            tar.addfile(m, io.BytesIO(payload))


def test_corrupt_jpeg_and_truncated_shard_are_skipped_counted_and_logged(
        tmp_path, millionaid_shards, caplog):
    out = tmp_path / "shards"
    shutil.copytree(millionaid_shards.parent, out)
    manifest = load_manifest(out / "manifest.json")
    rewrite_sample_jpg(out / manifest.shards[1].name, "000001-000004", b"\xff\xd8\xff\xe0 not a jpeg")
    truncated = out / manifest.shards[4].name
    cut = truncated.stat().st_size // 2
    with tarfile.open(truncated) as tar:
        # Samples whose .jpg member lies entirely before the cut stay readable; the rest are lost.
        readable = {m.name.split(".")[0] for m in tar.getmembers()
                    if m.name.endswith(".jpg") and m.offset_data + m.size <= cut}
    truncated.write_bytes(truncated.read_bytes()[:cut])
    lost = manifest.shards[4].samples - len(readable)
    assert 0 < lost < manifest.shards[4].samples

    cfg = cfg_for(out / "manifest.json", num_workers=2, verify="none")
    with caplog.at_level(logging.WARNING, logger="rsfm_ds.data.pretrain.loader"):
        epochs, loaders = run_epoch(cfg, 8, world_size=2)
    assert [len(e) for e in epochs] == [len(l) for l in loaders] == [8, 8]  # counts unchanged
    keys = [k for e in epochs for ks, _ in e for k in ks]
    assert len(keys) == len(set(keys)) == 120 - 1 - lost
    assert "000001-000004" not in keys
    skipped = Counter()
    for loader in loaders:
        skipped.update(loader.stats.skipped)
    assert skipped == {"corrupt_jpeg": 1, "truncated_shard": lost}
    assert any(str(truncated) in l.stats.bad_shards for l in loaders)
    assert "000001-000004" in caplog.text and "truncated_shard" in caplog.text

    with pytest.raises(ShardIntegrityError, match=truncated.name):
        build_pretrain_loader(cfg_for(out / "manifest.json"), 8, 0, 2)  # default verify="size"


def test_a_batch_whose_samples_all_fail_is_padded_so_counts_stay_equal(tmp_path, millionaid_shards):
    out = tmp_path / "shards"
    shutil.copytree(millionaid_shards.parent, out)
    manifest = load_manifest(out / "manifest.json")
    (out / manifest.shards[0].name).write_bytes(b"")
    cfg = cfg_for(out / "manifest.json", num_workers=0, verify="none", shuffle_buffer=1)
    loader = build_pretrain_loader(cfg, 4, 0, 1)
    batches = list(loader)
    assert len(batches) == loader.num_batches == 30
    padded = [b for b in batches if b.padded]
    assert len(padded) == loader.stats.padded_batches == 4  # shard 0's 16 samples = 4 batches
    assert all(b.keys == [PAD_KEY] and b.images.abs().max() < 0.01 for b in padded)  # mean grey
    assert loader.stats.samples == 120 - 16 and loader.stats.num_skipped == 16


def test_manifest_with_a_wrong_checksum_is_detected_by_the_loader(tmp_path, millionaid_shards):
    out = tmp_path / "shards"
    shutil.copytree(millionaid_shards.parent, out)
    tree = json.loads((out / "manifest.json").read_text())
    tree["shards"][3]["sha256"] = "f" * 64
    (out / "manifest.json").write_text(json.dumps(tree))
    name = tree["shards"][3]["name"]
    with pytest.raises(ShardIntegrityError, match=f"{name}: sha256 differs"):
        build_pretrain_loader(cfg_for(out / "manifest.json", verify="sha256"), 8, rank=1, world_size=2)
    build_pretrain_loader(cfg_for(out / "manifest.json", verify="sha256"), 8, rank=0, world_size=2)


def test_resampled_mode_gives_fixed_full_batches_per_rank(millionaid_shards):
    cfg = cfg_for(millionaid_shards, mode="resampled", batches_per_epoch=5, num_workers=2)
    a, loaders = run_epoch(cfg, 6, world_size=2)
    assert [len(e) for e in a] == [len(l) for l in loaders] == [5, 5]
    assert all(len(ks) == 6 for e in a for ks, _ in e)
    assert [k for k, _ in a[0]] != [k for k, _ in a[1]]
    b, _ = run_epoch(cfg, 6, world_size=2)
    assert [[k for k, _ in e] for e in a] == [[k for k, _ in e] for e in b]
    plan = plan_resampled_epoch([3, 0, 4], seed=0, epoch=0, rank=0, batches=4, batch_size=5,
                                num_workers=1, shuffle_buffer=2)
    assert plan.num_samples == 20 and all(s.shard != 1 for s in plan.segments)


def test_pipe_url_spec_with_a_manifest(millionaid_shards):
    folder = millionaid_shards.parent
    spec = f"pipe:cat {folder}/millionaid-train-{{000000..000007}}.tar"
    cfg = cfg_for(spec, manifest=str(millionaid_shards), num_workers=0)
    via_pipe = [b.keys for b in build_pretrain_loader(cfg, 16, 0, 1)]
    plain = cfg_for(millionaid_shards, num_workers=0)
    via_manifest = [b.keys for b in build_pretrain_loader(plain, 16, 0, 1)]
    assert via_pipe == via_manifest
    with pytest.raises(ConfigError, match="shards"):
        build_pretrain_loader(cfg_for(f"{folder}/millionaid-train-{{000000..000006}}.tar",
                                      manifest=str(millionaid_shards)), 16, 0, 1)


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="mode"):
        PretrainDataConfig(shards="m.json", mode="sequential")
    with pytest.raises(ConfigError, match="batches_per_epoch"):
        PretrainDataConfig(shards="m.json", mode="resampled")
    with pytest.raises(ConfigError, match="batches_per_epoch"):
        PretrainDataConfig(shards="m.json", batches_per_epoch=10)
    with pytest.raises(ConfigError, match="manifest"):
        PretrainDataConfig(shards="pipe:cat /data/shard-{000..009}.tar")
    with pytest.raises(ConfigError, match="crop_scale"):
        PretrainDataConfig(shards="m.json", crop_scale=(0.5, 0.2))
    path = tmp_path / "data.yaml"
    path.write_text("shards: m.json\ncrop_scale: [0.3, 1.0]\nmode: resampled\nbatches_per_epoch: 4\n")
    cfg = load_config(PretrainDataConfig, path, ["num_workers=1"])
    assert cfg.crop_scale == (0.3, 1.0) and cfg.num_workers == 1
    with pytest.raises(DataError):
        build_pretrain_loader(PretrainDataConfig(shards=str(tmp_path / "none.json")), 4, 0, 1)


def test_reader_steps_over_unneeded_samples_and_stops_early(millionaid_shards, monkeypatch):
    from rsfm_ds.data.pretrain import shard_reader
    from rsfm_ds.data.pretrain.epoch_plan import Segment

    manifest = load_manifest(millionaid_shards)
    url = str(millionaid_shards.parent / manifest.shards[0].name)
    opened = []
    gopen = shard_reader.wds.gopen

    class Counting:
        def __init__(self, stream):
            self.stream, self.read_bytes, self.closed = stream, 0, False

        def read(self, n=-1):
            data = self.stream.read(n)
            self.read_bytes += len(data)
            return data

        def close(self):
            self.closed = True
            self.stream.close()

        def __getattr__(self, name):  # seek, tell, ...
            return getattr(self.stream, name)

    def counting_gopen(*args, **kwargs):
        opened.append(Counting(gopen(*args, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(shard_reader.wds, "gopen", counting_gopen)
    urls = [url] + ["/nonexistent.tar"] * (len(manifest.shards) - 1)
    reader = shard_reader.SampleReader(urls, [Segment(0, 0, 16), Segment(1, 0, 16)], [1, 3])
    items = reader.take([3, 1])
    assert [i.key for i in items] == ["000000-000003", "000000-000001"]
    assert len(opened) == 1 and opened[0].closed  # shard 1: nothing needed, never opened
    assert 0 < opened[0].read_bytes < Path(url).stat().st_size / 2  # stopped after sample 3 of 16
