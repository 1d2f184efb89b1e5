"""Shared test setup: deterministic, single-threaded torch so tests are stable on 2 cores, and
the fixtures several test modules share."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the sandbox and LIC tests need no torch
    pass


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The small stdlib corpus + 512-token BPE of helpers_train, built once for every test that
    trains on it (read-only: a test that needs to damage it copies it first)."""
    from helpers_train import build_small_data

    return build_small_data(tmp_path_factory.mktemp("data"))
