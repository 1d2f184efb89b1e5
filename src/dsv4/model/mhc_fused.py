"""Fused training path of the mHC stream passes (used when `mhc.set_compile(True)`).

Same maths as mhc.py's eager path (mHC eq. 7-8, comb applied transposed); what differs is how
often the n-times-wider stream x [N, n, D] is read and written. Each pass is an
`autograd.Function` whose forward and backward are a bf16 matmul (phi) and a few
torch.compile'd *forward-only* functions (`_fwd`/`_bwd` kernels below): inductor fuses each
into one loop over the tokens, and autograd never traces through them, so the backward is
the hand-derived one below rather than whatever AOTAutograd makes of the plain ops.

    pre  (_StreamPre):  raw = vec(x) phi^T (bf16 matmul);  rstd, gates, h = sum_j pre_j x_j  (1 kernel)
         backward:      g_pre = <x_j, g_h>, gate/rstd grads (1 kernel);  g_phi = g_raw^T vec(x)
                        (bf16 matmul);  g_x = g_post_x + pre_j g_h - c x  (1 kernel, in place in
                        the post pass's gradient buffer);  g_x += g_raw phi  (in-place bf16 addmm)
    post (_StreamPost): out_k = post_k y + sum_j comb[j, k] x_j  (1 kernel)
         backward:      g_x_j = sum_k comb[j, k] g_k, g_y, g_post, g_comb  (1 kernel)

The RMS normalisation is folded into the matmul (phi(x / rms) = (x phi^T) / rms, mHC 4.3.1):
the matmul reads the raw stream, the RMS is a per-token scalar computed in the same kernel
as the pre-mix. The gates, the RMS and every sum run in fp32; x, h and g_x stay in the
stream dtype. Between the two, Sinkhorn (`sinkhorn`) is one compiled pointwise pass each way:
its 2 iters - 1 normalisations written out per matrix entry, the backward recomputing the
forward instead of saving its steps (mhc._Sinkhorn's ~250 small eager ops took ~3x as long).
HyperHead's collapse is the pre pass with sigmoid weights and no post/comb (`head=True`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from dsv4.model.mhc import _gates, _head_weights


def _rstd(x, norm_eps: float):
    """1 / RMS(vec(x)) per token, [N, 1] fp32 (x [N, n, D])."""
    return torch.rsqrt(x.float().square().mean(dim=(-2, -1)).unsqueeze(-1) + norm_eps)


def _weights(raw, rstd, alpha, bias, n: int, eps: float, head: bool):
    """(pre or head weights [N, n], post [N, n] | None, comb logits [N, n, n] | None) from the raw
    phi products [N, m] and rstd."""
    mixes = raw.float() * rstd
    if head:
        return _head_weights(mixes, alpha, bias, eps), None, None
    return _gates(mixes, alpha, bias, n, eps)


def _mix(w, x):
    """sum_j w[:, j] x[:, j] (fp32) over axis 1 of w and x (broadcastable): J unrolled
    multiply-adds. Inductor makes a reduction over a short middle axis into a slow loop
    (~30x slower here); written out it is one pointwise pass."""
    out = w[:, 0] * x[:, 0].float()
    for j in range(1, x.shape[1]):
        out = out + w[:, j] * x[:, j].float()
    return out


def _pre_fwd(x, raw, alpha, bias, n: int, eps: float, norm_eps: float, head: bool):
    """-> (h = sum_j w_j x_j in x's dtype, w, post, comb logits, rstd)."""
    rstd = _rstd(x, norm_eps)
    w, post, res = _weights(raw, rstd, alpha, bias, n, eps, head)
    return _mix(w.unsqueeze(-1), x).to(x.dtype), w, post, res, rstd


def _pre_bwd_gates(x, g_h, raw, rstd, alpha, bias, g_post, g_res, n: int, eps: float, head: bool):
    """Gradients through the gates and the RMS scalar: -> (g_raw [N, m] in x's dtype, c [N, 1]
    with dL/dx (RMS part) = -c x, g_alpha, g_bias)."""
    mixes = raw.float() * rstd
    a, b = alpha.float(), bias.float()
    g_w = (x.float() * g_h.float().unsqueeze(-2)).sum(-1)  # [N, n]: <x_j, g_h>
    s_pre = torch.sigmoid(mixes[:, :n] * a[0] + b[:n])
    parts = [g_w * s_pre * (1 - s_pre)]  # d(sigmoid + eps), per gate group: d/d(alpha_g mixes + b)
    if not head:
        s_post = torch.sigmoid(mixes[:, n:2 * n] * a[1] + b[n:2 * n])
        parts += [g_post * 2 * s_post * (1 - s_post), g_res.reshape(-1, n * n)]
    groups = torch.split(mixes, [p.shape[-1] for p in parts], dim=-1)
    g_alpha = torch.stack([(p * m).sum() for p, m in zip(parts, groups, strict=True)])
    g_z = torch.cat(parts, dim=-1)  # [N, m]
    g_mixes = torch.cat([p * a[g] for g, p in enumerate(parts)], dim=-1)
    g_raw = g_mixes * rstd
    c = (g_mixes * raw.float()).sum(-1, keepdim=True) * rstd.pow(3) / (x.shape[-2] * x.shape[-1])
    return g_raw.to(x.dtype), c, g_alpha, g_z.sum(0)


def _pre_bwd_x(x, g_h, w, c, g_x):
    """g_x += w_j g_h - c x, in place (g_x in x's dtype: the post pass's share of the gradient).
    The phi term g_raw phi is added after this by an in-place bf16 addmm: no [N, nD] buffer
    is allocated for it or for the sum (fresh large buffers cost page faults on CPU)."""
    g = g_x.float() + w.unsqueeze(-1) * g_h.float().unsqueeze(-2) - c.unsqueeze(-1) * x.float()
    g_x.copy_(g.to(g_x.dtype))


def _post_fwd(x, comb, post, y):
    """out_k = post_k y + sum_j comb[j, k] x_j (comb transposed), in x's dtype. Written per output
    stream from the n input streams converted once: inductor then loops over (token, channel)
    with every x_j loaded once for all n outputs (~30% faster than one loop over [N, n, D],
    which reloads and converts each x_j for every k)."""
    n = x.shape[1]
    xs, y32 = [x[:, j].float() for j in range(n)], y.float()
    outs = []
    for k in range(n):
        out = post[:, k:k + 1] * y32
        for j in range(n):
            out = out + comb[:, j, k:k + 1] * xs[j]
        outs.append(out.to(x.dtype))
    return torch.stack(outs, dim=1)


def _post_bwd(g, x, comb, post, y):
    """-> (g_x, g_comb, g_post, g_y) of `_post_fwd`."""
    g32 = g.float()
    g_x = _mix(comb.transpose(1, 2).unsqueeze(-1), g.unsqueeze(-2))  # sum_k comb[j, k] g_k
    g_comb = (x.float().unsqueeze(-2) * g32.unsqueeze(-3)).sum(-1)  # <x_j, g_k>
    g_post = (g32 * y.float().unsqueeze(-2)).sum(-1)
    g_y = _mix(post.unsqueeze(-1), g)
    return g_x.to(x.dtype), g_comb, g_post, g_y.to(y.dtype)


def _sinkhorn_steps(res, iters: int, eps: float):
    """mhc.sinkhorn's normalisations on logits res [n, n, N] (tokens last: each entry is a
    contiguous [N] vector, so the loop vectorises), written out entry by entry (a sum over a
    size-n axis compiled as a reduction is a slow loop; unrolled, the whole projection is one
    pointwise pass). -> (softmax p, the matrix after each of the 2 iters - 1 normalisations,
    their reciprocal denominators); matrices are lists of rows. Dividing by d is a product with
    1 / d: n reciprocals instead of n^2 divisions per step (within fp32 rounding of mhc.sinkhorn)."""
    n = res.shape[0]
    p = []
    for i in range(n):  # row softmax (max-subtracted: no underflow for large logits)
        row = [res[i, j] for j in range(n)]
        top = functools.reduce(torch.maximum, row)
        e = [torch.exp(v - top) for v in row]
        inv = 1 / functools.reduce(torch.add, e)
        p.append([v * inv for v in e])
    m = [[v + eps for v in row] for row in p]
    steps, denoms = [], []
    for k in range(2 * iters - 1):
        if k % 2 == 0:  # columns first, then rows and columns alternately
            d = [1 / (functools.reduce(torch.add, [m[i][j] for i in range(n)]) + eps) for j in range(n)]
            m = [[m[i][j] * d[j] for j in range(n)] for i in range(n)]
        else:
            d = [1 / (functools.reduce(torch.add, m[i]) + eps) for i in range(n)]
            m = [[m[i][j] * d[i] for j in range(n)] for i in range(n)]
        steps.append(m)
        denoms.append(d)
    return p, steps, denoms


def _stack(m):
    """A list of n rows of n [N] vectors -> [n, n, N]."""
    return torch.stack([torch.stack(row) for row in m])


def _sinkhorn_fwd(res, iters: int, eps: float):
    """comb [n, n, N] = mhc.sinkhorn(res) (both tokens last) in one pass."""
    return _stack(_sinkhorn_steps(res, iters, eps)[1][-1])


def _sinkhorn_bwd(res, g, iters: int, eps: float):
    """dL/dres of `_sinkhorn_fwd` given g = dL/dcomb: the forward recomputed in registers (nothing
    saved between the passes), then each step reversed, m' = m / d -> dm = (dm' - sum dm' m') / d
    with the sum over the normalised axis (as mhc._Sinkhorn), and the softmax's backward."""
    n = res.shape[0]
    p, steps, denoms = _sinkhorn_steps(res, iters, eps)
    gm = [[g[i, j] for j in range(n)] for i in range(n)]
    for k in range(len(steps) - 1, -1, -1):
        m, d = steps[k], denoms[k]
        if k % 2 == 0:  # column step: sums over i per column j
            s = [functools.reduce(torch.add, [gm[i][j] * m[i][j] for i in range(n)]) for j in range(n)]
            gm = [[(gm[i][j] - s[j]) * d[j] for j in range(n)] for i in range(n)]
        else:
            s = [functools.reduce(torch.add, [gm[i][j] * m[i][j] for j in range(n)]) for i in range(n)]
            gm = [[(gm[i][j] - s[i]) * d[i] for j in range(n)] for i in range(n)]
    out = []
    for i in range(n):  # softmax backward per row
        s = functools.reduce(torch.add, [gm[i][j] * p[i][j] for j in range(n)])
        out.append([(gm[i][j] - s) * p[i][j] for j in range(n)])
    return _stack(out)


_KERNELS = {"sinkhorn_fwd": _sinkhorn_fwd, "sinkhorn_bwd": _sinkhorn_bwd,
            "pre_fwd": _pre_fwd, "pre_bwd_gates": _pre_bwd_gates, "pre_bwd_x": _pre_bwd_x,
            "post_fwd": _post_fwd, "post_bwd": _post_bwd}


@functools.cache
def compiled(fn, variant=None):
    """torch.compile(fn), made once per (fn, variant): a variant that traces other shapes
    compiles apart, so that a first shape change (another token count) is what makes a
    kernel dynamic. Engram's fused passes use it too."""
    return torch.compile(fn)


def _kernel(name: str, head: bool = False):
    """The compiled kernel `name`; HyperHead's (m = n weights, no post/comb) is its own variant."""
    return compiled(_KERNELS[name], head)


class _StreamPre(torch.autograd.Function):
    """x [N, n, D] -> (h [N, D], post [N, n], comb logits [N, n, n]); head: -> h (weights sigmoid)."""

    @staticmethod
    def forward(ctx, x, phi, alpha, bias, n, eps, norm_eps, head, link):
        flat = x.view(x.shape[0], -1)
        m = phi.shape[0]
        pad = -m % 16 if m > 16 else 0  # oneDNN's bf16 product with 24 columns takes ~1.7x as long as with 32
        raw = (flat @ F.pad(phi.to(x.dtype), (0, 0, 0, pad)).t())[:, :m]  # bf16 under autocast
        h, w, post, res, rstd = _kernel("pre_fwd", head)(x, raw, alpha, bias, n, eps, norm_eps, head)
        ctx.save_for_backward(x, phi, alpha, bias, raw, rstd, w)
        ctx.args = (n, eps, head, link)
        return h if head else (h, post, res)

    @staticmethod
    def backward(ctx, g_h, g_post=None, g_res=None):  # unused outputs get zero grads (materialised)
        x, phi, alpha, bias, raw, rstd, w = ctx.saved_tensors
        n, eps, head, link = ctx.args
        g_raw, c, g_alpha, g_bias = _kernel("pre_bwd_gates", head)(x, g_h, raw, rstd, alpha, bias, g_post,
                                                             g_res, n, eps, head)
        g_phi = (g_raw.t() @ x.view(x.shape[0], -1)).to(phi.dtype)
        g_x = link.pop("g_x", None) if link is not None else None  # _StreamPost's share (ours now)
        if g_x is None:
            g_x = torch.zeros_like(x)
        _kernel("pre_bwd_x", head)(x, g_h, w, c, g_x)
        g_x.view(x.shape[0], -1).addmm_(g_raw, phi.to(x.dtype))
        return g_x, g_phi, g_alpha.to(alpha.dtype), g_bias.to(bias.dtype), None, None, None, None, None


class _StreamPost(torch.autograd.Function):
    """(x [N, n, D], comb [N, n, n], post [N, n], y [N, D]) -> x_{l+1} [N, n, D] in x's dtype.

    With a `link` shared with the _StreamPre of the same hyper-connection, the gradient for x
    is handed to that pre pass instead of returned: its backward always runs after this one
    (it needs the gradients of post and comb, computed here) and adds it inside its own loop
    over the stream, which saves autograd's separate accumulation pass and buffer.
    """

    @staticmethod
    def forward(ctx, x, comb, post, y, link):
        ctx.save_for_backward(x, comb, post, y)
        ctx.link = link
        return _kernel("post_fwd")(x, comb, post, y)

    @staticmethod
    def backward(ctx, g):
        x, comb, post, y = ctx.saved_tensors
        g_x, g_comb, g_post, g_y = _kernel("post_bwd")(g.contiguous(), x, comb, post, y)
        if ctx.link is not None:
            ctx.link["g_x"], g_x = g_x, None
        return g_x, g_comb, g_post, g_y, None


class _SinkhornFused(torch.autograd.Function):
    """mhc.sinkhorn (same steps, fp32) for logits [N, n, n] as two compiled passes: the forward, and
    a backward that recomputes it (~1/6 of the time of mhc._Sinkhorn's ~250 small ops)."""

    @staticmethod
    def forward(ctx, res, iters, eps):
        res = res.permute(1, 2, 0).contiguous()  # [n, n, N]: tokens last (see _sinkhorn_steps)
        ctx.save_for_backward(res)
        ctx.args = (iters, eps)
        return _kernel("sinkhorn_fwd")(res, iters, eps).permute(2, 0, 1)

    @staticmethod
    def backward(ctx, g):
        (res,) = ctx.saved_tensors
        g = g.permute(1, 2, 0).contiguous()
        return _kernel("sinkhorn_bwd")(res, g, *ctx.args).permute(2, 0, 1), None, None


def sinkhorn(res, iters: int, eps: float):
    """Fused mhc.sinkhorn for fp32 logits [N, n, n] (autocast off) -> comb [N, n, n]."""
    return _SinkhornFused.apply(res.float(), iters, eps)


def stream_pre(x, phi, alpha, bias, n: int, eps: float, norm_eps: float, head: bool = False,
               link: dict | None = None):
    """Fused pre pass for contiguous streams x [N, n, D] (autocast off; see module docstring).
    Pass the same fresh `link` dict to the stream_post of the same hyper-connection."""
    return _StreamPre.apply(x, phi, alpha, bias, n, eps, norm_eps, head, link)


def stream_post(x, comb, post, y, link: dict | None = None):
    """Fused post/res pass: out_k = post_k y + sum_j comb[j, k] x_j."""
    return _StreamPost.apply(x, comb.contiguous(), post.contiguous(), y.contiguous(), link)
