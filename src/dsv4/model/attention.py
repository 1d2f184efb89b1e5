"""Causal self-attention: the baseline MHA/GQA and V4's hybrid attention (SPEC 1.3).

Baseline (every switch off): multi-head (or grouped-query) attention, RoPE on the last
`rope_dim` dims of each head, PyTorch SDPA with a causal mask.

V4 switches (names as in DeepSeek's config; facts from its V4 inference code):
  - `q_lora_rank`: low-rank query  x -> wq_a -> q_norm (RMSNorm) -> wq_b;  the rank-r
    vector ("qr") also feeds the lightning indexer.
  - `shared_kv`: MQA with ONE projection `wkv` -> `kv_norm` used as both key and value
    (K = V); queries RMS-normalised per head (no weight); RoPE on the last rope dims of
    q and kv; because V carries the rotation too, the output's rope dims get the inverse
    rotation at the query position (V4: relative-position output).
  - `attn_sink`: a learned per-head logit in the softmax denominator with a zero value.
  - `o_groups` / `o_lora_rank`: grouped low-rank output: heads split into g groups, each
    projected by its own block of `wo_a` to o_lora_rank, then `wo_b` mixes to dim.
  - `window_size`: every query sees the last window_size raw tokens (itself included).
  - `compress_ratios[layer]`: 0 window only; 4 CSA (overlapping compressor + lightning
    indexer top-k); other r > 0 HCA (non-overlapping compressor, all complete blocks).
    A query at t sees compressed entry i iff its block is complete: (i+1) r <= t+1.

Computation (training / prefill): queries are cut into chunks of C >= window tokens; a
chunk attends to its own and the previous chunk's raw keys (window mask) plus the
compressed entries; one fp32 softmax over [raw | compressed | sink]. HCA and the dense
indexer stage use all N entries under the causal block mask; the sparse stage gathers
each query's k selected columns (softmax width 2C + k + 1) and scatters the weights back
for the value product. Masks are built once per forward and shared by all layers through
`ctx.attn_cache`. Costs: window O(T*2C), compressed O(T*N) for the q.k products.

Cached decoding (later, inference engine) reuses the same pieces: raw K=V ring buffer of
the last window_size tokens; `Compressor.project` per new token, `Compressor.pool` +
`finish` when a block completes (carrying the previous block's Ca half for r = 4);
compressed entries and indexer keys appended per block; `Indexer.select` (the top-k without
a [T, N] score tensor) over the cached index keys. Inference here uses `Indexer.select` too,
so both paths pick alike; training (the KL wants every score) uses `scores` + `topk_indices`.

Indexer training (DSA, V3.2): `set_indexer_stage(model, "dense" | "sparse")`.
"dense": the main attention reads all complete blocks; "sparse" (default): only the
indexer's top-k. In training, the KL(p_t || softmax(I_t)) between the main attention's
head-summed probabilities over the candidates (detached) and the index scores goes to
ctx.aux_losses["indexer"] (mean over CSA layers) and ctx.stats["indexer_kl"]. The indexer
always reads DETACHED inputs, so it learns only from that KL and the main model only from
the LM loss (in the dense stage the training loop freezes everything but the indexers).

Differences from DeepSeek's reference, by design: no FP8/FP4 quantisation simulation or
Hadamard rotation in the indexer (inference-time kernels); the compressor's projections
follow autocast (bf16) while its pooling runs in fp32 (DeepSeek: all fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig
from dsv4.model.compressor import Compressor
from dsv4.model.indexer import Indexer, indexer_kl, topk_indices
from dsv4.model.norm import RMSNorm, rms_normalize
from dsv4.model.rope import apply_rope, rope_frequencies

INDEXER_STAGES = ("dense", "sparse")
MIN_CHUNK = 64  # query chunk floor: tiny windows would otherwise make many tiny matmuls


def set_indexer_stage(model: nn.Module, stage: str) -> None:
    """Switch every CSA layer of `model` to the DSA "dense" warm-up or the "sparse" stage."""
    if stage not in INDEXER_STAGES:
        raise ValueError(f"indexer stage must be one of {INDEXER_STAGES}, got {stage!r}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.indexer_stage = stage


def chunking(T: int, window: int) -> tuple[int, int]:
    """(chunk length C, number of chunks): one chunk unless a window makes chunks pay off."""
    if window <= 0:
        return T, 1
    C = max(window, MIN_CHUNK)
    if T <= 2 * C:
        return T, 1
    return C, -(-T // C)


def window_mask(T: int, C: int, n_chunks: int, window: int, device) -> torch.Tensor:
    """Bool [n_chunks, C, K_raw]: chunk c's query i (position cC+i) may read raw key j.

    With one chunk the keys are positions 0..T-1; with several, chunk c reads positions
    (c-1)C .. (c+1)C-1 (K_raw = 2C; C >= window makes that enough)."""
    c = torch.arange(n_chunks, device=device).view(-1, 1, 1)
    q_pos = c * C + torch.arange(C, device=device).view(1, -1, 1)
    k_raw = T if n_chunks == 1 else 2 * C
    k_pos = c * C - (C if n_chunks > 1 else 0) + torch.arange(k_raw, device=device).view(1, 1, -1)
    ok = (k_pos >= 0) & (k_pos <= q_pos) & (k_pos < T)
    if window > 0:
        ok &= q_pos - k_pos < window
    return ok


def compressed_visible(q_pos: torch.Tensor, n_blocks: int, ratio: int) -> torch.Tensor:
    """Bool [T, N]: entry i is visible at query position t iff its block is complete."""
    return torch.arange(n_blocks, device=q_pos.device).view(1, -1) < ((q_pos + 1) // ratio).view(-1, 1)


def _cached(ctx, key, make):
    cache = getattr(ctx, "attn_cache", None)
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.cfg = cfg
        self.layer_id = layer_id
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.n_kv = 1 if cfg.shared_kv else cfg.kv_heads
        self.ratio = cfg.layer_compress_ratio(layer_id)
        self.window = cfg.window_size
        self.eps = cfg.norm_eps
        self.softmax_scale = self.head_dim ** -0.5
        self.indexer_stage = "sparse"
        H, D = self.n_heads, self.head_dim
        if cfg.q_lora_rank:
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, H * D, bias=False)
        else:
            self.wq = nn.Linear(cfg.dim, H * D, bias=False)
        if cfg.shared_kv:
            self.wkv = nn.Linear(cfg.dim, D, bias=False)
            self.kv_norm = RMSNorm(D, cfg.norm_eps)
        else:
            self.wk = nn.Linear(cfg.dim, self.n_kv * D, bias=False)
            self.wv = nn.Linear(cfg.dim, self.n_kv * D, bias=False)
        if cfg.o_groups:
            self.wo_a = nn.Linear(H * D // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank, bias=False)
            self.wo_b = nn.Linear(cfg.o_groups * cfg.o_lora_rank, cfg.dim, bias=False)
        else:
            self.wo = nn.Linear(H * D, cfg.dim, bias=False)
        self.attn_sink = nn.Parameter(torch.zeros(H)) if cfg.attn_sink else None
        self.compressor = Compressor(cfg.dim, D, self.ratio, cfg.norm_eps) if self.ratio else None
        self.indexer = Indexer(cfg, cfg.q_lora_rank or cfg.dim, self.ratio) if self.ratio == 4 else None
        # the plain causal pattern runs on SDPA exactly as the baseline always did
        self.plain = self.window == 0 and not self.ratio and self.attn_sink is None

    # ---- projections ---------------------------------------------------------------------
    def _freqs(self, ctx) -> torch.Tensor:
        if not self.ratio:
            return ctx.freqs
        f = getattr(ctx, "freqs_compress", None)
        if f is None:  # positions 0..T-1, like ctx.freqs; a cached decoder sets the field itself
            f = rope_frequencies(self.cfg, ctx.freqs.shape[0], ctx.freqs.device, kind="compress")
            if hasattr(ctx, "freqs_compress"):
                ctx.freqs_compress = f
        return f

    def _query(self, x: torch.Tensor, qa: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [B, T, H, D], qr); qa: x's wq_a (or wq) projection if already made."""
        B, T, _ = x.shape
        if self.cfg.q_lora_rank:
            qr = self.q_norm(self.wq_a(x) if qa is None else qa)
            q = self.wq_b(qr)
        else:
            qr, q = x, self.wq(x) if qa is None else qa
        return q.view(B, T, self.n_heads, self.head_dim), qr

    def _qkv(self, x: torch.Tensor, freqs: torch.Tensor, pre: list | None = None) -> tuple[torch.Tensor, ...]:
        """(q [B, T, H, D], qr, k, v [B, T, n_kv, D]) with RoPE applied; k is v under shared_kv.
        pre: x's projections by (wq_a or wq, wkv, wk, wv) made already (None entries: absent),
        from the one-token decode's packed GEMV (infer/prepack.py)."""
        B, T, _ = x.shape
        qa, kv, kk, vv = pre if pre is not None else (None,) * 4
        q, qr = self._query(x, qa)
        if self.cfg.shared_kv:
            q = rms_normalize(q, self.eps)  # per head, no weight
            kv = self.wkv(x) if kv is None else kv
            k = v = apply_rope(self.kv_norm(kv).unsqueeze(2), freqs)  # [B, T, 1, D], K = V
        else:
            kk = self.wk(x) if kk is None else kk
            k = apply_rope(kk.view(B, T, self.n_kv, self.head_dim), freqs)
            v = (self.wv(x) if vv is None else vv).view(B, T, self.n_kv, self.head_dim)
        return apply_rope(q, freqs), qr, k, v

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        """[B, T, H, D] -> [B, T, dim]; grouped low-rank when o_groups (einsum bsgd,grd->bsgr)."""
        B, T = o.shape[:2]
        if not self.cfg.o_groups:
            return self.wo(o.reshape(B, T, -1))
        g, r = self.cfg.o_groups, self.cfg.o_lora_rank
        og = o.reshape(B * T, g, -1).transpose(0, 1)  # [g, BT, H*D/g]
        w = self.wo_a.weight.view(g, r, -1).transpose(1, 2)  # [g, H*D/g, r]
        og = torch.bmm(og, w).transpose(0, 1).reshape(B, T, g * r)
        return self.wo_b(og)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        if getattr(ctx, "cache", None) is not None:  # [serve] cached decoding: dsv4.infer.attn_cache
            return ctx.cache[self.layer_id].forward(self, x, ctx)
        freqs = self._freqs(ctx)
        q, qr, k, v = self._qkv(x, freqs)
        if self.plain:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                enable_gqa=self.n_kv != self.n_heads).transpose(1, 2)
        else:
            out = self._hybrid(x, q, qr, k, v, freqs, ctx)
        if self.cfg.shared_kv:
            out = apply_rope(out, freqs, inverse=True)  # undo the rotation V carried
        return self._output(out)

    # ---- compressed entries and their mask ---------------------------------------------------
    def _compressed(self, x, qr, freqs, ctx) -> dict:
        """Compressed entries and which of them each query reads.

        Returns entries [B, N, D] and either `allowed` [B|1, T, N] (dense: HCA, or the
        dense indexer stage) or `idx`, `ok` [B, T, k] (sparse: the top-k block ids and
        whether each pick is a real, causally visible block); `scores` [B, T, N] (the
        index scores) when the KL loss is wanted."""
        B, T, _ = x.shape
        r = self.ratio
        n = T // r
        out = {"entries": self.compressor(x, freqs[::r])}
        visible = _cached(ctx, ("visible", T, r, x.device),
                          lambda: compressed_visible(torch.arange(T, device=x.device), n, r))
        want_kl = self.indexer is not None and self.training and torch.is_grad_enabled()
        sparse = self.indexer is not None and self.indexer_stage == "sparse"
        if sparse or want_kl:
            xd, qd = x.detach(), qr.detach()  # the indexer learns only from its KL loss
            keys = self.indexer.compressor(xd, freqs[::r])
        if want_kl:
            out["scores"] = scores = self.indexer.scores(xd, qd, keys, freqs)
            if sparse:
                out["idx"], out["ok"] = topk_indices(scores, visible, self.indexer.topk)
        elif sparse:  # inference: the same blocked selection as the cached engine (no [T, N] scores)
            ends = (torch.arange(n, device=x.device) + 1) * r - 1
            q_pos = torch.arange(T, device=x.device)
            out["idx"], out["ok"] = self.indexer.select(xd, qd, keys, freqs, q_pos[None], ends[None],
                                                        self.indexer.topk)
        if not sparse:
            out["allowed"] = visible.unsqueeze(0)
        return out

    # ---- window + compressed + sink attention ---------------------------------------------------
    def _hybrid(self, x, q, qr, k, v, freqs, ctx) -> torch.Tensor:
        B, T, H, D = q.shape
        G, Hg = self.n_kv, H // self.n_kv
        C, nc = chunking(T, self.window)
        Tp = C * nc
        raw_mask = _cached(ctx, ("window", T, C, self.window, x.device),
                           lambda: window_mask(T, C, nc, self.window, x.device))  # [nc, C, Kr]

        def chunk_keys(t: torch.Tensor) -> torch.Tensor:  # [B, T, G, D] -> [B, G, nc, Kr, D]
            t = t.permute(0, 2, 1, 3)
            if nc == 1:
                return t.unsqueeze(2)
            t = F.pad(t, (0, 0, C, Tp - T))  # one empty chunk in front, tail padding
            return t.unfold(2, 2 * C, C).transpose(-1, -2)

        def rows(t: torch.Tensor) -> torch.Tensor:  # per-query [B, T, *] -> [B, nc, 1, C, *]
            t = F.pad(t, (0, 0, 0, Tp - T))
            return t.view(t.shape[0], nc, 1, C, -1)

        # queries: [B, T, H, D] -> [B, G, nc, Hg*C, D], rows ordered (head, position)
        qc = F.pad(q, (0, 0, 0, 0, 0, Tp - T)).view(B, nc, C, G, Hg, D).permute(0, 3, 1, 4, 2, 5)
        qc = qc.reshape(B, G, nc, Hg * C, D)
        kc = chunk_keys(k)
        vc = kc if v is k else chunk_keys(v)
        scores = torch.matmul(qc, kc.transpose(-1, -2)).float()  # [B, G, nc, Hg*C, Kr]
        Kr = scores.shape[-1]
        mask = raw_mask.view(1, 1, nc, 1, C, Kr)
        comp = None
        if self.compressor is not None and T >= self.ratio:  # (G == 1: shared_kv)
            comp = self._compressed(x, qr, freqs, ctx)
            ent = comp["entries"].to(qc.dtype)
            s_cmp = torch.matmul(qc.reshape(B, -1, D), ent.transpose(1, 2)).view(B, nc, Hg, C, -1)
            if "idx" in comp:  # sparse: keep only the top-k columns of each query
                sel = rows(comp["idx"]).expand(-1, -1, Hg, -1, -1)
                s_cmp = s_cmp.gather(-1, sel)
                allowed = rows(comp["ok"]).unsqueeze(1)
            else:
                allowed = rows(comp["allowed"]).unsqueeze(1)
            scores = torch.cat([scores, s_cmp.float().view(B, 1, nc, Hg * C, -1)], dim=-1)
            mask = torch.cat([mask.expand(allowed.shape[0], -1, -1, -1, -1, -1), allowed], dim=-1)
        K = scores.shape[-1]
        scores = (scores * self.softmax_scale).view(B, G, nc, Hg, C, K).masked_fill(~mask, float("-inf"))
        if self.attn_sink is not None:  # sink: an extra logit per head with a zero value
            sink = self.attn_sink.float().view(1, G, 1, Hg, 1, 1).expand(B, G, nc, Hg, C, 1)
            probs = torch.cat([scores, sink], dim=-1).softmax(dim=-1)[..., :K]
        else:
            probs = scores.softmax(dim=-1)
        pv = probs.to(vc.dtype)
        out = torch.matmul(pv[..., :Kr].reshape(B, G, nc, Hg * C, Kr), vc)  # [B, G, nc, Hg*C, D]
        if comp is not None:
            p_cmp = pv[..., Kr:]  # [B, 1, nc, Hg, C, k or N]
            if "idx" in comp:  # scatter the k weights back to block ids: one matmul, cheap backward
                p_cmp = p_cmp.new_zeros(B, nc, Hg, C, ent.shape[1]).scatter_(-1, sel, p_cmp.squeeze(1))
            o_cmp = torch.matmul(p_cmp.reshape(B, nc * Hg * C, -1), ent)
            out = out + o_cmp.reshape(out.shape)
            if "scores" in comp:
                mass = probs[..., Kr:].detach().sum(3).reshape(B, Tp, -1)[:, :T]  # summed over heads
                if "idx" in comp:
                    self._add_indexer_loss(ctx, indexer_kl(mass, comp["scores"].gather(-1, comp["idx"]),
                                                           comp["ok"]))
                else:
                    self._add_indexer_loss(ctx, indexer_kl(mass, comp["scores"], comp["allowed"]))
        out = out.view(B, G, nc, Hg, C, D).permute(0, 2, 4, 1, 3, 5).reshape(B, Tp, H, D)
        return out[:, :T]

    def _add_indexer_loss(self, ctx, kl: torch.Tensor) -> None:
        n_csa = self.cfg.compress_ratios.count(4)
        ctx.aux_losses["indexer"] = ctx.aux_losses.get("indexer", 0.0) + kl / n_csa
        if not torch.compiler.is_compiling():
            ctx.stats["indexer_kl"] = ctx.stats.get("indexer_kl", 0.0) + kl.detach() / n_csa
