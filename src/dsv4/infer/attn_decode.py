"""One token of one sequence through a V4 attention layer's cache (single-stream decode).

`AttentionCache.forward` handles ragged batches of any chunk length; for the commonest call,
one new token of one slot on a sliding-window layer with one shared KV head (every V4
layer), most of its ~60 small ops are bookkeeping whose answer is known: this path computes
the same attention with about a third of them.

  - The new key is written into the ring first and the whole ring row is read as a view
    (no concatenation of old and new keys); a cell is visible iff its position lies in
    (p - window, p] and is >= 0. The cell the new key overwrites held position
    p - capacity, outside the window (capacity >= window): nothing the query needs is lost.
  - Every compressed entry a slot holds is complete at its last position <= p (blocks are
    stored when their last token arrives, and rollback drops the ones past the kept
    length), so the one query sees all of them: no causal mask over entries, and entries
    are a view of the slot's row. CSA with more entries than `index_topk` reads the
    indexer's picks: `Indexer.select`'s scores (`head_scores`) and order (value descending,
    ties earliest first: a stable descending sort); with fewer entries than `index_topk` it
    reads them all.
  - Raw keys, compressed entries and (for the sink) a zero row are one key = value matrix,
    so scores and the weighted sum are one matmul each and the sink logit is one more
    column: a single fp32 softmax over [raw | compressed | sink], as in training.
  - With prepacked weights (`Engine(prepack=True)`, infer/prepack.py) every projection of the
    layer input -- query, key/value, both compressors' kv and gate, the indexer's head
    weights -- is one GEMV whose output is split into views (the same values).
"""

from __future__ import annotations

import torch

from dsv4.model.indexer import head_scores
from dsv4.model.packed import packed_outputs
from dsv4.model.rope import apply_rope


def can_decode_one(cache, attn, x: torch.Tensor) -> bool:
    """Whether `decode_one` applies: one token of one slot, a window ring, one KV head, on the
    CPU (like the other one-token paths; its host reads would be device syncs elsewhere, and
    it has not been measured on a GPU)."""
    return (x.shape[0] == 1 and x.shape[1] == 1 and x.device.type == "cpu" and bool(cache.window)
            and not attn.plain and attn.n_kv == 1 and cache.owner.row_block is not None)


def decode_one(cache, attn, x: torch.Tensor, ctx) -> torch.Tensor:
    """`AttentionCache.forward` for x [1, 1, dim] at position ctx.positions [1, 1]."""
    pos = ctx.positions
    p = int(pos[0, 0])
    slot = cache.owner.row_block.start
    freqs = attn._freqs(ctx)
    pre = packed_outputs(attn, "x", x)  # every projection of x in one GEMV (prepacked weights)
    q, qr, k, _ = attn._qkv(x, freqs, pre[:4] if pre is not None else None)  # k is v (shared KV)
    ring = cache.raw.ring
    ring.write_one(slot, p, k=k)
    keys = ring.data["k"][slot, :, 0]  # [C, D], a view
    if keys.dtype != q.dtype:  # a ring made by a bf16 prefill: the new key at full precision
        keys = keys.to(q.dtype)  # (the general path reads it from the chunk, not the ring)
        keys[p % ring.capacity] = k[0, 0, 0]
    cell_pos = ring.pos[slot]
    # outside the window, empty (-1) or stale (past p: rolled-back drafts)
    hidden = ((cell_pos <= max(p - cache.window, -1)) | (cell_pos > p)).to(q.device)
    ent = _entries(cache, attn, x, qr, freqs, slot, p, pre) if cache.cmp is not None else None
    parts = [keys]
    if ent is not None:
        parts.append(ent.to(q.dtype))
    sink = attn.attn_sink
    if sink is not None:
        parts.append(q.new_zeros(1, q.shape[-1]))  # the sink's value: zero
    kv = torch.cat(parts) if len(parts) > 1 else parts[0]
    qh = q[0, 0]  # [H, D]
    scores = torch.mm(qh, kv.t()).float().mul_(attn.softmax_scale)  # [H, C (+ N) (+ 1)]
    scores[:, :keys.shape[0]].masked_fill_(hidden, float("-inf"))
    if sink is not None:
        scores[:, -1] = sink.float()
    out = torch.mm(scores.softmax(dim=-1).to(kv.dtype), kv).view(1, 1, *qh.shape)
    if attn.cfg.shared_kv:
        out = apply_rope(out, freqs, inverse=True)  # undo the rotation V carried
    return attn._output(out)


def _entries(cache, attn, x, qr, freqs, slot: int, p: int, pre: list | None) -> torch.Tensor | None:
    """The compressed entries the query at p reads, [n, d] (None before the first block),
    after adding the block this token completes; the indexer's keys are kept current.
    pre: x's projections from the packed GEMV (`attn_input_weights` order) or None."""
    ent = _push(cache, cache.cmp, attn.compressor, x, slot, p, pre and pre[4:6])
    keys = None
    if cache.idx is not None:
        keys = _push(cache, cache.idx, attn.indexer.compressor, x, slot, p, pre and pre[6:8])
    if ent is None or keys is None or attn.indexer_stage != "sparse" or ent.shape[0] <= attn.indexer.topk:
        return ent  # HCA, the dense stage, or no more blocks than the indexer picks: all of them
    w = pre[8] if pre is not None else None
    return ent.index_select(0, _pick(attn.indexer, x, qr, keys, freqs, w))  # every held block is visible


def _pick(indexer, x, qr, keys, freqs, w=None) -> torch.Tensor:
    """`Indexer.select` for one query that sees all N > k blocks: the index scores with the
    same `head_scores` as its inner loop (so the same fp32 values), the top-k in the order of
    `topk_earliest` (value descending, ties earliest first) as a stable descending sort, one
    op for any N (a Python sort of the host floats took 36 us at N = 256, 167 us at 1024)."""
    q, w = indexer._queries(x, qr, freqs, w)  # [1, 1, H, d], [1, 1, H]
    w = w[0].float() * indexer.weight_scale  # [1, H]
    H, N = indexer.n_heads, keys.shape[0]
    dots = torch.matmul(q[0].reshape(-1, indexer.head_dim), keys.to(q.dtype).t()).view(1, H, N)
    scores = head_scores(dots, w)[0]
    return torch.sort(scores, descending=True, stable=True).indices[:indexer.topk]


def _push(cache, store, comp, x, slot: int, p: int, pre=None) -> torch.Tensor | None:
    """Add this token's (kv, score) to `store`, pooling the block it completes (when
    (p + 1) % ratio == 0) from the span's features in the ring (the last `span` positions,
    zeros before position 0), -> the slot's entries, a view (None before the first block).
    `CompressedCache.push` for one token without its per-row bookkeeping. pre: x's (wkv,
    wgate) projections made already (the packed GEMV), else `comp.project` makes them."""
    # [1, 1, coff*d] fp32, as `Compressor.project` returns them
    kv, score = comp.project(x) if pre is None else (pre[0].float(), pre[1].float())
    raw = store.raw
    raw.write_one(slot, p, kv=kv, score=score)
    r = store.ratio
    if (p + 1) % r == 0:
        first = p + 1 - store.span
        cells = torch.arange(max(first, 0), p + 1) % raw.capacity  # held: capacity >= span + ratio
        feats = [raw.data[n][slot, cells] for n in ("kv", "score")]
        if first < 0:  # the overlapping span of block 0 reaches before the sequence start
            feats = [torch.cat([f.new_zeros(-first, f.shape[-1]), f]) for f in feats]
        store.store_one(slot, p // r, pool_one(cache, comp, p // r, feats[0], feats[1]))
    n = int(store.count[slot])
    return store.entries[slot, :n] if n else None


def pool_one(cache, comp, block: int, kv: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """`AttentionCache._pool` of one block from its raw span kv, score [span, coff*d] (zeros
    before position 0) -> its entry [d]: the same elementwise sums and the same softmax and sum
    over the span (the same kernels on the same layout, so the same bits), without the batch
    dimensions, the carried-block tensors and the index tensors of the general path. With
    overlap the span is [block - 1 | block]: block - 1's first half (none for block 0: -inf
    scores, as the general path's missing predecessor) and this block's second half."""
    r, d = comp.ratio, comp.head_dim
    ape = comp.ape
    if comp.overlap:
        kv = torch.cat([kv[:r, :d], kv[r:, d:]])
        score = torch.cat([score[:r, :d] + ape[:, :d], score[r:, d:] + ape[:, d:]])
        if block == 0:
            score[:r] = float("-inf")
    else:
        score = score + ape
    pooled = (kv * score.softmax(dim=0)).sum(dim=0)
    freqs = cache.owner.freqs_compress[block * r:block * r + 1]  # rotation at the block's start
    return comp.finish(pooled.view(1, 1, -1), freqs)[0, 0]
