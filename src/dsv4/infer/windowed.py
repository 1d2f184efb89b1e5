"""Cached attention of a long prompt chunk on a sliding-window layer (the engine's prefill).

`AttentionCache._attend` scores every query of a chunk against every raw key it holds
(the ring + the whole chunk) and, on HCA layers, against every compressed entry through
one materialised [T, K] fp32 softmax. For a chunk of T tokens that is O(T^2) raw work of
which the window keeps only T*w, and the compressed part, the one that grows with the
context, is written to memory several times over.

Here (same math, one softmax over [raw window | compressed | sink] per query):
  - raw keys by query sub-chunks of c >= window tokens: sub-chunk j reads only its own
    and the previous sub-chunk's keys (the ring's cells in front of sub-chunk 0), 2c each;
  - CSA: each query's k picked entries join its sub-chunk's softmax (O(T k));
  - HCA (dense entries): the entries complete before the chunk's first token are visible to
    every query, so they need no mask: their softmax is taken a few (query, head) rows at
    a time (`_dense_lse`: bf16 matmuls under autocast, fp32 exp2, no [T, N] tensor in
    memory) and merged exactly, by log-sum-exp, with the softmax over [window | the
    chunk's own newly complete entries | sink]:
        out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse),  lse = logaddexp(lse_a, lse_b).
"""

from __future__ import annotations

import math

import torch

SCORE_BLOCK = 1 << 18  # (row, entry) scores per step of `_dense_lse`: 64 rows at N = 4096 (fp32 in L2)


def _dense_lse(q: torch.Tensor, e: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention of rows q [M, D] over entries e [N, D] (K = V): (out [M, D] fp32,
    log-sum-exp [M, 1]), a few rows at a time so that no [M, N] tensor is made."""
    out = q.new_empty(q.shape, dtype=torch.float32)
    lse = q.new_empty(q.shape[0], 1, dtype=torch.float32)
    et = e.transpose(0, 1)
    rows = max(SCORE_BLOCK // e.shape[0], 64)
    c = scale * math.log2(math.e)
    # in base 2 (logits * log2(e), exp2): torch's fp32 exp2 runs ~4x faster than its exp on CPU
    for s in range(0, q.shape[0], rows):
        z = torch.matmul(q[s:s + rows], et).float()
        m = z.amax(-1, keepdim=True).mul_(c)  # the scaled maximum (c > 0)
        torch.exp2(torch.add(-m, z, alpha=c, out=z), out=z)  # scale and shift in one pass
        total = z.sum(-1, keepdim=True)
        out[s:s + rows] = torch.matmul(z.to(e.dtype), e).float().div_(total)
        lse[s:s + rows] = m * math.log(2.0) + total.log()
    return out, lse


def _frame(t: torch.Tensor, before: int, after: int, fill) -> torch.Tensor:
    """t [B, L, ...] with `before` / `after` cells of `fill` added along dim 1."""
    pad = [t.new_full((t.shape[0], n, *t.shape[2:]), fill) for n in (before, after)]
    return torch.cat([pad[0], t, pad[1]], dim=1)


def windowed_attend(attn, q, k_all, v_all, k_pos, pos, c: int, ent, sel) -> torch.Tensor:
    """q [B, T, H, D] at positions pos [B, T]; raw keys k_all / v_all [B, R + T, G, D] at
    k_pos [B, R + T] (the R ring cells first, then the chunk's own, R <= c); ent/sel as
    `AttentionCache._compressed` returns them (None, CSA picks or HCA entries + block ends).
    -> [B, T, H, D]."""
    B, T, H, D = q.shape
    G = k_all.shape[2]
    Hg = H // G
    R = k_all.shape[1] - T
    nc = -(-T // c)
    tail = nc * c - T

    def windows(t: torch.Tensor, fill) -> torch.Tensor:  # [B, R+T, *] -> [B, nc, *, 2c]
        return _frame(t, c - R, tail, fill).unfold(1, 2 * c, c)

    qp = _frame(pos, 0, tail, 0).view(B, nc, c)  # pad rows: any position (they are cut off)
    kp = windows(k_pos.to(pos.device), -1)  # [B, nc, 2c]
    kq = kp.unsqueeze(2)
    raw_ok = (kq >= 0) & (kq <= qp.unsqueeze(-1)) & (kq > qp.unsqueeze(-1) - attn.window)  # [B, nc, c, 2c]
    kw = windows(k_all, 0)  # [B, nc, G, D, 2c]: each sub-chunk's keys, transposed
    vw = kw if v_all is k_all else windows(v_all, 0)
    qc = _frame(q, 0, tail, 0).view(B, nc, c, G, Hg, D).transpose(2, 3).reshape(B, nc, G, c * Hg, D)
    scores = [torch.matmul(qc, kw).float().view(B, nc, G, c, Hg, 2 * c)]
    masks = [raw_ok.view(B, nc, 1, c, 1, 2 * c)]

    def per_query(t: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> [B, nc, 1, c, ...]
        t = _frame(t, 0, tail, 0)
        return t.view(B, nc, 1, c, *t.shape[2:])

    head = None  # the entries every query sees: (out, lse) [B, T, H, D | 1]
    picked = own = None
    if ent is not None and ent.dim() == 4:  # CSA: each query's picked entries [B, T, k, D]
        picked = ent.to(q.dtype)
        scores.append(per_query(torch.einsum("bthd,btkd->bthk", q, picked).float()))
        masks.append(per_query(sel).unsqueeze(-2))
    elif ent is not None:  # HCA: entries [B, N, D], block ends sel [B, N]
        e = ent.to(q.dtype)
        first = pos[:, :1].to(sel.device)
        lo = int(((sel >= 0) & (sel <= first)).sum(1).min())
        if lo:
            parts = [_dense_lse(q[b].reshape(T * H, D), e[b, :lo], attn.softmax_scale) for b in range(B)]
            head = (torch.stack([p[0] for p in parts]).view(B, T, H, D),
                     torch.stack([p[1] for p in parts]).view(B, T, H, 1))
        own = e[:, lo:]
        if own.shape[1]:
            s_own = torch.matmul(q.reshape(B, T * H, D), own.transpose(1, 2)).float().view(B, T, H, -1)
            ends = sel[:, lo:].to(pos.device).unsqueeze(1)
            scores.append(per_query(s_own))
            masks.append(per_query((ends >= 0) & (ends <= pos.unsqueeze(-1))).unsqueeze(-2))
        else:
            own = None
    shape = (B, nc, G, c, Hg)
    mask = torch.cat([m.expand(*shape, sc.shape[-1]) for m, sc in zip(masks, scores, strict=True)], dim=-1)
    logits = (torch.cat(scores, dim=-1) * attn.softmax_scale).masked_fill_(~mask, float("-inf"))
    K = logits.shape[-1]
    if attn.attn_sink is not None:  # sink: one more logit per head, with a zero value
        sink = attn.attn_sink.float().view(1, 1, G, 1, Hg, 1).expand(B, nc, G, c, Hg, 1)
        logits = torch.cat([logits, sink], dim=-1)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # every row holds its own key: finite
    probs = torch.exp(logits[..., :K] - lse).to(vw.dtype)
    out = torch.matmul(probs[..., :2 * c].reshape(B, nc, G, c * Hg, 2 * c), vw.transpose(-1, -2))
    out = out.view(B, nc, G, c, Hg, D).float()
    if picked is not None:
        p_sel = probs[..., 2 * c:][:, :, 0]  # [B, nc, c, H, k]
        out = out + torch.einsum("bnchk,bnckd->bnchd", p_sel, per_query(picked)[:, :, 0]).unsqueeze(2).float()
    elif own is not None:
        p_own = probs[..., 2 * c:].reshape(B, nc * c * H, -1)  # rows (position, head) as q's
        out = out + torch.matmul(p_own, own).view(B, nc, 1, c, H, D).float()
    out = out.transpose(2, 3).reshape(B, nc * c, H, D)[:, :T]
    if head is not None:  # merge the unmasked entries' softmax by log-sum-exp
        lse = lse.transpose(2, 3).reshape(B, nc * c, H, 1)[:, :T]
        out_h, lse_h = head
        both = torch.logaddexp(lse, lse_h)
        out = out * torch.exp(lse - both) + out_h * torch.exp(lse_h - both)
    return out.to(q.dtype)
