"""mHC: manifold-constrained hyper-connections (arXiv 2512.24880; SPEC 1.1).

The residual stream is widened to n copies x in R^{n x C}. Around each sublayer F:

    x_{l+1}[k] = post_k * F(RMSNorm(sum_j pre_j x_l[j]))  +  sum_j comb[j, k] x_l[j]

with (pre, post, comb) computed per token from the flattened, RMS-normalised streams by
one linear map phi (mHC eq. 7) and squashed onto their manifolds (mHC eq. 8):
pre = sigmoid + eps, post = 2 sigmoid, comb = Sinkhorn-Knopp (doubly stochastic).

`comb` is applied *transposed* (out_k sums over comb's FIRST index), exactly as DeepSeek's
inference code does; the paper's H_res is comb^T. Forgetting the transpose is a known
port bug. Sinkhorn and the RMS statistics run in fp32 whatever the autocast dtype; the
residual mix runs in fp32 so that the stream keeps the precision of a plain residual.

n = 1 is not routed through this module at all: `make_residual` returns the plain
`x + f(x)`, so the baseline is bit-for-bit the pre-norm transformer.

Initialisation (so that the model starts as the plain residual network): phi ~ N(0, std)
(reset by the Transformer), the three gating factors alpha = 0.01 (mHC Table 5), biases
b_pre = -log(n - 1) (pre = 1/n: the sublayer reads the mean stream), b_post = 0
(post = 1: every stream receives F), b_res = 0 (comb = J/n: mean-preserving, no exp()
saturation so H_res keeps learning). With the n identical streams of the expansion, the
block then computes exactly x + F(x) up to the O(alpha) dynamic terms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig

ALPHA_INIT = 0.01  # mHC Table 5, "gating factor init"


def sinkhorn(logits: torch.Tensor, iters: int = 20, eps: float = 1e-6) -> torch.Tensor:
    """Project [..., n, n] logits to (approximately) doubly stochastic matrices, in fp32.

    DeepSeek's variant (inference kernel `hc_split_sinkhorn`): a row softmax plus eps,
    one column normalisation, then (iters - 1) rounds of row and column normalisation,
    eps in every denominator. The softmax subtracts the row max, so logits of any
    magnitude give finite entries (no exp() underflow to an all-zero row).

    Computed in an [n, n, tokens] layout: the sums then run over outer axes with the long
    token axis contiguous inside, ~4x faster on CPU than reducing size-4 inner axes.
    """
    shape = logits.shape
    with torch.autocast(device_type=logits.device.type, enabled=False):
        m = logits.float().reshape(-1, shape[-2], shape[-1]).permute(1, 2, 0)  # [n(row), n(col), N]
        m = torch.softmax(m, dim=1) + eps
        m = m / (m.sum(dim=0, keepdim=True) + eps)
        for _ in range(iters - 1):
            m = m / (m.sum(dim=1, keepdim=True) + eps)
            m = m / (m.sum(dim=0, keepdim=True) + eps)
    return m.permute(2, 0, 1).reshape(shape)


def _rms_mix(x: torch.Tensor, phi: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """phi(RMSNorm(vec(x))) for streams x [..., n, D] -> [..., out] in fp32.

    The division by the RMS is moved after the matmul (mHC 4.3.1: mathematically equal,
    one pass less over the nC-wide input); the RMS itself is computed in fp32. The
    matmul follows autocast (bf16 on CPU/GPU training) -- its output is scaled by
    alpha = O(0.01), far below bf16's relative error mattering.
    """
    flat = x.flatten(-2)
    with torch.autocast(device_type=x.device.type, enabled=False):
        ms = torch.linalg.vector_norm(flat.float(), dim=-1, keepdim=True).square() / flat.shape[-1]
        rstd = torch.rsqrt(ms + norm_eps)
    mixes = F.linear(flat, phi.to(flat.dtype))
    return mixes.float() * rstd


class HyperConnection(nn.Module):
    """One mHC residual around a sublayer: x [..., n, D] -> [..., n, D]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = self.n = cfg.hc_mult
        self.iters, self.eps, self.norm_eps = cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.norm_eps
        self.unconstrained = cfg.hc_unconstrained
        self.res_init = cfg.hc_res_init
        # phi laid out [pre(n) | post(n) | comb(n^2)] (mHC eq. 7, stored as [out, in]).
        self.phi = nn.Parameter(torch.empty(n * n + 2 * n, n * cfg.dim))
        self.alpha = nn.Parameter(torch.empty(3))
        self.bias = nn.Parameter(torch.empty(n * n + 2 * n))
        nn.init.normal_(self.phi, 0.0, cfg.init_std)
        self.reset_gates()

    @torch.no_grad()
    def reset_gates(self) -> None:
        n = self.n
        self.alpha.fill_(ALPHA_INIT)
        b_pre = torch.full((n,), -math.log(n - 1))
        b_post = torch.zeros(n)
        # Unconstrained HC starts from the identity (HC paper's init); mHC from logits
        # hc_res_init * I (default 0: comb = J/n).
        b_res = torch.eye(n) * (1.0 if self.unconstrained else self.res_init)
        self.bias.copy_(torch.cat([b_pre, b_post, b_res.flatten()]))

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre [..., n], post [..., n], comb [..., n, n]) in fp32 for streams x [..., n, D]."""
        n = self.n
        mixes = _rms_mix(x, self.phi, self.norm_eps)
        a = self.alpha.float()
        b = self.bias.float()
        pre = torch.sigmoid(mixes[..., :n] * a[0] + b[:n]) + self.eps  # mHC eq. 8
        post = 2 * torch.sigmoid(mixes[..., n:2 * n] * a[1] + b[n:2 * n])
        res = (mixes[..., 2 * n:] * a[2] + b[2 * n:]).unflatten(-1, (n, n))
        comb = res if self.unconstrained else sinkhorn(res, self.iters, self.eps)
        return pre, post, comb

    def forward(self, x: torch.Tensor, sublayer, ctx=None) -> torch.Tensor:
        pre, post, comb = self.coefficients(x)
        if ctx is not None and getattr(ctx, "hc_record", None) is not None:
            ctx.hc_record.append(comb[0].detach())  # first sequence only: diagnostics
        with torch.autocast(device_type=x.device.type, enabled=False):
            # One batched product applies both maps: row 0 is H_pre x (the sublayer
            # input), rows 1..n are sum_j comb[j, k] x_j -- comb TRANSPOSED (= H_res).
            maps = torch.cat([pre.unsqueeze(-2), comb.transpose(-1, -2)], dim=-2)  # [..., n+1, n]
            h, mixed = torch.matmul(maps, x.float()).split([1, self.n], dim=-2)
        y = sublayer(h.squeeze(-2).to(x.dtype))
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = torch.addcmul(mixed, post.unsqueeze(-1), y.float().unsqueeze(-2))  # + H_post^T F
        return out.to(x.dtype)


class PlainResidual(nn.Module):
    """x + f(x): the residual connection of the baseline (mHC with n = 1)."""

    def forward(self, x: torch.Tensor, sublayer, ctx=None) -> torch.Tensor:
        return x + sublayer(x)


def make_residual(cfg: ModelConfig) -> nn.Module:
    return HyperConnection(cfg) if cfg.hc_mult > 1 else PlainResidual()


def expand_streams(x: torch.Tensor, n: int) -> torch.Tensor:
    """[..., D] -> [..., n, D]: the n residual streams start as copies of the embedding."""
    return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1])


class HyperHead(nn.Module):
    """Collapse the n streams to one before the final norm: sigmoid-weighted sum.

    Its own phi in R^{nC x n}, one gating factor and a bias; no Sinkhorn (SPEC 1.1).
    Initialised to the mean of the streams (bias -log(n-1) -> weights 1/n).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = self.n = cfg.hc_mult
        self.eps, self.norm_eps = cfg.hc_eps, cfg.norm_eps
        self.phi = nn.Parameter(torch.empty(n, n * cfg.dim))
        self.alpha = nn.Parameter(torch.empty(1))
        self.bias = nn.Parameter(torch.empty(n))
        nn.init.normal_(self.phi, 0.0, cfg.init_std)
        self.reset_gates()

    @torch.no_grad()
    def reset_gates(self) -> None:
        self.alpha.fill_(ALPHA_INIT)
        self.bias.fill_(-math.log(self.n - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixes = _rms_mix(x, self.phi, self.norm_eps)
        w = torch.sigmoid(mixes * self.alpha.float() + self.bias.float()) + self.eps
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = (w.unsqueeze(-1) * x.float()).sum(-2)
        return out.to(x.dtype)
