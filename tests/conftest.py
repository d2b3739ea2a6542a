"""Shared fixtures: one intra-op thread, a small synthetic MillionAID tree and its shards."""
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def no_process_group_left():
    """Every test that creates a process group destroys it (a later test would otherwise find it)."""
    yield
    assert not torch.distributed.is_initialized(), "the test left a torch.distributed process group"


@pytest.fixture
def one_thread():
    """One intra-op thread for the test. Tests of many small ops use it (a module's
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): on a busy 2-core machine a second OpenMP
    thread spends its time waiting at barriers (a 0.3 s test took 20 s, a training step 10x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# Markers of the tests that start processes and run for tens of seconds to minutes, longest kind
# first (the SLURM and two-host files wait on schedulers and timeouts for minutes).
_LONG_MARKERS = (("slurm", "multinode"), ("distributed", "slow"))


def pytest_collection_modifyitems(session, config, items):
    """Run the files with long multi-process tests first, longest kind first, each file in its
    collected order, then the rest. With ``-n 2 --dist loadfile`` (launch/test.sh) the workers
    take whole files in this order, so the longest ones start early and the run does not end
    with one worker finishing a long file alone; run in one process, the order changes nothing
    but when each file runs."""
    def kind(item) -> int:
        for rank, markers in enumerate(_LONG_MARKERS):
            if any(item.get_closest_marker(m) for m in markers):
                return rank
        return len(_LONG_MARKERS)

    file_kind = {}
    for item in items:
        file_kind[item.path] = min(file_kind.get(item.path, len(_LONG_MARKERS)), kind(item))
    items.sort(key=lambda item: file_kind[item.path])  # stable: keeps each file's own order
