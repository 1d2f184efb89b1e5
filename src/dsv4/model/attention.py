"""Causal self-attention.

Baseline form: multi-head (or grouped-query when n_kv_heads < n_heads) attention with
RoPE on the last `rope_dim` dims of each head, computed by PyTorch SDPA. The V4 hybrid
(shared-KV MQA, low-rank q, sinks, sliding window, CSA/HCA compression with the
lightning indexer) extends this module behind config switches (SPEC 1.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig
from dsv4.model.rope import apply_rope


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.cfg = cfg
        self.layer_id = layer_id
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, self.n_kv * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, self.n_kv * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        freqs = ctx.freqs
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv, self.head_dim)
        q, k = apply_rope(q, freqs), apply_rope(k, freqs)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        mask = None
        if ctx.cache is not None:  # [serve] hook: store k/v, attend over the cached prefix
            k, v, mask = ctx.cache[self.layer_id].update(k, v, ctx.positions)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=self.n_kv != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))
