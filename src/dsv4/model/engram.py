"""Engram: conditional memory by hashed N-gram lookup, gated into the residual streams (SPEC 1.2).

At a few early layers, the last few (compressed) token ids address rows of a large embedding
table; the retrieved vector e_t is gated per mHC branch by how well it agrees with the current
hidden state, then smoothed by a short causal conv and added to the residual before attention
(Engram paper, arXiv 2601.07372, sec. 2.2-2.3):

    e_t = concat_{n, k} table[row_{n,k}(t)]                               (addresses: engram_hash)
    k^(m) = W_K^(m) e_t,   v = W_V e_t                                     (W_V shared by branches)
    s^(m) = <RMSNorm(h^(m)), RMSNorm(k^(m))> / sqrt(d);  s <- sign(s) sqrt(max(|s|, 1e-6))
    u^(m) = sigmoid(s^(m)) * v
    Y = SiLU(Conv1D(RMSNorm(U))) + U      depthwise, causal, kernel 4, dilation max order, zero-init
    H <- H + Y

The token-id -> canonical-id compression map lives in the `compress` buffer (identity until
`set_engram_tokenizer` fills it; persistent, so a checkpoint reproduces it). Hash multipliers
and prime moduli are buffers too, recomputed identically from the config on construction.

Parameter naming: the table is `table.weight` (its name contains "engram" and "table", which
puts it in the Adam 5x-lr no-decay group). The per-branch norm weights and the conv kernel
are stored 1-D so that the generic matrix init (and Muon) leave them alone: norms start at 1
and the conv at 0, so at init Y = U exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig
from dsv4.errors import UserError
from dsv4.model import mhc
from dsv4.model.engram_hash import compression_map, engram_addresses, engram_multipliers, engram_primes
from dsv4.model.engram_store import make_table_store
from dsv4.model.mhc_fused import compiled
from dsv4.model.moe import _building_on_meta


class Engram(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.orders = list(cfg.engram_ngram_orders)
        self.n_heads = cfg.engram_n_heads
        self.n_streams, self.dim, self.eps = cfg.hc_mult, cfg.dim, cfg.norm_eps
        self.kernel_size, self.dilation = cfg.engram_kernel_size, max(self.orders)
        self.pad_id = cfg.vocab_size  # compressed ids are < vocab_size, so the pad never collides
        n_slots = len(self.orders) * self.n_heads
        head_dim = cfg.engram_dim // n_slots

        primes = engram_primes(tuple(cfg.engram_layer_ids), len(self.orders), self.n_heads,
                               cfg.engram_vocab_size)[layer_id]
        sizes = [p for per_order in primes for p in per_order]
        self.register_buffer("moduli", torch.tensor(primes, dtype=torch.long))  # [n_orders, K]
        self.register_buffer("offsets", torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0))
        mult = torch.empty(max(self.orders), dtype=torch.long)
        if not _building_on_meta():
            mult = engram_multipliers(layer_id, max(self.orders), cfg.vocab_size + 1)
        self.register_buffer("multipliers", mult)
        self.register_buffer("compress", torch.arange(cfg.vocab_size, dtype=torch.long))

        n, D = self.n_streams, cfg.dim
        self.table = make_table_store(cfg, layer_id, sum(sizes), head_dim)  # engram_store.py (issue 8)
        self.key_proj = nn.Linear(cfg.engram_dim, n * D, bias=False)  # W_K^(m), one per branch
        self.value_proj = nn.Linear(cfg.engram_dim, D, bias=False)  # W_V, shared
        self.query_norm = nn.Parameter(torch.ones(n * D))
        self.key_norm = nn.Parameter(torch.ones(n * D))
        self.conv_norm = nn.Parameter(torch.ones(n * D))
        self.conv_weight = nn.Parameter(torch.zeros(n * D * self.kernel_size))  # zero-init (paper)

    # ---- addressing (pure function of token ids; see engram_hash) -------------------------
    def addresses(self, ids: torch.Tensor, prefix_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Table rows [B, T, n_orders*K] for token ids [B, T] (prefix_ids: ids just before)."""
        prefix = self.compress[prefix_ids] if prefix_ids is not None else None
        return engram_addresses(self.compress[ids], self.orders, self.multipliers, self.moduli,
                                self.offsets, self.pad_id, prefix)

    def retrieve(self, rows: torch.Tensor) -> torch.Tensor:
        """e_t [B, T, engram_dim]: the heads' rows concatenated."""
        return self.table(rows).flatten(-2)

    # ---- forward --------------------------------------------------------------------------
    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return _rms(x, weight, self.eps)

    def forward(self, x: torch.Tensor, ctx, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] or [B, T, n, D] (mHC streams) -> x + Y, same shape. `rows` may be given
        (prefetched / incremental); otherwise computed from ctx.ids."""
        if getattr(ctx, "cache", None) is not None:  # [serve] cached decoding: dsv4.infer.engram_cache
            return ctx.cache.engram[self.layer_id].forward(self, x, ctx)
        single = x.dim() == 3
        h = x.unsqueeze(2) if single else x
        if rows is None:
            rows = self.addresses(ctx.ids)
        if mhc.compile_enabled() and torch.is_grad_enabled():  # training: the fused (compiled) passes
            alpha, out = self._fused_forward(h, self.retrieve(rows))
        else:
            alpha, u = self.gated_value(h, self.retrieve(rows))
            out = h + (self._short_conv(u) + u).to(h.dtype)
        if ctx is not None and self.training and not torch.compiler.is_compiling():  # logging only
            ctx.stats[f"engram_gate_l{self.layer_id}"] = alpha.detach().mean()
        return out.squeeze(2) if single else out

    def _fused_forward(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate alpha, h + Y): the same maths as the eager path with the per-stream elementwise
        passes fused by torch.compile (norms and gate; SiLU and the sums) around an fp32 conv
        (`_CausalConv`), ~4x less time than the eager path at n = 4. Each stream count compiles its
        own kernels (`compiled(fn, n)`): a second n would otherwise turn them dynamic (slower)."""
        B, T, n, D = h.shape
        key, value = self.key_proj(e), self.value_proj(e)  # the projections stay autocast matmuls
        with torch.autocast(device_type=h.device.type, enabled=False):
            alpha, u, z = _GateNorm.apply(h, key.view(B, T, n, D), value, self.query_norm,
                                          self.key_norm, self.conv_norm, self.eps)
            taps = self.conv_weight.view(n, D, self.kernel_size).permute(2, 0, 1)  # [k, n, D]
            conv = _CausalConv.apply(z, taps.float(), self.dilation)
            return alpha, compiled(_silu_add, n)(h, conv, u)

    def gated_value(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Streams h [B, T, n, D], memory e [B, T, engram_dim] -> (gate alpha [B, T, n],
        U = alpha * W_V e [B, T, n, D] fp32)."""
        B, T, n, D = h.shape
        key = self.key_proj(e).view(B, T, n, D)
        return _gate(h, key, self.value_proj(e), self.query_norm, self.key_norm, self.eps)

    def _short_conv(self, u: torch.Tensor) -> torch.Tensor:
        """SiLU(depthwise causal dilated Conv1D(RMSNorm(U))) over time, per stream-channel."""
        B, T, n, D = u.shape
        z = self._rms(u, self.conv_norm).reshape(B, T, n * D).transpose(1, 2)  # [B, C, T]
        z = F.pad(z, ((self.kernel_size - 1) * self.dilation, 0))  # left pad only: causal
        return self.conv_silu(z)

    def conv_silu(self, z: torch.Tensor) -> torch.Tensor:
        """[B, n*D, reach + T] (the reach = (kernel-1)*dilation steps before each output: zero
        padding, or a decoder's real past) -> SiLU(depthwise dilated conv) [B, T, n, D] fp32."""
        C = z.shape[1]
        w = self.conv_weight.view(C, 1, self.kernel_size)
        if torch.is_autocast_enabled(z.device.type):
            w = w.to(torch.get_autocast_dtype(z.device.type))
            z = z.to(w.dtype)
        z = F.silu(F.conv1d(z, w, dilation=self.dilation, groups=C))
        return z.transpose(1, 2).reshape(z.shape[0], z.shape[2], self.n_streams, self.dim).float()


def _rms(x, weight, eps: float):
    """RMSNorm over the last dim in fp32 with a per-stream-channel weight [n * D]."""
    D = x.shape[-1]
    return F.rms_norm(x.float(), (D,), eps=eps) * weight.float().view(-1, D)


GATE_FLOOR = 1e-6  # |s| is clamped here before the square root (no gradient below it)


def _score_gate(s):
    """Paper eq. 4's gate of the scaled score s: sigmoid(sign(s) sqrt(max(|s|, floor)))."""
    return torch.sigmoid(torch.sign(s) * s.abs().clamp_min(GATE_FLOOR).sqrt())


def _gate(h, key, value, query_norm, key_norm, eps: float):
    """Streams h, keys [B, T, n, D], value [B, T, D] -> (gate alpha [B, T, n], U = alpha * value
    [B, T, n, D] fp32). Gate per branch (paper eq. 4): the scaled dot product of the normed
    query and key, through a signed square root and a sigmoid."""
    s = (_rms(h, query_norm, eps) * _rms(key, key_norm, eps)).sum(-1) / math.sqrt(h.shape[-1])
    alpha = _score_gate(s)
    return alpha, alpha.unsqueeze(-1) * value.float().unsqueeze(2)


def _gate_norm_fwd(h, key, value, query_norm, key_norm, conv_norm, eps: float):
    """`_gate` and the conv input RMSNorm(U) of `_short_conv` in one pass -> (alpha fp32, U,
    RMSNorm(U)), U and its norm stored in h's dtype (computed in fp32): bf16 mHC streams halve
    the n-wide buffers (the eager path rounds the conv and U + conv to bf16 too). Also returns
    the per-(token, stream) scalars `_gate_norm_bwd` reuses: the two RMS reciprocals, the
    score s and the mean square m of the value. RMSNorm(alpha v) = c v with the scalar
    c = alpha / sqrt(alpha^2 m + eps), so the norm of U is never taken over n-wide data."""
    n, D = h.shape[-2:]
    hf, kf, v = h.float(), key.float(), value.float()
    rh = torch.rsqrt(hf.square().mean(-1) + eps)  # [B, T, n]
    rk = torch.rsqrt(kf.square().mean(-1) + eps)
    q = hf * rh.unsqueeze(-1) * query_norm.float().view(n, D)
    k = kf * rk.unsqueeze(-1) * key_norm.float().view(n, D)
    s = (q * k).sum(-1) / math.sqrt(D)
    alpha = _score_gate(s)
    m = v.square().mean(-1)  # [B, T]
    c = alpha * torch.rsqrt(alpha.square() * m.unsqueeze(-1) + eps)
    u = alpha.unsqueeze(-1) * v.unsqueeze(2)
    z = c.unsqueeze(-1) * v.unsqueeze(2) * conv_norm.float().view(n, D)
    return alpha, u.to(h.dtype), z.to(h.dtype), rh, rk, s, m


def _rms_bwd(g_y, x, r):
    """dL/dx of y = x * r with r = rsqrt(mean(x^2) + eps) over the last dim: r (g_y - y mean(g_y y))."""
    y = x * r.unsqueeze(-1)
    return r.unsqueeze(-1) * (g_y - y * (g_y * y).mean(-1, keepdim=True))


def _gate_norm_bwd(g_u, g_z, h, key, value, query_norm, key_norm, conv_norm, alpha, rh, rk, s, m,
                   eps: float):
    """Gradients of `_gate_norm_fwd` (alpha itself is logged only, detached) for its six inputs,
    written out by hand: autograd through RMSNorm(U) made inductor's backward take the norm's
    backward over n-wide data, ~2x the time of these passes (U and its norm are rank one per token)."""
    n, D = h.shape[-2:]
    hf, kf, v = h.float(), key.float(), value.float()
    wq, wk, wc = query_norm.float().view(n, D), key_norm.float().view(n, D), conv_norm.float().view(n, D)
    gu, gz = g_u.float(), g_z.float()
    rden = torch.rsqrt(alpha.square() * m.unsqueeze(-1) + eps)
    c = alpha * rden
    gzw = gz * wc
    g_c = (gzw * v.unsqueeze(2)).sum(-1)  # [B, T, n]
    rden3 = rden * rden * rden
    # c depends on alpha (dc/dalpha = eps / den^1.5) and on m (dc/dm = -alpha^3 / (2 den^1.5))
    g_a = (gu * v.unsqueeze(2)).sum(-1) + g_c * eps * rden3
    g_m = (g_c * -0.5 * alpha * alpha.square() * rden3).sum(-1)  # [B, T]
    g_v = (alpha.unsqueeze(-1) * gu + c.unsqueeze(-1) * gzw).sum(2) + g_m.unsqueeze(-1) * (2.0 / D) * v
    g_wc = (gz * (c.unsqueeze(-1) * v.unsqueeze(2))).sum((0, 1))
    # alpha = _score_gate(s): no gradient where the clamp holds
    a_s = s.abs()
    g_s = g_a * alpha * (1 - alpha) * 0.5 * torch.rsqrt(a_s.clamp_min(GATE_FLOOR)) * (a_s >= GATE_FLOOR)
    hn, kn = hf * rh.unsqueeze(-1), kf * rk.unsqueeze(-1)
    scale = g_s.unsqueeze(-1) / math.sqrt(D)
    g_q, g_k = scale * kn * wk, scale * hn * wq  # dL/d(RMSNorm(h) wq), dL/d(RMSNorm(key) wk)
    g_wq, g_wk = (g_q * hn).sum((0, 1)), (g_k * kn).sum((0, 1))
    g_h, g_key = _rms_bwd(g_q * wq, hf, rh), _rms_bwd(g_k * wk, kf, rk)
    return (g_h.to(h.dtype), g_key.to(key.dtype), g_v.to(value.dtype), g_wq.reshape(-1).to(query_norm.dtype),
            g_wk.reshape(-1).to(key_norm.dtype), g_wc.reshape(-1).to(conv_norm.dtype))


class _GateNorm(torch.autograd.Function):
    """(alpha, U, RMSNorm(U)) of `_gate_norm_fwd` with the hand-written `_gate_norm_bwd`, each
    one compiled function per stream count. Saves the inputs and [B, T, n]-sized scalars only."""

    @staticmethod
    def forward(ctx, h, key, value, query_norm, key_norm, conv_norm, eps):
        n = h.shape[2]
        alpha, u, z, rh, rk, s, m = compiled(_gate_norm_fwd, n)(h, key, value, query_norm, key_norm,
                                                                conv_norm, eps)
        ctx.save_for_backward(h, key, value, query_norm, key_norm, conv_norm, alpha, rh, rk, s, m)
        ctx.eps = eps
        ctx.mark_non_differentiable(alpha)
        return alpha, u, z

    @staticmethod
    def backward(ctx, g_alpha, g_u, g_z):
        saved = ctx.saved_tensors
        n = saved[0].shape[2]
        return (*compiled(_gate_norm_bwd, n)(g_u, g_z, *saved, ctx.eps), None)


def _silu_add(h, conv, u):
    """h + SiLU(conv) + U in h's dtype (the residual add of Engram.forward), for torch.compile."""
    return (h.float() + F.silu(conv.float()) + u.float()).to(h.dtype)


def _shifted(z, s: int, T: int):
    """z delayed by s steps along dim 1 (zeros first): z[t - s]; for s < 0 advanced: z[t + |s|]."""
    pad = (s, 0) if s >= 0 else (0, -s)
    zp = F.pad(z, (0, 0) * (z.dim() - 2) + pad)
    return zp[:, :T] if s >= 0 else zp[:, -s:]


def _conv_fwd(z, taps, dilation: int):
    """out[t] = sum_i taps[i] z[t - (k-1-i) * dilation] (fp32), one fused loop when compiled."""
    k, T = taps.shape[0], z.shape[1]
    out = z * taps[k - 1]
    for i in range(k - 1):
        out = out + _shifted(z, (k - 1 - i) * dilation, T) * taps[i]
    return out.to(z.dtype)


def _conv_bwd(g, z, taps, dilation: int):
    """(dL/dz, dL/dtaps) of `_conv_fwd`: the same conv run backwards in time, and per tap a
    sum over (batch, time) of the advanced gradient times the input. Every sum runs over the
    same full [B, T] range (the advanced gradient is zero-padded at the end), so inductor makes
    the k sums and dL/dz one pass over g and z (on slices of unequal lengths it made k passes:
    2x the time once the n-wide z no longer fits in the cache)."""
    k, T = taps.shape[0], z.shape[1]
    g, z32 = g.float(), z.float()  # bf16 buffers (bf16 mHC streams): fp32 products and sums
    g_z = g * taps[k - 1]
    g_taps = [None] * k
    g_taps[k - 1] = (g * z32).sum(dim=(0, 1))
    for i in range(k - 1):
        g_s = _shifted(g, -(k - 1 - i) * dilation, T)
        g_z = g_z + g_s * taps[i]
        g_taps[i] = (g_s * z32).sum(dim=(0, 1))
    return g_z.to(z.dtype), torch.stack(g_taps)


class _CausalConv(torch.autograd.Function):
    """Causal dilated depthwise conv over time on z [B, T, C...] with taps [k, C...] (F.conv1d's
    cross-correlation over the left-padded input), forward and backward each one compiled
    function. Autograd through the shifts inside a larger compiled graph made inductor emit
    a masked reduction for the taps' gradient ~5x slower than this whole conv."""

    @staticmethod
    def forward(ctx, z, taps, dilation):
        ctx.save_for_backward(z, taps)
        ctx.dilation = dilation
        return compiled(_conv_fwd, z.shape[2:])(z, taps, dilation)

    @staticmethod
    def backward(ctx, g):
        z, taps = ctx.saved_tensors
        g_z, g_taps = compiled(_conv_bwd, z.shape[2:])(g, z, taps, ctx.dilation)
        return g_z, g_taps, None


@torch.no_grad()
def set_engram_tokenizer(model: nn.Module, tokenizer) -> int:
    """Fill every Engram layer's compression map from `tokenizer` (anything with `.decode(ids)`
    and `.vocab_size`). Returns the number of canonical ids (0 if the model has no Engram)."""
    layers = [m for m in model.modules() if isinstance(m, Engram)]
    if not layers:
        return 0
    vocab = layers[0].compress.numel()
    if int(getattr(tokenizer, "vocab_size", 0)) > vocab:
        raise UserError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {vocab}")
    cmap = compression_map(tokenizer, vocab)
    for m in layers:
        m.compress.copy_(cmap.to(m.compress.device))
    return int(cmap.max()) + 1
