"""mHC: manifold-constrained hyper-connections (arXiv 2512.24880; SPEC 1.1).

The residual stream is widened to n copies x in R^{n x C}. Around each sublayer F:

    x_{l+1}[k] = post_k * F(RMSNorm(sum_j pre_j x_l[j]))  +  sum_j comb[j, k] x_l[j]

with (pre, post, comb) computed per token from the flattened, RMS-normalised streams by
one linear map phi (mHC eq. 7) and squashed onto their manifolds (mHC eq. 8):
pre = sigmoid + eps, post = 2 sigmoid, comb = Sinkhorn-Knopp (doubly stochastic).

`comb` is applied *transposed* (out_k sums over comb's FIRST index), exactly as DeepSeek's
inference code does; the paper's H_res is comb^T. Forgetting the transpose is a known
port bug. Sinkhorn, the gates, the RMS statistics and the mixing sums run in fp32 whatever
the autocast dtype; between layers the streams are stored in the training dtype (bf16 under
autocast, as DeepSeek keeps its residual stream in the model dtype; fp32 otherwise), which
halves every pass over the n-times-wider stream. A 120-step A/B against fp32 streams
(README, mHC overhead) showed no loss difference beyond seed noise.

Speed (the stream is n times wider than a plain residual, so the cost is memory passes,
not FLOPs): the three stream passes (RMS mix, pre-mix, post/res mix) and Sinkhorn each have
a hand-written backward that touches the stream as few times as we can with stock ops;
`set_compile(True)` (or DSV4_MHC_COMPILE=1) switches training to mhc_fused.py instead:
autograd Functions with hand-derived backwards around torch.compile'd forward-only loops,
fewer passes still, Sinkhorn one compiled pass each way (Engram's per-stream gate and conv
and MTP's per-stream hnorm + h_proj follow the same switch;
benchmarks/mhc_overhead.py, README). Inference (no grad) always takes the plain no-grad path.

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

import contextlib
import math
import os

import torch
from torch import nn

from dsv4.config import ModelConfig
from dsv4.model.mhc_host import one_token_coefficients, sinkhorn_lists

ALPHA_INIT = 0.01  # mHC Table 5, "gating factor init"


class _Sinkhorn(torch.autograd.Function):
    """Sinkhorn in the [n(row), n(col), N] layout with a hand-written backward.

    Autograd through the 40 unrolled normalisations costs ~20x the forward (a fresh
    tensor per op); the exact reverse of each step m' = m / d, d = sum(m) + eps is one
    line, dm = (dm' - sum(dm' * m')) / d, run in place. The forward writes the output of
    every step into one preallocated buffer (~10 MB per 4096 tokens at n = 4).
    """

    @staticmethod
    def forward(ctx, m, iters, eps):
        p = torch.softmax(m, dim=1)  # row softmax (rows run over dim 0, entries over dim 1)
        steps = torch.empty((2 * iters - 1, *m.shape), dtype=m.dtype, device=m.device)
        denoms = []
        m = p + eps
        for k in range(2 * iters - 1):
            d = m.sum(dim=k % 2, keepdim=True).add_(eps)  # col, then (row, col) rounds
            m = torch.div(m, d, out=steps[k])
            denoms.append(d)
        ctx.save_for_backward(p, steps, *denoms)
        return m.clone()

    @staticmethod
    def backward(ctx, g):
        p, steps, *denoms = ctx.saved_tensors
        g = g.contiguous().clone()
        for k in range(len(denoms) - 1, -1, -1):
            g.sub_((g * steps[k]).sum(dim=k % 2, keepdim=True)).div_(denoms[k])
        g.sub_((g * p).sum(dim=1, keepdim=True)).mul_(p)  # softmax backward
        return g, None, None


_SMALL_BATCH = 256  # tokens; below this the launch count, not the memory traffic, dominates


def _sinkhorn_small(m: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """No-grad Sinkhorn for [N, n, n] with few tokens: 2 ops per normalisation (~35% faster)."""
    N, n = m.shape[0], m.shape[-1]
    ones, ones_t = m.new_ones(N, n, 1), m.new_ones(N, 1, n)
    e = m.new_full((1, 1, 1), eps)
    m = torch.softmax(m, dim=-1).add_(eps)
    m.div_(torch.baddbmm(e, ones_t, m))  # column sums + eps
    for _ in range(iters - 1):
        m.div_(torch.baddbmm(e, m, ones))  # row sums + eps
        m.div_(torch.baddbmm(e, ones_t, m))
    return m


def _sinkhorn_loop(m: torch.Tensor, iters: int, eps: float, row_axis: int, col_axis: int) -> torch.Tensor:
    """DeepSeek's variant in plain ops on logits m whose rows run along `row_axis` (the axis
    summed for a row normalisation) and columns along `col_axis`; in place on the softmax
    output. Used no-grad for many tokens and inside torch.compile (which fuses the loop)."""
    m = torch.softmax(m, dim=row_axis).add_(eps)
    m.div_(m.sum(dim=col_axis, keepdim=True).add_(eps))
    for _ in range(iters - 1):
        m.div_(m.sum(dim=row_axis, keepdim=True).add_(eps))
        m.div_(m.sum(dim=col_axis, keepdim=True).add_(eps))
    return m


def _sinkhorn_host(m: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """No-grad Sinkhorn of ONE [n, n] matrix (single-stream decode) in Python floats.

    Reached by `sinkhorn` for one matrix without grad (single-token decode itself computes its
    coefficients in mhc_host). The tensor version costs ~80 kernel launches of a few n^2
    entries each; on the host the same normalisations of 4-16 numbers (fp64, so within fp32
    rounding of the tensor result) take a fraction of that. CPU only: `tolist` would be a
    device sync elsewhere.
    """
    return torch.tensor(sinkhorn_lists(m[0].tolist(), iters, eps), dtype=m.dtype).unsqueeze(0)


def sinkhorn(logits: torch.Tensor, iters: int = 20, eps: float = 1e-6) -> torch.Tensor:
    """Project [..., n, n] logits to (approximately) doubly stochastic matrices, in fp32.

    DeepSeek's variant (inference kernel `hc_split_sinkhorn`): a row softmax plus eps,
    one column normalisation, then (iters - 1) rounds of row and column normalisation,
    eps in every denominator. The softmax subtracts the row max, so logits of any
    magnitude give finite entries (no exp() underflow to an all-zero row).

    Computed in an [n, n, tokens] layout: the sums then run over outer axes with the long
    token axis contiguous inside, ~4x faster on CPU than reducing size-4 inner axes.
    Without autograd the normalisations run in place; for a few tokens (decode) each one
    is a single batched product with a ones vector plus eps (baddbmm) and a division.
    """
    shape = logits.shape
    with torch.autocast(device_type=logits.device.type, enabled=False):
        m = logits.float().reshape(-1, shape[-2], shape[-1])
        if torch.is_grad_enabled() and m.requires_grad:
            m = _Sinkhorn.apply(m.permute(1, 2, 0).contiguous(), iters, eps)  # [n(row), n(col), N]
        elif m.shape[0] == 1 and m.device.type == "cpu":
            return _sinkhorn_host(m, iters, eps).reshape(shape)
        elif m.shape[0] <= _SMALL_BATCH:
            return _sinkhorn_small(m, iters, eps).reshape(shape)
        else:
            m = _sinkhorn_loop(m.permute(1, 2, 0), iters, eps, row_axis=1, col_axis=0)
    return m.permute(2, 0, 1).reshape(shape)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick (bf16 in our training steps), else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _RMSMix(torch.autograd.Function):
    """phi(RMSNorm(vec(x))) for flattened streams [N, nC] -> [N, out] fp32 (mHC eq. 7).

    The division by the RMS is moved after the matmul (mHC 4.3.1: equal, one pass less
    over the nC-wide input); the RMS is computed in fp32, the matmul in the autocast dtype
    (its output is scaled by alpha = O(0.01)). The backward folds the RMS term into one
    pass: d vec(x) = (g * rstd) phi - (sum(g * raw) rstd^3 / nC) vec(x).
    """

    @staticmethod
    def forward(ctx, flat, phi, norm_eps, dtype):
        ss = torch.linalg.vector_norm(flat, dim=-1, keepdim=True, dtype=torch.float32).square()
        rstd = torch.rsqrt(ss / flat.shape[-1] + norm_eps)  # one read, no squared copy
        low = flat.to(dtype)
        raw = (low @ phi.to(dtype).t()).float()
        ctx.save_for_backward(flat, low, phi, rstd, raw)
        return raw * rstd

    @staticmethod
    def backward(ctx, g):
        flat, low, phi, rstd, raw = ctx.saved_tensors
        g_raw = g * rstd
        coef = (g * raw).sum(-1, keepdim=True) * rstd.pow(3) / -flat.shape[-1]
        g_flat = (g_raw.to(low.dtype) @ phi.to(low.dtype)).float().addcmul_(flat, coef)
        g_phi = (g_raw.to(low.dtype).t() @ low).float()
        return g_flat.to(flat.dtype), g_phi.to(phi.dtype), None, None


class _PreMix(torch.autograd.Function):
    """h = sum_j pre_j x_j: the sublayer input H_pre x, [N, n, C] -> [N, C] in fp32."""

    @staticmethod
    def forward(ctx, x, pre):
        ctx.save_for_backward(x, pre)
        # n strided multiply-adds beat a batched [1, n] x [n, C] product ~2.5x on CPU.
        h = x[:, 0] * pre[:, :1]
        for j in range(1, x.shape[1]):
            h.addcmul_(x[:, j], pre[:, j:j + 1])
        return h

    @staticmethod
    def backward(ctx, g):
        x, pre = ctx.saved_tensors
        g = g.float()
        g = g.unsqueeze(1)
        return pre.unsqueeze(-1) * g, (x * g).sum(-1)


class _PostRes(torch.autograd.Function):
    """out_k = sum_j comb[j, k] x_j + post_k y: comb applied TRANSPOSED (= H_res), plus H_post^T F.

    x [N, n, C] fp32, comb [N, n, n], post [N, n], y [N, C] -> [N, n, C] fp32.
    """

    @staticmethod
    def forward(ctx, x, comb, post, y):
        ctx.save_for_backward(x, comb, post, y)
        out = torch.bmm(comb.transpose(1, 2), x)
        return out.addcmul_(post.unsqueeze(-1), y.unsqueeze(1).float())

    @staticmethod
    def backward(ctx, g):
        x, comb, post, y = ctx.saved_tensors
        g = g.contiguous()
        # one product for both input grads: [comb; post^T] g -> rows 0..n-1 dx, row n dy
        g_xy = torch.bmm(torch.cat([comb, post.unsqueeze(1)], dim=1), g)
        g_comb = torch.bmm(x, g.transpose(1, 2))
        g_post = (g * y.float().unsqueeze(1)).sum(-1)
        n = x.shape[1]
        return g_xy[:, :n], g_comb, g_post, g_xy[:, n].to(y.dtype)


def _rms_mix(x: torch.Tensor, phi: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """phi(RMSNorm(vec(x))) for streams x [..., n, D] -> [..., out] in fp32."""
    flat = x.reshape(-1, x.shape[-2] * x.shape[-1])
    dtype = _compute_dtype(x)  # read before autocast is switched off below
    with torch.autocast(device_type=x.device.type, enabled=False):
        # bf16 streams go in as they are (no fp32 copy): the RMS sums in fp32 anyway
        mixes = _RMSMix.apply(flat, phi, norm_eps, dtype)
    return mixes.reshape(*x.shape[:-2], phi.shape[0])


def _gates(mixes: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor, n: int, eps: float):
    """Raw mixes [..., n^2 + 2n] -> (pre [..., n], post [..., n], comb logits [..., n, n]), mHC eq. 8."""
    a, b = alpha.float(), bias.float()
    pre = torch.sigmoid(mixes[..., :n] * a[0] + b[:n]) + eps
    post = 2 * torch.sigmoid(mixes[..., n:2 * n] * a[1] + b[n:2 * n])
    res = (mixes[..., 2 * n:] * a[2] + b[2 * n:]).unflatten(-1, (n, n))
    return pre, post, res


def _stream_mixes(x, phi, norm_eps: float):
    """Plain-op phi(RMSNorm(vec(x))) for streams x [..., n, D] -> [..., out] fp32 (as _RMSMix)."""
    flat = x.flatten(-2)
    rstd = torch.rsqrt(flat.float().square().mean(-1, keepdim=True) + norm_eps)
    return (flat @ phi.to(x.dtype).t()).float() * rstd


def _head_weights(mixes, alpha, bias, eps: float):
    """HyperHead's collapse weights from its raw mixes [..., n]: sigmoid(alpha m + b) + eps."""
    return torch.sigmoid(mixes * alpha.float() + bias.float()) + eps


_COMPILED: dict[str, object] = {}


def set_compile(enabled: bool) -> None:
    """Run the stream passes and Sinkhorn of every HyperConnection and HyperHead (and Engram's
    per-stream gate and conv, MTP's per-stream hnorm + h_proj) through the fused path of
    mhc_fused.py: autograd Functions whose forward and backward are bf16 matmuls plus
    torch.compile'd loops over the stream. Off by default: compiling costs ~1-2 min per
    shape (Sinkhorn's unrolled backward most of it), too much for tests and short runs
    (benchmarks/mhc_overhead.py turns it on). Also on with DSV4_MHC_COMPILE=1.
    """
    _COMPILED.clear()
    if enabled:
        from dsv4.model import mhc_fused  # imports this module: loaded on first use

        _COMPILED["pre"], _COMPILED["post"] = mhc_fused.stream_pre, mhc_fused.stream_post
        _COMPILED["sinkhorn"] = mhc_fused.sinkhorn


def compile_enabled() -> bool:
    """Whether `set_compile` is on (Engram's per-stream gate and conv follow it too)."""
    return bool(_COMPILED)


if os.environ.get("DSV4_MHC_COMPILE") == "1":
    set_compile(True)


def _nograd_premix(xs, phi, alpha, bias, n: int, eps: float, norm_eps: float, iters: int,
                   unconstrained: bool, loop_sinkhorn: bool = False):
    """(h = H_pre x [N, 1, d] fp32, post [N, n], comb [N, n, n]) for streams xs [N, n, d] (the
    stream dtype), without autograd: the maths of _RMSMix, _gates, Sinkhorn and _PreMix in
    plain ops. `loop_sinkhorn`: Sinkhorn as `_sinkhorn_loop` (for torch.compile, which
    fuses the 2 * iters normalisations into one loop); else `sinkhorn`."""
    pre, post, res = _gates(_stream_mixes(xs, phi, norm_eps), alpha, bias, n, eps)
    if unconstrained:
        comb = res
    elif loop_sinkhorn:
        comb = _sinkhorn_loop(res, iters, eps, row_axis=-1, col_axis=-2)
    else:
        comb = sinkhorn(res, iters, eps)
    return torch.bmm(pre.unsqueeze(1), xs.float()), post, comb


_DECODE: dict[str, object] = {}
DECODE_COMPILE_MAX_TOKENS = 16  # decode batches; prefill chunks stay eager (no recompiles per length)


def set_decode_compile(enabled: bool) -> None:
    """Compile the no-grad coefficients + pre-mix of every HyperConnection (opt-in, inference).

    For 2 to DECODE_COMPILE_MAX_TOKENS tokens (batched decode steps, speculative verification;
    one token on the CPU takes mhc_host instead) the ~100 tiny ops of the RMS mix, the gates
    and Sinkhorn's normalisations become one inductor function (~4x less time per
    hyper-connection on CPU; ~10 s to compile, shared by all layers; a second token count
    compiles a dynamic version).
    The inference engine's `compile=True` turns it on; training (autograd) never takes this path.
    """
    _DECODE.clear()
    if enabled:
        _DECODE["premix"] = torch.compile(_nograd_premix)  # 2nd token count: one dynamic kernel


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
        mixes = _rms_mix(x, self.phi, self.norm_eps)
        pre, post, res = _gates(mixes, self.alpha, self.bias, self.n, self.eps)
        return pre, post, self._project(res)

    def _project(self, res: torch.Tensor) -> torch.Tensor:
        return res if self.unconstrained else sinkhorn(res, self.iters, self.eps)

    def forward(self, x: torch.Tensor, sublayer, ctx=None) -> torch.Tensor:
        # The streams are kept in the training dtype between layers (bf16 under autocast, as
        # DeepSeek does; fp32 otherwise): half the memory traffic of the n-wide stream. The
        # coefficients and Sinkhorn still run in fp32. The first layer casts the embedding.
        x = x.to(_compute_dtype(x))
        if not torch.is_grad_enabled():  # inference (decode steps, eval): no autograd Functions
            return self._forward_nograd(x, sublayer, ctx)
        if _COMPILED:  # training with the fused path (mhc_fused.py)
            return self._forward_compiled(x, sublayer, ctx)
        pre, post, comb = self.coefficients(x)
        if ctx is not None and getattr(ctx, "hc_record", None) is not None:
            ctx.hc_record.append(comb[0].detach())  # first sequence only: diagnostics
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            xs = x.float().reshape(-1, n, d).contiguous()  # the expanded embedding has stride 0
            h = _PreMix.apply(xs, pre.reshape(-1, n))
        y = sublayer(h.reshape(*lead, d).to(x.dtype))
        with torch.autocast(device_type=x.device.type, enabled=False):
            comb = comb.reshape(-1, n, n).contiguous()  # bmm on strided batches is ~10x slower
            out = _PostRes.apply(xs, comb, post.reshape(-1, n), y.reshape(-1, d))
        return out.reshape(x.shape).to(x.dtype)

    def _forward_nograd(self, x: torch.Tensor, sublayer, ctx=None) -> torch.Tensor:
        """The forward without autograd (same maths as the Functions' forwards, fewer ops).

        A decode step runs this ~2L times on one token, where each op's fixed cost, not the
        data, is the time: no Function.apply, no autocast switch unless autocast is on, the
        pre-mix and the post/res mix as one batched product each; one token on the CPU gets its
        coefficients on the host (mhc_host); with `set_decode_compile` the coefficients and the
        pre-mix of a few tokens are one compiled function.
        """
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        amp = torch.is_autocast_enabled(x.device.type)
        off = torch.autocast(device_type=x.device.type, enabled=False) if amp else contextlib.nullcontext()
        with off:
            xs = x.reshape(-1, n, d).contiguous()  # the expanded embedding has stride 0
            if xs.shape[0] == 1 and xs.device.type == "cpu":  # one token: coefficients on the host
                pre, post, comb_t = one_token_coefficients(self, xs)
                h = torch.bmm(pre, xs.float())
            else:
                args = (xs, self.phi, self.alpha, self.bias, n, self.eps, self.norm_eps, self.iters,
                        self.unconstrained)
                if _DECODE and not amp and xs.shape[0] <= DECODE_COMPILE_MAX_TOKENS:
                    h, post, comb = _DECODE["premix"](*args, loop_sinkhorn=True)
                else:
                    h, post, comb = _nograd_premix(*args)
                post, comb_t = post.unsqueeze(-1), comb.transpose(1, 2)
        if ctx is not None and getattr(ctx, "hc_record", None) is not None:
            ctx.hc_record.append(comb_t.transpose(1, 2).reshape(*lead, n, n)[0])
        y = sublayer(h.reshape(*lead, d).to(x.dtype))
        with off:
            # out_k = post_k y + sum_j comb[j, k] x_j (comb transposed, as in _PostRes), in fp32
            out = torch.baddbmm(post * y.reshape(-1, 1, d).float(), comb_t, xs.float())
        return out.reshape(x.shape).to(x.dtype)

    def _forward_compiled(self, x: torch.Tensor, sublayer, ctx=None) -> torch.Tensor:
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        xs = x.reshape(-1, n, d).contiguous()  # the expanded embedding has stride 0
        link: dict = {}  # the post pass hands its x-gradient to the pre pass (mhc_fused._StreamPost)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h, post, res = _COMPILED["pre"](xs, self.phi, self.alpha, self.bias, n, self.eps, self.norm_eps,
                                            link=link)
            comb = res if self.unconstrained else _COMPILED["sinkhorn"](res, self.iters, self.eps)
        if ctx is not None and getattr(ctx, "hc_record", None) is not None:
            ctx.hc_record.append(comb.reshape(*lead, n, n)[0].detach())  # first sequence only
        y = sublayer(h.reshape(*lead, d))
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _COMPILED["post"](xs, comb, post, y.reshape(-1, d), link).reshape(x.shape)


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
        if not torch.is_grad_enabled():  # inference: plain ops, one batched product for the sum
            return self._forward_nograd(x)
        if _COMPILED:  # training with the fused path (mhc_fused.py)
            n, d = x.shape[-2:]
            xs = x.to(_compute_dtype(x)).reshape(-1, n, d).contiguous()
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = _COMPILED["pre"](xs, self.phi, self.alpha, self.bias, n, self.eps, self.norm_eps,
                                       head=True)
            return out.reshape(*x.shape[:-2], d)
        w = _head_weights(_rms_mix(x, self.phi, self.norm_eps), self.alpha, self.bias, self.eps)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = _PreMix.apply(x.reshape(-1, *x.shape[-2:]), w.reshape(-1, self.n))  # sum_j w_j x_j
        return out.reshape(*x.shape[:-2], x.shape[-1]).to(x.dtype)

    def _forward_nograd(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[-2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            xs = x.reshape(-1, n, d)
            w = _head_weights(_stream_mixes(xs, self.phi, self.norm_eps), self.alpha, self.bias, self.eps)
            out = torch.bmm(w.unsqueeze(1), xs.float())  # sum_j w_j x_j
        return out.reshape(*x.shape[:-2], d).to(x.dtype)
