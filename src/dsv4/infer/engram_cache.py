"""Cached Engram (SPEC 1.2, 5): incremental N-gram hashing and the short conv's state.

Two things make Engram depend on earlier tokens, and both are carried here instead of
recomputed:
  - the N-gram address of token t hashes the (compressed) ids t-N+1..t: the ids before the
    chunk come from the cache's per-slot token record (`ModelCache.tokens`) and enter
    `engram_addresses` as its `prefix` (pad id before the sequence start);
  - the causal depthwise conv (kernel k, dilation d) reads its normalised input at
    t, t-d, ..., t-(k-1)d: the last (k-1)d inputs of each slot live in a ring buffer.
The rest is per token and is the module's own math (`Engram.retrieve`, projections, gate).
"""

from __future__ import annotations

import torch

from dsv4.infer.cache import RingBuffer
from dsv4.model.engram_hash import engram_addresses


class EngramCache:
    def __init__(self, owner, engram, slots: int, slack: int):
        self.owner = owner
        self.span = max(engram.orders) - 1  # ids before t that an address needs
        self.reach = (engram.kernel_size - 1) * engram.dilation  # conv inputs before t
        self.ring = RingBuffer(slots, max(self.reach, 1) + slack + 1)

    def truncate(self, slot: int, length: int) -> None:
        self.ring.truncate(slot, length)

    def _prefix(self, engram, start: torch.Tensor) -> torch.Tensor:
        """Compressed ids at positions start-span..start-1 per row [B, span] (pad before 0)."""
        pos = start.unsqueeze(1) + torch.arange(-self.span, 0)
        ids = self.owner.tokens[self.owner.rows.unsqueeze(1), pos.clamp(min=0)]
        cids = engram.compress[ids.to(engram.compress.device)]
        return torch.where(pos.to(cids.device) >= 0, cids, torch.full_like(cids, engram.pad_id))

    def addresses(self, engram, ctx) -> torch.Tensor:
        """Table rows of the bound chunk's tokens [B, T, slots] (also what the engine prefetches)."""
        prefix = self._prefix(engram, ctx.positions[:, 0].cpu())
        return engram_addresses(engram.compress[ctx.ids], engram.orders, engram.multipliers, engram.moduli,
                                engram.offsets, engram.pad_id, prefix)

    def forward(self, engram, x: torch.Tensor, ctx) -> torch.Tensor:
        single = x.dim() == 3
        h = x.unsqueeze(2) if single else x
        B, T, n, D = h.shape
        pos = ctx.positions
        e = engram.retrieve(self.addresses(engram, ctx))
        _, u = engram.gated_value(h, e)  # [B, T, n, D], the model's gate (paper eq. 4)
        y = self._short_conv(engram, u, pos) + u
        out = h + y.to(h.dtype)
        return out.squeeze(2) if single else out

    def _short_conv(self, engram, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, T, n, D = u.shape
        z = engram._rms(u, engram.conv_norm).reshape(B, T, n * D)  # the conv's input, per token
        if self.reach:
            past_pos = pos[:, :1].cpu() + torch.arange(-self.reach, 0)  # [B, reach]
            past = torch.zeros(B, self.reach, n * D, dtype=z.dtype, device=z.device)
            b, i = (past_pos >= 0).nonzero(as_tuple=True)  # held inputs (none before position 0)
            if len(b):  # one gather for the whole batch
                past[b, i] = self.ring.gather(self.owner.rows[b], past_pos[b, i], "z").to(z.dtype)
            self.ring.write(self.owner.rows, pos.cpu(), z=z)
            z = torch.cat([past, z], dim=1)
        return engram.conv_silu(z.transpose(1, 2))  # [B, C, reach + T]: the past is real, no padding
