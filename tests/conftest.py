"""Shared test setup: deterministic, single-threaded torch so tests are stable on 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the sandbox and LIC tests need no torch
    pass
