"""KV compressor of V4's CSA / HCA layers (SPEC 1.3; DeepSeek-V4 paper §2.3, eqs. 9-12, 20-23).

Every `ratio` consecutive tokens are pooled into one compressed KV entry:

    C_i = sum_{j in window_i} softmax_j(Z_j + B_j) * KV_j        (softmax per channel, over slots)

with KV = x W_kv, Z = x W_gate and a learned position bias B (`ape`, one row per slot of
the block). The entry is RMS-normalised and RoPE-rotated (last rope dims) at the
position of the block's first token, like DeepSeek's reference (positions 0, r, 2r, ...).

Overlap (ratio 4, CSA): W_kv / W_gate produce two series of head_dim channels. The
first half ("Ca") of block i-1 and the second half ("Cb") of block i are pooled
together over 2r slots, so entry i sees tokens [(i-1) r, (i+1) r) — width 2r,
stride r. Block 0 has no predecessor: its Ca slots get gate -inf (weight 0).
Entry i is complete once token (i+1) r - 1 has been seen: it never reads a later token.

The math is split into `project` (per token) and `pool` (per complete block, with an
optional carried-in predecessor Ca half) so that a cached decoder can keep the partial
block's projected (kv, score) and the last block's Ca half as state and call `pool`
when a block completes. The whole pooling runs in fp32 (DeepSeek: "compression need fp32").
"""

from __future__ import annotations

import torch
from torch import nn

from dsv4.model.norm import RMSNorm
from dsv4.model.rope import apply_rope


class Compressor(nn.Module):
    def __init__(self, dim: int, head_dim: int, ratio: int, eps: float = 1e-6):
        super().__init__()
        self.head_dim, self.ratio = head_dim, ratio
        self.overlap = ratio == 4  # DeepSeek: overlapping windows exactly for the CSA ratio
        coff = 2 if self.overlap else 1
        self.wkv = nn.Linear(dim, coff * head_dim, bias=False)
        self.wgate = nn.Linear(dim, coff * head_dim, bias=False)
        self.ape = nn.Parameter(torch.zeros(ratio, coff * head_dim))  # position bias B (per slot)
        self.norm = RMSNorm(head_dim, eps)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token (kv, gate score) [B, T, coff*head_dim] in fp32 (score without ape)."""
        return self.wkv(x).float(), self.wgate(x).float()

    def pool(self, kv: torch.Tensor, score: torch.Tensor, prev_kv: torch.Tensor | None = None,
             prev_score: torch.Tensor | None = None) -> torch.Tensor:
        """Gated pooling of N complete blocks: kv, score [B, N, r, coff*d] -> [B, N, d] (fp32, pre-norm).

        prev_kv / prev_score [B, r, d] (overlap only): the Ca half (ape included) of the block
        just before the first one, carried by a cached decoder; None = sequence start.
        """
        score = score + self.ape
        if self.overlap:
            d = self.head_dim
            B, N, r, _ = kv.shape
            if prev_kv is None:
                prev_kv = kv.new_zeros(B, r, d)
                prev_score = score.new_full((B, r, d), float("-inf"))
            ca_kv = torch.cat([prev_kv.unsqueeze(1), kv[:, :-1, :, :d]], dim=1)  # Ca of block i-1
            ca_s = torch.cat([prev_score.unsqueeze(1), score[:, :-1, :, :d]], dim=1)
            kv = torch.cat([ca_kv, kv[..., d:]], dim=2)  # [B, N, 2r, d]
            score = torch.cat([ca_s, score[..., d:]], dim=2)
        return (kv * score.softmax(dim=2)).sum(dim=2)

    def finish(self, pooled: torch.Tensor, block_freqs: torch.Tensor) -> torch.Tensor:
        """RMSNorm, then RoPE at each block's start position: [B, N, d] -> [B, N, d]."""
        c = self.norm(pooled)
        return apply_rope(c.unsqueeze(2), block_freqs).squeeze(2)

    def forward(self, x: torch.Tensor, block_freqs: torch.Tensor) -> torch.Tensor:
        """Compress the complete blocks of x [B, T, dim] (x starts at a block boundary, no
        predecessor) -> [B, T // r, d]. block_freqs[i] is the rotation at block i's start."""
        B, T, _ = x.shape
        n = T // self.ratio
        if n == 0:
            return x.new_zeros(B, 0, self.head_dim, dtype=torch.float32)
        kv, score = self.project(x[:, : n * self.ratio])
        pooled = self.pool(kv.view(B, n, self.ratio, -1), score.view(B, n, self.ratio, -1))
        return self.finish(pooled, block_freqs[:n])
