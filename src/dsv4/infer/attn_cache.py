"""Cached attention for every attention type of the model (SPEC 1.3, 5).

`AttentionCache.forward(attn, x, ctx)` is what `Attention.forward` calls when `ctx.cache`
is set: the same math as the module's full-sequence path, computed for a ragged chunk of
new tokens (`ctx.positions` [B, T], per-token rotations in `ctx.freqs`/`ctx.freqs_compress`)
against cached state, reusing the module's own projections (`_query`, `_output`, the
compressor's `project`/`pool`/`finish`, the indexer's `scores`):

  - raw keys: every past token (`DenseStore`) or, with a sliding window, a ring of the last
    `window + slack` tokens (`RingStore`); V4 shares one KV head and stores K = V once;
  - compressed entries (CSA ratio 4 with overlapping windows, HCA other ratios): the
    compressor's per-token (kv, score) projections are kept for the blocks not yet complete
    (the partial-block state) and pooled into an entry when a block completes
    (`CompressedCache`); an entry is visible once its block is complete;
  - the lightning indexer's compressed keys: a second `CompressedCache`; the indexer's
    top-k over the visible entries (`Indexer.select`) picks what each query reads (stage
    "sparse").

One fp32 softmax over [raw keys | compressed entries | sink], as in training. A long
prompt chunk on a sliding-window layer goes through `windowed.windowed_attend` (queries by
sub-chunks, HCA entries by row blocks): the same math without the chunk-squared terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dsv4.infer.attn_decode import can_decode_one, decode_one
from dsv4.infer.cache import CompressedCache, DenseStore, RingStore, causal_mask
from dsv4.infer.windowed import windowed_attend
from dsv4.model.attention import MIN_CHUNK
from dsv4.model.rope import apply_rope


class AttentionCache:
    def __init__(self, owner, attn, slots: int, max_len: int, slack: int):
        self.owner, self.attn = owner, attn
        w = attn.window
        self.window = w if 0 < w < max_len else 0  # a window as long as the context is no window
        self.raw = RingStore(owner, slots, w + slack) if self.window else DenseStore(owner, slots, max_len)
        # query sub-chunk of a long chunk (`windowed_attend`): >= the ring, so the ring's cells
        # fit in front of the first sub-chunk, and >= the window, so each sub-chunk's keys are
        # its own and the previous sub-chunk's
        self.sub = max(w + slack, MIN_CHUNK)
        self.cmp = self.idx = None
        if attn.compressor is not None:
            span = 2 * attn.ratio if attn.compressor.overlap else attn.ratio
            self.cmp = CompressedCache(slots, attn.ratio, max_len, span, slack)
            if attn.indexer is not None:
                self.idx = CompressedCache(slots, attn.ratio, max_len, span, slack)

    def truncate(self, slot: int, length: int) -> None:
        for c in (self.raw, self.cmp, self.idx):
            if c is not None:
                c.truncate(slot, length)

    # ---- the forward pass ------------------------------------------------------------------
    def forward(self, attn, x: torch.Tensor, ctx) -> torch.Tensor:
        if can_decode_one(self, attn, x):  # single-stream decode: the short path, same maths
            return decode_one(self, attn, x, ctx)
        B, T, _ = x.shape
        pos = ctx.positions
        freqs = attn._freqs(ctx)  # per token [B, T, r/2]
        q, qr, k, v = attn._qkv(x, freqs)  # the model's own projection + RoPE
        k_all, v_all, k_pos = self.raw.append(k, None if v is k else v, pos)
        if attn.plain:
            raw_mask = causal_mask(pos, k_pos, self.window)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2), attn_mask=raw_mask,
                enable_gqa=attn.n_kv != attn.n_heads).transpose(1, 2)
        else:
            ent = sel = None
            if self.cmp is not None:
                ent, sel = self._compressed(attn, x, qr, freqs, pos)
            if self.window and T >= 2 * self.sub:  # a long prompt chunk: window by sub-chunks
                out = windowed_attend(attn, q, k_all, v_all, k_pos, pos, self.sub, ent, sel)
            else:
                if ent is not None and ent.dim() == 3:  # dense entries: sel = their block ends
                    sel = causal_mask(pos, sel)[:, 0]
                raw_mask = causal_mask(pos, k_pos, self.window)[:, 0]  # [B, T, K]
                out = self._attend(attn, q, k_all, v_all, raw_mask, ent, sel)
        if attn.cfg.shared_kv:
            out = apply_rope(out, freqs, inverse=True)  # undo the rotation V carried
        return attn._output(out)

    def _attend(self, attn, q, k_all, v_all, raw_mask, ent, allowed) -> torch.Tensor:
        """[raw | compressed | sink] attention: q [B, T, H, D], keys [B, K, G, D] -> [B, T, H, D]."""
        B, T, H, D = q.shape
        G = k_all.shape[2]
        Hg = H // G
        qg = q.view(B, T, G, Hg, D).permute(0, 2, 3, 1, 4)  # [B, G, Hg, T, D]
        kg = k_all.permute(0, 2, 1, 3).unsqueeze(2)  # [B, G, 1, K, D]
        vg = kg if v_all is k_all else v_all.permute(0, 2, 1, 3).unsqueeze(2)
        scores = torch.matmul(qg, kg.transpose(-1, -2)).float()  # [B, G, Hg, T, K]
        mask = raw_mask[:, None, None]
        Kr = scores.shape[-1]
        sparse = ent is not None and ent.dim() == 4  # CSA: each query's own top-k entries
        if ent is not None:  # G == 1 (compressed layers share one KV head)
            e = ent.to(qg.dtype)
            if sparse:  # e [B, T, k, D]: O(T k) instead of scoring all N entries
                s_cmp = torch.einsum("bghtd,btkd->bghtk", qg, e).float()
            else:  # HCA (or a dense stage): every entry, masked causally
                s_cmp = torch.matmul(qg.reshape(B, G * Hg * T, D), e.transpose(1, 2)).float()
            scores = torch.cat([scores, s_cmp.view(B, G, Hg, T, -1)], dim=-1)
            mask = torch.cat([mask.expand(-1, -1, -1, -1, -1), allowed[:, None, None]], dim=-1)
        K = scores.shape[-1]
        scores = (scores * attn.softmax_scale).masked_fill(~mask, float("-inf"))
        if attn.attn_sink is not None:  # sink: one more logit per head, with a zero value
            sink = attn.attn_sink.float().view(1, G, Hg, 1, 1).expand(B, G, Hg, T, 1)
            probs = torch.cat([scores, sink], dim=-1).softmax(dim=-1)[..., :K]
        else:
            probs = scores.softmax(dim=-1)
        pv = probs.to(vg.dtype)
        out = torch.matmul(pv[..., :Kr], vg)  # [B, G, Hg, T, D]
        if K > Kr and sparse:
            out = out + torch.einsum("bghtk,btkd->bghtd", pv[..., Kr:], e)
        elif K > Kr:
            out = out + torch.matmul(pv[..., Kr:].reshape(B, G * Hg * T, -1), e).view_as(out)
        return out.permute(0, 3, 1, 2, 4).reshape(B, T, H, D)

    # ---- compressed entries ------------------------------------------------------------------
    def _compressed(self, attn, x, qr, freqs, pos):
        """After adding this chunk's complete blocks: (entries [B, N, d], their block end positions
        [B, N]) for dense reading (HCA), or (picked entries [B, T, k, d], ok [B, T, k]) (CSA)."""
        rows = self.owner.rows
        ent = self._update(self.cmp, attn.compressor, x, pos, rows)
        if ent is None:  # no block of any row is complete yet
            if self.idx is not None:
                self._update(self.idx, attn.indexer.compressor, x, pos, rows)
            return None, None
        ends = self.cmp.block_positions(rows)
        if self.idx is None or attn.indexer_stage != "sparse":
            if self.idx is not None:  # keep the indexer's keys current for a later stage switch
                self._update(self.idx, attn.indexer.compressor, x, pos, rows)
            return ent, ends
        keys = self._update(self.idx, attn.indexer.compressor, x, pos, rows)
        # Gather each query's top-k entries ([B, T, k, d], validity [B, T, k]) rather than
        # masking all N: attention to the selected blocks costs O(T k), not O(T N) (CSA).
        idx, ok = attn.indexer.select(x, qr, keys, freqs, pos, ends, attn.indexer.topk)
        B, T, k = idx.shape
        picked = ent.gather(1, idx.reshape(B, T * k, 1).expand(-1, -1, ent.shape[-1]))
        return picked.view(B, T, k, ent.shape[-1]), ok

    def _update(self, cache: CompressedCache, comp, x, pos, rows) -> torch.Tensor:
        kv, score = comp.project(x)  # per token, fp32 [B, T, coff*d]
        for b, blocks, raw in cache.push(rows, pos, kv=kv, score=score):
            cache.store(int(rows[b]), blocks, self._pool(comp, blocks, raw["kv"], raw["score"]))
        return cache.read(rows)

    def _pool(self, comp, blocks, kv, score) -> torch.Tensor:
        """Entries [n, d] of consecutive complete blocks from their raw spans [n, span, coff*d]."""
        r, d = comp.ratio, comp.head_dim
        if comp.overlap:  # span = [block i-1 | block i]; block i-1's Ca half feeds block i
            prev_kv = prev_score = None
            if int(blocks[0]) > 0:
                prev_kv = kv[:1, :r, :d]
                prev_score = score[:1, :r, :d] + comp.ape[:, :d]
            pooled = comp.pool(kv[:, r:].unsqueeze(0), score[:, r:].unsqueeze(0), prev_kv, prev_score)
        else:
            pooled = comp.pool(kv.unsqueeze(0), score.unsqueeze(0))
        block_freqs = self.owner.freqs_compress[blocks * r]  # rotation at each block's start
        return comp.finish(pooled, block_freqs)[0]
