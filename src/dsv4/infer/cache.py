"""Per-layer caches for incremental decoding, owned by the attention type of each layer.

Protocol (what a model's attention sees; model/ imports nothing from here, it only calls):

    ctx.cache[layer_id].update(k, v, positions) -> (k_all, v_all, mask)

`k`, `v` are the new tokens' keys/values [B, H, T, D]; `positions` [B, T] their absolute
positions (each row contiguous, rows may differ: a ragged batch). The layer cache stores them
in the batch rows' slots and returns everything the queries may attend to plus a boolean SDPA
mask [B, 1, T, L] (True = attend). Which slots the batch rows are is bound once per forward
by `ModelCache.bind(rows)`.

Layer cache kinds (SPEC 5):
  - `KVCache`        dense causal attention (the baseline MHA/GQA): every past token.
  - `WindowCache`    sliding window of the last `window` tokens in a ring buffer of
                     `window + slack` entries; the slack lets speculative decoding write
                     ahead and roll back without losing tokens the window still needs.
  - `CompressedCache` compressed KV entries (one per complete block of `ratio` tokens, CSA
                     and HCA) plus the compressor's partial-block state (the raw per-token
                     features of the blocks not yet complete); the indexer's compressed keys
                     are a second `CompressedCache` of their own width.

An attention module may build its own cache by defining `init_cache(slots, max_len, slack)`;
`make_layer_cache` falls back on the config (window or dense) otherwise.

Every cache supports `truncate(slot, length)`: forget positions >= length (speculative
rollback, slot reuse). The stale data may stay in memory: reads mask by position.
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int = 0) -> torch.Tensor:
    """[B, 1, T, L] bool: key at k_pos [B, L] (or [L]) visible to query at q_pos [B, T].

    A key is visible when it is not in the future, is a real entry (position >= 0) and, with
    a window, lies among the last `window` positions (the query's own included).
    """
    if k_pos.dim() == 1:
        k_pos = k_pos.unsqueeze(0)
    q = q_pos.unsqueeze(-1)  # [B, T, 1]
    k = k_pos.unsqueeze(1)  # [B, 1, L]
    m = (k <= q) & (k >= 0)
    if window:
        m &= k > q - window
    return m.unsqueeze(1)


class RingBuffer:
    """The last `capacity` tokens of each slot: named tensors [slots, capacity, ...] and the
    absolute position held by every cell (-1 = empty). Token at position p lives in cell
    p % capacity, so a write is one scatter and nothing ever moves."""

    def __init__(self, slots: int, capacity: int):
        self.slots, self.capacity = slots, capacity
        self.pos = torch.full((slots, capacity), -1, dtype=torch.long)
        self.data: dict[str, torch.Tensor] = {}

    def write(self, rows: torch.Tensor, positions: torch.Tensor, **tensors: torch.Tensor) -> None:
        """Store tensors [B, T, ...] at positions [B, T] of slots `rows` [B]. Only the last
        `capacity` tokens of a chunk longer than the ring survive (as in a real ring)."""
        if positions.shape[1] > self.capacity:
            positions = positions[:, -self.capacity:]
            tensors = {k: v[:, -self.capacity:] for k, v in tensors.items()}
        if self.pos.device != positions.device:
            self.pos = self.pos.to(positions.device)
        cells = positions % self.capacity
        r = rows.unsqueeze(1)
        for name, t in tensors.items():
            buf = self.data.get(name)
            if buf is None:  # allocate lazily: dtype/shape/device follow the first write (autocast)
                buf = torch.zeros(self.slots, self.capacity, *t.shape[2:], dtype=t.dtype, device=t.device)
                self.data[name] = buf
            buf[r, cells] = t.to(buf.dtype)
        self.pos[r, cells] = positions

    def read(self, rows: torch.Tensor, names: tuple[str, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """All cells of the slots `rows`: ([tensor [B, C, ...] per name], positions [B, C])."""
        return [self.data[n][rows] for n in names], self.pos[rows]

    def gather(self, row: int, positions: torch.Tensor, name: str) -> torch.Tensor:
        """The tensor `name` at absolute `positions` (any shape) of one slot; they must be held."""
        cells = positions % self.capacity
        held = self.pos[row, cells]
        if not torch.equal(held, positions):
            raise RuntimeError("ring buffer no longer holds the requested positions")
        return self.data[name][row, cells]

    def truncate(self, slot: int, length: int) -> None:
        self.pos[slot][self.pos[slot] >= length] = -1


# ---------------------------------------------------------------------------------------
# Layer caches
# ---------------------------------------------------------------------------------------


class KVCache:
    """Dense causal KV cache: keys/values [slots, max_len, H, D], written by position."""

    def __init__(self, owner: ModelCache, slots: int, max_len: int):
        self.owner, self.slots, self.max_len = owner, slots, max_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        rows = self.owner.rows
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, T, H, D]
        if self.k is None:
            shape = (self.slots, self.max_len, *k.shape[2:])
            self.k = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(shape, dtype=v.dtype, device=v.device)
        block = self.owner.row_block  # consecutive slots: views instead of gathers (fast path)
        if block is not None and rows.shape[0] == 1:
            p0 = int(positions[0, 0])
            self.k[block.start, p0:p0 + positions.shape[1]] = k[0]
            self.v[block.start, p0:p0 + positions.shape[1]] = v[0]
        else:
            r = rows.unsqueeze(1)
            self.k[r, positions] = k.to(self.k.dtype)
            self.v[r, positions] = v.to(self.v.dtype)
        # Attend over the prefix that the furthest row has reached; a row's cells past its
        # own positions are stale or empty and masked out by position.
        L = int(positions.max()) + 1
        if block is not None:
            k_all, v_all = self.k[block, :L], self.v[block, :L]
        else:
            k_all, v_all = self.k[rows, :L], self.v[rows, :L]
        mask = causal_mask(positions, torch.arange(L, device=positions.device))
        return k_all.transpose(1, 2).to(k.dtype), v_all.transpose(1, 2).to(v.dtype), mask

    def truncate(self, slot: int, length: int) -> None:
        pass  # positions >= length are masked until rewritten

    def nbytes_per_token(self) -> int:
        return 0 if self.k is None else 2 * self.k[0, 0].numel() * self.k.element_size()


class WindowCache:
    """Sliding-window KV cache: a ring of `window + slack` cells per slot.

    The queries of a chunk attend to the ring as it was before the chunk (entries of earlier
    calls only: cells at positions >= the row's first new position are stale, e.g. rolled-back
    drafts) plus the chunk's own keys, so a chunk longer than the ring is still exact.
    """

    def __init__(self, owner: ModelCache, slots: int, window: int, slack: int = 0):
        self.owner, self.window = owner, window
        self.ring = RingBuffer(slots, window + slack)

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        rows = self.owner.rows
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, T, H, D]
        if "k" in self.ring.data:
            (old_k, old_v), old_pos = self.ring.read(rows, ("k", "v"))
            start = positions[:, :1]
            old_pos = torch.where(old_pos < start, old_pos, torch.full_like(old_pos, -1))
            k_all = torch.cat([old_k.to(k.dtype), k], dim=1)
            v_all = torch.cat([old_v.to(v.dtype), v], dim=1)
            k_pos = torch.cat([old_pos, positions], dim=1)
        else:
            k_all, v_all, k_pos = k, v, positions
        self.ring.write(rows, positions, k=k, v=v)
        mask = causal_mask(positions, k_pos, self.window)
        return k_all.transpose(1, 2), v_all.transpose(1, 2), mask

    def truncate(self, slot: int, length: int) -> None:
        self.ring.truncate(slot, length)


class CompressedCache:
    """Compressed entries (one per complete block of `ratio` tokens) + the compressor's state.

    The compressor of block i pools the raw per-token features of positions
    [(i+1)*ratio - span, (i+1)*ratio) (span = ratio, or 2*ratio for CSA's overlapping windows).
    `push` stores a chunk's raw features in a ring that holds at least `span` tokens (the
    partial-block state) and returns the blocks that the chunk completed, each with its raw
    span, for the caller to compress; `store` keeps the results. Strict causality: entry i is
    visible to a query at position p only when its block is complete, (i+1)*ratio - 1 <= p.
    """

    def __init__(self, slots: int, ratio: int, max_len: int, span: int | None = None, slack: int = 0):
        self.ratio, self.span = ratio, span or ratio
        self.max_blocks = max_len // ratio
        self.raw = RingBuffer(slots, self.span + ratio + slack)
        self.entries: torch.Tensor | None = None  # [slots, max_blocks, ...]
        self.count = torch.zeros(slots, dtype=torch.long)  # complete blocks stored per slot

    def push(self, rows: torch.Tensor, positions: torch.Tensor, **raw: torch.Tensor):
        """Store raw features [B, T, ...]; return [(row_index, block_ids, {name: [n, span, ...]})]
        for every row that completed blocks (positions before 0 of an early block are zeros)."""
        done = []
        for b in range(rows.shape[0]):
            slot = int(rows[b])
            first, last = int(positions[b, 0]), int(positions[b, -1])
            blocks = torch.arange(first // self.ratio, (last + 1) // self.ratio)
            blocks = blocks[(blocks + 1) * self.ratio - 1 >= first]
            if blocks.numel() == 0:
                continue
            pos = (blocks.unsqueeze(1) + 1) * self.ratio + torch.arange(-self.span, 0)  # [n, span]
            lo = max(int(pos.min()), 0)
            feats = {}
            for name, t in raw.items():
                # the span's tokens: earlier ones from the ring (the partial state), then the chunk
                old = (self.raw.gather(slot, torch.arange(lo, first), name) if lo < first
                       else t.new_zeros(0, *t.shape[2:]))
                local = torch.cat([old.to(t.dtype), t[b]], dim=0)
                got = local[(pos - lo).clamp(min=0)]
                keep = (pos >= 0).view(*pos.shape, *[1] * (got.dim() - 2))
                feats[name] = torch.where(keep, got, torch.zeros_like(got))
            done.append((b, blocks, feats))
        self.raw.write(rows, positions, **raw)
        return done

    def store(self, row: int, blocks: torch.Tensor, entries: torch.Tensor) -> None:
        """Keep compressed entries [n, ...] for `blocks` of slot `row`."""
        if self.entries is None:
            self.entries = torch.zeros(self.count.shape[0], self.max_blocks, *entries.shape[1:],
                                       dtype=entries.dtype, device=entries.device)
        self.entries[row, blocks] = entries.to(self.entries.dtype)
        self.count[row] = max(int(self.count[row]), int(blocks.max()) + 1)

    def read(self, rows: torch.Tensor, q_pos: torch.Tensor):
        """(entries [B, N, ...], mask [B, 1, T, N]) with N the most blocks any row holds."""
        n = max(int(self.count[rows].max()), 1)
        ent = self.entries[rows, :n] if self.entries is not None else None
        block_end = (torch.arange(n) + 1) * self.ratio - 1
        valid = torch.arange(n).unsqueeze(0) < self.count[rows].unsqueeze(1)  # [B, N]
        k_pos = torch.where(valid, block_end.unsqueeze(0), torch.full_like(block_end, -1).unsqueeze(0))
        return ent, causal_mask(q_pos, k_pos)

    def truncate(self, slot: int, length: int) -> None:
        self.raw.truncate(slot, length)
        self.count[slot] = min(int(self.count[slot]), length // self.ratio)


# ---------------------------------------------------------------------------------------
# The whole model's cache
# ---------------------------------------------------------------------------------------


def make_layer_cache(owner: ModelCache, attn, slots: int, max_len: int, slack: int):
    if hasattr(attn, "init_cache"):
        return attn.init_cache(owner, slots, max_len, slack)
    window = getattr(attn.cfg, "window_size", 0) if hasattr(attn, "cfg") else 0
    if window and window < max_len:
        return WindowCache(owner, slots, window, slack)
    return KVCache(owner, slots, max_len)


class ModelCache:
    """One cache per layer plus per-slot bookkeeping: `ctx.cache` for a cached forward.

    Also keeps every slot's token ids (cheap) so that sublayers that look back at earlier
    tokens (Engram's N-gram hashing) can read `token_history` in a cached forward.
    """

    def __init__(self, model, slots: int, max_len: int, slack: int = 0):
        self.slots, self.max_len = slots, max_len
        self.rows = torch.zeros(0, dtype=torch.long)
        self.row_block: slice | None = None  # rows as a slice when they are consecutive slots
        self.layers = [make_layer_cache(self, blk.attn, slots, max_len, slack) for blk in model.layers]
        self.tokens = torch.zeros(slots, max_len, dtype=torch.long)

    def __getitem__(self, layer_id: int):
        return self.layers[layer_id]

    def bind(self, rows: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Declare the slots of the next forward's batch rows and record their token ids."""
        self.rows = rows
        n = rows.shape[0]
        r0 = int(rows[0]) if n else 0
        consecutive = n > 0 and bool((rows == torch.arange(r0, r0 + n)).all())
        self.row_block = slice(r0, r0 + n) if consecutive else None
        self.tokens[rows.unsqueeze(1), positions] = ids.to(self.tokens.device)

    def token_history(self, positions: torch.Tensor, n: int) -> torch.Tensor:
        """[B, T, n]: the ids at positions p-n+1..p of each bound row (-1 before the start)."""
        offs = torch.arange(-n + 1, 1, device=positions.device)
        pos = positions.unsqueeze(-1) + offs
        ids = self.tokens[self.rows.view(-1, 1, 1), pos.clamp(min=0)]
        return torch.where(pos >= 0, ids, torch.full_like(ids, -1))

    def truncate(self, slot: int, length: int) -> None:
        for layer in self.layers:
            layer.truncate(slot, length)
