"""mhc_host's generated one-token coefficient function equals its list path bit for bit."""

from __future__ import annotations

import random

import pytest

from dsv4.model import mhc_host


def _args(n: int, rng: random.Random) -> tuple:
    k = n * n + 2 * n
    raw = [rng.gauss(0, 3) for _ in range(k)]
    bias = [rng.gauss(0, 1) for _ in range(k)]
    return raw, rng.uniform(0.1, 3), rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1), bias


@pytest.mark.parametrize("n", [2, 3, 4])
def test_fused_coefficients_equal_the_list_path(n):
    rng = random.Random(n)
    for iters in (1, 2, 20):
        for _ in range(50):
            args = _args(n, rng)
            want = mhc_host.coefficient_lists(n, *args, 1e-6, iters, False)
            assert mhc_host._fused(n)(*args, 1e-6, iters) == want  # exact floats
            # the exact comparison sees a tiny change (a planted bug would not pass): the RMS
            # factor off by 1e-9
            assert mhc_host._fused(n)(args[0], args[1] * (1 + 1e-9), *args[2:], 1e-6, iters) != want


def test_list_path_is_the_transposed_sinkhorn():
    """coefficient_lists' comb^T block is the transpose of `sinkhorn_lists` of the gated logits."""
    n, rng = 4, random.Random(7)
    raw, rstd, a_pre, a_post, a_res, bias = _args(n, rng)
    got = mhc_host.coefficient_lists(n, raw, rstd, a_pre, a_post, a_res, bias, 1e-6, 20, False)
    res = [[raw[k] * rstd * a_res + bias[k] for k in range(2 * n + i * n, 3 * n + i * n)] for i in range(n)]
    comb = mhc_host.sinkhorn_lists(res, 20, 1e-6)
    assert got[2 * n:] == [comb[i][j] for j in range(n) for i in range(n)]
    assert got[:n] == [mhc_host._sigmoid(raw[i] * rstd * a_pre + bias[i]) + 1e-6 for i in range(n)]
