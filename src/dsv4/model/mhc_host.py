"""One-token mHC coefficients on the host (single-stream decode on CPU).

A decode step of one sequence runs 2 L hyper-connections on one token each. Their
coefficients are a handful of numbers (n^2 + 2n): as tensor ops they cost ~100 kernel
launches per connection (the gates, the row softmax, 2 * iters Sinkhorn normalisations),
which made mHC about a quarter of the decode step. Here one matmul (+ one dot product)
leaves the device, the rest runs on Python floats (fp64: within fp32 rounding of the tensor
path), and one small tensor comes back: (pre, post, comb transposed).

Sinkhorn on n x n Python floats is straight-line code generated once per n (`_unrolled`):
no lists built per normalisation, ~5x faster than list comprehensions and bit-identical
to them (same sums in the same order). CPU only: `tolist` elsewhere is a device sync.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_UNROLLED: dict[int, object] = {}


def _names(n: int) -> list[list[str]]:
    return [[f"a{i}_{j}" for j in range(n)] for i in range(n)]


def _sinkhorn_lines(a: list[list[str]]) -> list[str]:
    """Source lines normalising the n x n variables `a` in place (see `_unrolled`)."""
    def normalise(groups: list[list[str]], indent: str) -> list[str]:
        lines = []
        for g in groups:
            lines.append(f"{indent}s = {' + '.join(g)} + eps")
            lines += [f"{indent}{v} /= s" for v in g]
        return lines

    cols = [list(c) for c in zip(*a, strict=True)]
    return (normalise(cols, "    ") + ["    for _ in range(iters - 1):"] + normalise(a, "        ")
            + normalise(cols, "        "))


def _unrolled(n: int):
    """f(rows: n x n list, iters, eps) -> n x n list: DeepSeek's Sinkhorn after the row softmax
    (+ eps): one column normalisation, then (iters - 1) rounds of row and column ones, eps in
    every denominator, each sum left to right like Python's `sum`."""
    fn = _UNROLLED.get(n)
    if fn is not None:
        return fn
    a = _names(n)
    src = ["def sinkhorn(m, iters, eps):",
           "    (" + "".join(f"({', '.join(r)},), " for r in a) + ") = m"]
    src += _sinkhorn_lines(a)
    src += ["    return [" + ", ".join(f"[{', '.join(r)}]" for r in a) + "]"]
    scope: dict = {}
    exec("\n".join(src), scope)  # noqa: S102 -- our own generated source, no input involved
    fn = _UNROLLED[n] = scope["sinkhorn"]
    return fn


_FUSED: dict[int, object] = {}


def _fused(n: int):
    """f(raw, rstd, a_pre, a_post, a_res, bias, eps, iters) -> pre + post + comb^T as one flat
    list: every step of `one_token_coefficients` after the GEMV (the gates, `softmax_rows`, the
    Sinkhorn lines of `_unrolled`, inline; the transpose) as straight-line code generated once
    per n, the same operations in the same order (bit-identical), without the lists,
    comprehensions and calls between them (~13 us instead of ~18 at n = 4, 20 iterations;
    12 connections a token on the flagship-sized model)."""
    fn = _FUSED.get(n)
    if fn is not None:
        return fn
    a = _names(n)
    src = ["def coefficients(raw, rstd, a_pre, a_post, a_res, bias, eps, iters):",
           f"    ({''.join(f'z{k}, ' for k in range(n * n + 2 * n))}) = raw",
           f"    ({''.join(f'b{k}, ' for k in range(n * n + 2 * n))}) = bias"]
    src += [f"    p{i} = sig(z{i} * rstd * a_pre + b{i}) + eps" for i in range(n)]
    src += [f"    q{i} = 2.0 * sig(z{n + i} * rstd * a_post + b{n + i})" for i in range(n)]
    for i in range(n):  # one row of logits, its softmax (max subtracted; sum from the left) + eps
        ks = range(2 * n + i * n, 3 * n + i * n)
        src += [f"    {a[i][j]} = z{k} * rstd * a_res + b{k}" for j, k in enumerate(ks)]
        src += [f"    top = max({', '.join(a[i])})"]
        src += [f"    {v} = exp({v} - top)" for v in a[i]]
        src += [f"    s = {' + '.join(a[i])}"] + [f"    {v} = {v} / s + eps" for v in a[i]]
    src += _sinkhorn_lines(a)
    cols = [a[i][j] for j in range(n) for i in range(n)]  # comb^T row-major: comb's columns
    outs = [f"p{i}" for i in range(n)] + [f"q{i}" for i in range(n)] + cols
    src += ["    return [" + ", ".join(outs) + "]"]
    scope: dict = {"sig": _sigmoid, "exp": math.exp}
    exec("\n".join(src), scope)  # noqa: S102 -- our own generated source, no input involved
    fn = _FUSED[n] = scope["coefficients"]
    return fn


def softmax_rows(m: list[list[float]], eps: float) -> list[list[float]]:
    """Row softmax (max subtracted) + eps of an n x n list."""
    out = []
    for r in m:
        top = max(r)
        e = [math.exp(v - top) for v in r]
        s = sum(e)
        out.append([v / s + eps for v in e])
    return out


def sinkhorn_lists(logits: list[list[float]], iters: int, eps: float) -> list[list[float]]:
    """Sinkhorn of one n x n matrix of logits given as Python lists."""
    return _unrolled(len(logits))(softmax_rows(logits, eps), iters, eps)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _gate_params(hc) -> tuple[list[float], list[float]]:
    """(alpha, bias) of a HyperConnection as floats, re-read only when the parameters change
    (an optimizer step bumps their version counters)."""
    alpha, bias = hc._parameters["alpha"], hc._parameters["bias"]  # (skips Module.__getattr__)
    key = (alpha.data_ptr(), alpha._version, bias.data_ptr(), bias._version)
    cached = hc.__dict__.get("_host_gate_params")
    if cached is None or cached[0] != key:
        cached = (key, alpha.float().tolist(), bias.float().tolist())
        hc._host_gate_params = cached
    return cached[1], cached[2]


def coefficient_lists(n: int, raw: list, rstd: float, a_pre: float, a_post: float, a_res: float,
                      bias: list, eps: float, iters: int, unconstrained: bool) -> list[float]:
    """pre + post + comb^T (flat, row-major) from the phi map's raw outputs and the RMS factor:
    the gates and (unless unconstrained) Sinkhorn on Python lists; `_fused` is the same
    computation unrolled."""
    sig = _sigmoid
    z = [v * rstd for v in raw]
    pre = [sig(z[i] * a_pre + bias[i]) + eps for i in range(n)]
    post = [2.0 * sig(z[i] * a_post + bias[i]) for i in range(n, 2 * n)]
    res = [[z[k] * a_res + bias[k] for k in range(2 * n + i * n, 3 * n + i * n)] for i in range(n)]
    comb = res if unconstrained else sinkhorn_lists(res, iters, eps)
    return pre + post + [v for col in zip(*comb, strict=True) for v in col]  # out_k sums over comb[j, k], j


def one_token_coefficients(hc, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre [1, 1, n], post [1, n, 1], comb^T [1, n, n]) fp32 for the streams xs [1, n, d] of
    one token: mHC eq. 7-8 (the RMS-normalised phi map, the gates, Sinkhorn) as
    `HyperConnection`'s tensor path computes them."""
    n = hc.n
    flat = xs.reshape(1, -1)
    phi = hc._parameters["phi"]
    raw = F.linear(flat, phi if phi.dtype == flat.dtype else phi.to(flat.dtype))[0].tolist()
    row = flat[0] if flat.dtype == torch.float32 else flat[0].float()
    rstd = 1.0 / math.sqrt(float(torch.dot(row, row)) / flat.shape[1] + hc.norm_eps)
    (a_pre, a_post, a_res), bias = _gate_params(hc)
    if hc.unconstrained:
        vals = coefficient_lists(n, raw, rstd, a_pre, a_post, a_res, bias, hc.eps, hc.iters, True)
    else:  # the usual case: one generated function (the same values)
        vals = _fused(n)(raw, rstd, a_pre, a_post, a_res, bias, hc.eps, hc.iters)
    t = torch.tensor(vals, dtype=torch.float32)
    return t[:n].view(1, 1, n), t[n:2 * n].view(1, n, 1), t[2 * n:].view(1, n, n)
