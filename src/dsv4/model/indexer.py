"""Lightning indexer of CSA layers and its DSA-style training loss (SPEC 1.3).

The indexer scores every complete compressed block s for query t with a few cheap heads:

    I[t, s] = sum_h w_h(x_t) * ReLU(q_{t,h} . K^I_s)          (V4 paper eq. 14-16)

q_{t,h} comes from the low-rank query c_t (the attention's `wq_a -> q_norm` output) by
its own `wq_b`, RoPE'd at t; K^I are the indexer's own compressed keys (a Compressor at
index_head_dim with the layer's ratio); w_h(x) = x W_w * index_head_dim^-0.5 * n_heads^-0.5
(DeepSeek folds the softmax scale into the weights). The top-`index_topk` causally
visible blocks are the ones the main attention reads.

DeepSeek's reference additionally applies a Hadamard rotation and FP4 quantisation to
q and K^I; the rotation is orthogonal (dot products unchanged) and the quantisation is
an inference-time simulation, so neither is modelled here.

Training (DeepSeek V3.2 DSA): the target p_t is the main attention's probability of each
candidate block, summed over heads and L1-normalised over the candidates; the loss is
KL(p_t || softmax(I_t)) over the candidates (dense stage: all complete blocks; sparse
stage: the selected ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig
from dsv4.model.compressor import Compressor
from dsv4.model.rope import apply_rope

# `Indexer.select` scores about this many (query, block) pairs at once: [queries, heads, N] in
# cache at long contexts (16 queries at N = 16k), few Python steps at short ones
SCORE_BLOCK = 1 << 18
# `topk_earliest` on rows of >= 4 k groups of this many blocks: by group maxima first
TOPK_GROUP = 64


class Indexer(nn.Module):
    def __init__(self, cfg: ModelConfig, q_in_dim: int, ratio: int):
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.wq_b = nn.Linear(q_in_dim, self.n_heads * self.head_dim, bias=False)
        self.weights_proj = nn.Linear(cfg.dim, self.n_heads, bias=False)
        self.compressor = Compressor(cfg.dim, self.head_dim, ratio, cfg.norm_eps)
        self.weight_scale = self.head_dim ** -0.5 * self.n_heads ** -0.5

    def _queries(self, x: torch.Tensor, qr: torch.Tensor, freqs: torch.Tensor, w: torch.Tensor | None = None):
        """(rotated index queries [B, T, H, d], unscaled head weights [B, T, H]) of x/qr; w: x's
        weights_proj projection if already made (the one-token decode's packed GEMV)."""
        B, T, _ = x.shape
        q = apply_rope(self.wq_b(qr).view(B, T, self.n_heads, self.head_dim), freqs)
        return q, self.weights_proj(x) if w is None else w

    def scores(self, x: torch.Tensor, qr: torch.Tensor, keys: torch.Tensor,
               freqs: torch.Tensor) -> torch.Tensor:
        """Index scores [B, T, N] (fp32) of queries x/qr [B, T, *] (rotations freqs [T, r/2])
        against compressed index keys [B, N, index_head_dim]."""
        B, T, _ = x.shape
        q, w = self._queries(x, qr, freqs)
        w = w * self.weight_scale
        dots = torch.matmul(q.reshape(B, T * self.n_heads, self.head_dim), keys.to(q.dtype).transpose(1, 2))
        dots = dots.relu_().view(B, T, self.n_heads, -1)  # (autograd: not the int16 `_relu_`)
        # the head-weighted sum as a matmul: no [B, T, H, N] temporary (DeepSeek also scores in bf16)
        return torch.matmul(w.unsqueeze(-2).to(dots.dtype), dots).squeeze(-2).float()

    @torch.no_grad()
    def select(self, x: torch.Tensor, qr: torch.Tensor, keys: torch.Tensor, freqs: torch.Tensor,
               q_pos: torch.Tensor, ends: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference top-k without the [B, T, N] score tensor: (idx, ok) [B, T, k'] as
        `topk_indices(scores(...), visible, k)` would give, for queries at q_pos [B|1, T]
        against blocks ending at ends [B|1, N] (-1: not held); a block is visible iff
        0 <= end <= query position.

        The scores are made for a few queries at a time (SCORE_BLOCK), so that the dot products (the
        matmul's dtype: bf16 under autocast, DeepSeek's indexer is low precision too) and their
        head-weighted sum (fp32) stay in cache, and the top-k of each block is taken right
        away. The causal mask touches only the blocks that complete inside the query block.
        With N <= k every visible block is picked and nothing is scored (CSA = dense)."""
        B, T, _ = x.shape
        N = keys.shape[1]
        q_pos, ends = q_pos.expand(B, -1), ends.to(q_pos.device).expand(B, -1)
        if N <= k:
            idx = torch.arange(N, device=x.device).expand(B, T, N)
            return idx, (ends.unsqueeze(1) <= q_pos.unsqueeze(2)) & (ends.unsqueeze(1) >= 0)
        H = self.n_heads
        q, w = self._queries(x, qr, freqs)
        w = w.float() * self.weight_scale  # [B, T, H]
        kt = keys.to(q.dtype).transpose(1, 2)  # [B, d, N]
        idx = torch.empty(B, T, k, dtype=torch.long, device=x.device)
        ok = torch.empty(B, T, k, dtype=torch.bool, device=x.device)
        held = ends >= 0
        step = max(SCORE_BLOCK // N, 8)
        starts = torch.arange(0, T, step, device=x.device)
        for b in range(B):
            # blocks complete at a step's first query are visible to all of its queries (one
            # count per step, made at once: the causal mask touches only the blocks after them)
            los = (held[b] & (ends[b] <= q_pos[b, starts].unsqueeze(1))).sum(1).tolist()
            for s, lo in zip(starts.tolist(), los, strict=True):
                e = min(s + step, T)
                # all heads in one matmul (one packing of the keys), then the fp32 weighted sum
                dots = torch.matmul(q[b, s:e].reshape(-1, self.head_dim), kt[b]).view(e - s, H, N)
                acc = head_scores(dots, w[b, s:e])
                tail = ends[b, lo:]
                vis = (tail >= 0) & (tail <= q_pos[b, s:e].unsqueeze(1))
                acc[:, lo:].masked_fill_(~vis, float("-inf"))
                vals, idx[b, s:e] = topk_earliest(acc, k)
                ok[b, s:e] = vals > float("-inf")
        return idx, ok


def head_scores(dots: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The index scores of a block of queries from their per-head dots [r, H, N] and head
    weights w [r, H] -> [r, N] fp32, eager or compiled (`set_score_compile`). Every inference
    path (`select`, the one-token decode pick) goes through here, so all pick on equal bits."""
    return _SCORE.get("fn", _head_scores)(dots, w)


def _head_scores(dots: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_h w_h ReLU(dots_h): dots [r, H, N] (the matmul's dtype), w [r, H] fp32 -> [r, N] fp32,
    eagerly: ReLU in place (on the bits for 16-bit dots), then one addcmul per head."""
    dots = _relu_(dots)
    acc = dots[:, 0] * w[:, :1]
    for h in range(1, dots.shape[1]):
        acc.addcmul_(dots[:, h], w[:, h:h + 1])
    return acc


def head_scores_fused(dots: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`_head_scores` written for inductor (`set_score_compile`): fp32 ReLU, then a multiply and
    an add per head, all in one pass. Its bits differ from the eager addcmul's in the last place,
    but not with the shapes (one query or many, any block count: tests/test_infer_prefill.py),
    and the switch is process-wide, so prefill and decode steps still pick alike."""
    d = dots.float().relu()
    acc = d[:, 0] * w[:, :1]
    for h in range(1, d.shape[1]):
        acc = acc + d[:, h] * w[:, h:h + 1]
    return acc


_SCORE: dict = {}  # "fn": the compiled `head_scores_fused` (opt-in)


def set_score_compile(enabled: bool) -> None:
    """Compile the index scores' head sum for `Indexer.select` (opt-in, inference;
    `Engine(compile=True)`): one fused pass instead of ~9 over each [queries, heads, blocks]
    block of dots, ~25% less time for the part of a long prefill that grows with the context
    squared. ~10-15 s to compile (dynamic shapes; one-query decode steps compile once more)."""
    _SCORE.clear()
    if enabled:
        _SCORE["fn"] = torch.compile(head_scores_fused, dynamic=True)


def _relu_(t: torch.Tensor) -> torch.Tensor:
    """In-place ReLU; of 16-bit floats on their bits (sign bit set = negative int16 -> 0 = +0.0):
    an integer clamp, where a bf16 relu_ converts every element to fp32 and back."""
    if t.dtype in (torch.bfloat16, torch.float16):
        t.view(torch.int16).clamp_min_(0)
        return t
    return t.relu_()


@torch.no_grad()
def tie_broken_keys(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like the scores (invisible blocks: -inf), equal scores ordered
    earliest block first.

    Ties are common (ReLU makes many scores exactly 0; bf16 rounds others together) and
    topk's own tie-break could depend on N, i.e. on how many tokens follow in the same
    forward: a cached decoder would then read other blocks than a full recompute. A topk on
    the keys is a stable descending sort's first k."""
    n = scores.shape[-1]
    f = scores.detach().float().masked_fill(~visible, float("-inf"))
    return _order_keys(f, torch.arange(n, device=scores.device), n)


def _order_keys(f: torch.Tensor, pos: torch.Tensor, top: int) -> torch.Tensor:
    """Keys of fp32 values f (overwritten) at positions pos (0 <= pos < top, broadcast to f):
    (order-preserving int32 image of the value) * 2^32 + (top-1-pos). In place where possible:
    big int64 temporaries cost more than the arithmetic."""
    f.add_(0.0)  # -0.0 -> +0.0, so that both zeros tie
    bits = f.view(torch.int32)
    bits ^= (bits >> 31) & 0x7FFFFFFF  # negative floats: flip the magnitude bits -> monotone ints
    keys = bits.to(torch.int64)
    keys <<= 32
    return keys.bitwise_or_(top - 1 - pos)


def topk_indices(scores: torch.Tensor, visible: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [B, T, k'], ok [B, T, k']) with k' = min(k, N): the highest-scoring visible blocks
    (ties: earliest first), and whether each pick is a real, causally visible block (False
    where fewer than k are complete yet)."""
    k = min(k, scores.shape[-1])
    _, idx = topk_earliest(scores.detach().float().masked_fill(~visible, float("-inf")), k)
    return idx, visible.expand_as(scores).gather(-1, idx)


def topk_earliest(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest of s [..., N] (fp32, -inf = not a candidate), in the
    order of `tie_broken_keys`: value descending, equal values earliest first.

    Long rows go by groups (`_topk_grouped`); short ones by a plain top-(k+1), and only the
    rows whose k-th value ties with one left out are redone, on float keys that rank the tied
    value's earliest cells right after the larger values (keys over the whole row cost ~10x)."""
    s, n = s.float(), s.shape[-1]  # (a no-op for fp32: the keys need fp32 bits)
    if n >= 4 * k * TOPK_GROUP:
        return _topk_grouped(s, k)
    if n <= k:
        vals, idx = s.topk(k, dim=-1)
    else:  # one more than asked: a k-th value tied with the (k+1)-th one is a tie left out
        vals, idx = s.topk(k + 1, dim=-1)
        amb = vals[..., k - 1] == vals[..., k]  # -inf ties too: the picks are then the earliest
        vals, idx = vals[..., :k], idx[..., :k]
        if amb.any():
            rows, tied = s[amb], vals[amb][:, k - 1:k]
            # all keys distinct and exact in fp32 (n < 2^22 here)
            rev = torch.arange(n - 1, -1, -1, dtype=s.dtype, device=s.device)
            keys = torch.where(rows > tied, rev + n, torch.where(rows == tied, rev, -1.0))
            fix = keys.topk(k, dim=-1).indices
            idx[amb] = fix
            vals[amb] = rows.gather(-1, fix)
    # the order of the tie-broken keys (value descending, ties earliest first), so that sums
    # over the picks run in one order whichever way they were found
    idx, perm = idx.sort(dim=-1)
    vals, order = vals.gather(-1, perm).sort(dim=-1, descending=True, stable=True)
    return vals, idx.gather(-1, order)


def _topk_grouped(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk_earliest` of long rows with one pass over them (a float topk costs ~8 max passes
    and degrades on the many tied zeros): the maxima of groups of TOPK_GROUP cells, the k best
    groups by (maximum, earliest group), then the k best cells by (value, earliest) among those
    groups' cells. Every cell of the row's top k is in such a group: a group ranked below k
    others holds no cell ranking above those groups' maxima."""
    n, g = s.shape[-1], TOPK_GROUP
    full = n // g * g
    gmax = s[..., :full].unflatten(-1, (n // g, g)).amax(-1)
    if full < n:
        gmax = torch.cat([gmax, s[..., full:].amax(-1, keepdim=True)], dim=-1)
    best = _order_keys(gmax, torch.arange(gmax.shape[-1], device=s.device), gmax.shape[-1]).topk(k, dim=-1)
    cand = (best.indices.unsqueeze(-1) * g + torch.arange(g, device=s.device)).flatten(-2)
    vals = s.gather(-1, cand.clamp_max(n - 1))
    if full < n:  # the short last group's missing cells: last of all (k groups hold >= k cells)
        vals.masked_fill_(cand >= n, float("-inf"))
    at = _order_keys(vals.clone(), cand, full + g).topk(k, dim=-1).indices
    return vals.gather(-1, at), cand.gather(-1, at)


def topk_select(scores: torch.Tensor, visible: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [B, T, N]: the top-k causally visible blocks per query (fewer if fewer are visible)."""
    idx, ok = topk_indices(scores, visible, k)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, ok)


def indexer_kl(attn_mass: torch.Tensor, scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Mean over queries of KL(p_t || softmax(I_t)) restricted to each query's candidates.

    attn_mass [B, T, N]: main-attention probabilities summed over heads (no grad);
    scores [B, T, N]: index scores I; candidates [B, T, N] bool. Queries without any
    candidate (no complete block yet) are left out.
    """
    p = attn_mass.detach().float() * candidates
    total = p.sum(-1, keepdim=True)
    valid = candidates.any(-1) & (total.squeeze(-1) > 0)
    target = p / total.clamp_min(1e-30)
    # rows without candidates get finite dummy logits so log_softmax never sees an all -inf row
    logits = scores.float().masked_fill(~candidates, float("-inf")).masked_fill(~valid.unsqueeze(-1), 0.0)
    logq = F.log_softmax(logits, dim=-1)
    per_entry = torch.xlogy(target, target) - target * logq.masked_fill(~candidates, 0.0)
    per_entry = torch.where(candidates, per_entry, 0.0)
    return (per_entry.sum(-1) * valid).sum() / valid.sum().clamp_min(1)  # 0 when no query has candidates
