"""Shared fixtures: a small synthetic MillionAID tree and its shards, built once per session."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def millionaid_tree(tmp_path_factory) -> Path:
    """120 synthetic MillionAID images (64..320 px, every one of the 51 leaf classes)."""
    from rsfm_ds.data.synth.millionaid import synth_millionaid

    root = tmp_path_factory.mktemp("millionaid")
    synth_millionaid(root, images=120, seed=0, min_size=64, max_size=320)
    return root


@pytest.fixture(scope="session")
def millionaid_shards(millionaid_tree, tmp_path_factory) -> Path:
    """The tree written as 8 shards of at most 16 samples; returns the manifest path.

    Read-only: tests that damage shards copy them first.
    """
    from rsfm_ds.data.pretrain.shards import write_millionaid_shards

    out = tmp_path_factory.mktemp("millionaid_shards")
    return write_millionaid_shards(millionaid_tree, out, maxcount=16, workers=2).manifest_path
