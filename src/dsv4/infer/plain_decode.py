"""One-token decode of the plain baseline transformer (every V4 switch off), without module calls.

Why: at the baseline's size (dim 256, 6 layers) a decode step is ~25 GEMVs of ~2 ms in all
(fp32), and the generic cached forward (module dispatch, `causal_mask`, RoPE by stack/cat, cache
bookkeeping per layer, separate q/k/v and gate/up projections) cost about half as much again.
This path runs the same math as `Block.forward` under `AttentionCache` for one new token per
row, as straight tensor code:

  - q/k/v in one fused GEMV (`wq|wk|wv` concatenated once), gate/up in one (`w1|w3`), and the
    output projections as `addmm` into the residual stream (fp32 weights);
  - the model's own `rms_normalize` and `apply_rope` (their inference forms: one fused norm,
    one complex product for q and k of all heads at once);
  - keys/values written in place into the same `DenseStore` buffers the prefill filled, and
    SDPA over the row's prefix (no mask: every held position <= the query's is visible).

`weight_dtype=torch.bfloat16` keeps bf16 copies of the Linear weights (half the bytes each GEMV
streams); the residual stream, norms, RoPE, attention and the cache stay fp32, and GEMV outputs
are cast back to fp32. The packed copies are rebuilt when any source parameter changed in place
(an optimizer step between generations): `_version` counters are compared on every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dsv4.infer.cache import DenseStore
from dsv4.infer.prepack import in_out_layout
from dsv4.model.ffn import FeedForward, swiglu
from dsv4.model.norm import rms_normalize
from dsv4.model.rope import apply_rope


def supports(model) -> bool:
    """True for a model whose blocks are all plain: single residual stream, no Engram, dense
    SwiGLU FFN, full causal MHA/GQA (no window, compression, sink, low-rank q/o, shared KV)."""
    cfg = model.config
    if cfg.hc_mult > 1 or cfg.q_lora_rank or cfg.shared_kv or cfg.o_groups:
        return False
    return all(b.engram is None and b.attn.plain and isinstance(b.ffn, FeedForward) for b in model.layers)


class PlainDecoder:
    def __init__(self, model, cache, weight_dtype: torch.dtype | None = None):
        if not supports(model):
            raise ValueError("PlainDecoder needs a plain model (every V4 switch off)")
        self.model, self.cache = model, cache
        self.wdt = weight_dtype or model.head.weight.dtype
        cfg = model.config
        self.dim, self.eps = cfg.dim, cfg.norm_eps
        self.H, self.G, self.D = cfg.n_heads, model.layers[0].attn.n_kv, cfg.head_dim
        self.stores = [cache[b.attn.layer_id].raw for b in model.layers]
        self._sources = [p for p in model.parameters()]
        self._versions = None
        self._pack()

    def _pack(self) -> None:
        def w(*linears):  # one GEMV for several projections of the same input
            if len(linears) == 1:  # no copy unless the dtype or layout changes
                out = linears[0].weight.detach().to(self.wdt)
            else:
                out = torch.cat([lin.weight.detach() for lin in linears]).to(self.wdt)
            # fp32 GEMVs stream [in, out] storage ~1.9x faster on our CPU (prepack.py); bf16
            # ones are faster in the standard [out, in] layout, so those stay as they are
            return in_out_layout(out) if self.wdt == torch.float32 else out.contiguous()

        m = self.model
        self.layers = [(b.attn_norm.weight.detach(), w(b.attn.wq, b.attn.wk, b.attn.wv), w(b.attn.wo),
                        b.ffn_norm.weight.detach(), w(b.ffn.w1, b.ffn.w3), w(b.ffn.w2), b.ffn.swiglu_limit)
                       for b in m.layers]
        self.embed, self.norm = m.embed.weight.detach(), m.norm.weight.detach()
        self.head = w(m.head)
        self._versions = [p._version for p in self._sources]

    def ready(self) -> bool:
        """The prefill has allocated every layer's key/value buffers (fp32 or bf16, any)."""
        return all(isinstance(s, DenseStore) and s.k is not None for s in self.stores)

    def decode(self, slots: list[int], ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """Logits [B, V] (fp32) of one new token per row: ids [B] at `positions` of `slots`,
        whose keys/values are appended to the cache."""
        if [p._version for p in self._sources] != self._versions:
            self._pack()
        B, H, G, D, wdt = len(slots), self.H, self.G, self.D, self.wdt
        pos = torch.tensor(positions)
        self.cache.tokens[torch.tensor(slots), pos] = ids  # what `ModelCache.bind` records
        f = self.cache.freqs[pos]  # [B, rope_dim/2]
        x = F.embedding(ids, self.embed)  # [B, dim] fp32 residual stream
        for store, (n1, wqkv, wo, n2, w13, w2, limit) in zip(self.stores, self.layers, strict=True):
            h = rms_normalize(x, self.eps, n1)
            qkv = F.linear(h.to(wdt), wqkv).float()
            qk = apply_rope(qkv[:, :(H + G) * D].view(B, H + G, D), f)  # q and k rotated at once
            v = qkv[:, (H + G) * D:].view(B, G, D)
            outs = []
            for b, (slot, p) in enumerate(zip(slots, positions, strict=True)):
                store.k[slot, p] = qk[b, H:]
                store.v[slot, p] = v[b]
                keys = store.k[slot, :p + 1].float().transpose(0, 1).unsqueeze(0)  # [1, G, p+1, D]
                vals = store.v[slot, :p + 1].float().transpose(0, 1).unsqueeze(0)
                outs.append(F.scaled_dot_product_attention(qk[b:b + 1, :H].unsqueeze(2), keys, vals,
                                                           enable_gqa=G != H))
            o = outs[0] if B == 1 else torch.cat(outs)  # [B, H, 1, D]
            x = self._residual(x, o.view(B, H * D), wo)
            h = rms_normalize(x, self.eps, n2)
            gate, up = F.linear(h.to(wdt), w13).float().chunk(2, dim=-1)
            x = self._residual(x, swiglu(gate, up, limit), w2)
        return F.linear(rms_normalize(x, self.eps, self.norm).to(wdt), self.head).float()

    def _residual(self, x: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x + h W^T: one addmm (the GEMV accumulates into the stream) with fp32 weights."""
        if w.dtype == x.dtype:
            return torch.addmm(x, h, w.t())
        return x + F.linear(h.to(w.dtype), w).float()
