"""Caches for incremental decoding: the state each layer keeps between forward passes.

Protocol (model/ imports nothing from here, it only calls): when `ctx.cache` is set,
`Attention.forward(x, ctx)` returns `ctx.cache[layer_id].forward(attn, x, ctx)` and
`Engram.forward` returns `ctx.cache.engram[layer_id].forward(engram, x, ctx)`. The new
tokens sit at absolute positions `ctx.positions` [B, T] (each row contiguous, rows may
differ: a ragged batch, no padding); which cache slots the batch rows are is bound once per
forward by `ModelCache.bind(rows, ...)`.

Building blocks (SPEC 5), used by `attn_cache.AttentionCache` and `engram_cache.EngramCache`:
  - `DenseStore`     every past token's key/value (dense causal attention).
  - `RingStore`      the last `window + slack` tokens in a ring buffer (sliding window); the
                     slack lets speculative decoding write ahead and roll back without losing
                     tokens the window still needs.
  - `CompressedCache` compressed KV entries (one per complete block of `ratio` tokens, CSA
                     and HCA) plus the compressor's partial-block state (the raw per-token
                     features of the blocks not yet complete); the indexer's compressed keys
                     are a second `CompressedCache` of their own width.

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
    k_pos = k_pos.to(q_pos.device)
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
        positions = positions.cpu()  # bookkeeping on the CPU; data lives where it was computed
        if positions.numel() == 1:  # one token of one slot (single-stream decode): plain copies
            self.write_one(int(rows[0]), int(positions[0, 0]), **tensors)
            return
        if positions.shape[1] > self.capacity:
            positions = positions[:, -self.capacity:]
            tensors = {k: v[:, -self.capacity:] for k, v in tensors.items()}
        cells = positions % self.capacity
        r = rows.unsqueeze(1)
        for name, t in tensors.items():
            buf = self._buffer(name, t)
            buf[r, cells] = t.to(buf.dtype)
        self.pos[r, cells] = positions

    def write_one(self, slot: int, p: int, **tensors: torch.Tensor) -> None:
        """`write` of one token [1, 1, ...] at position p of `slot`, given as host ints (the
        one-token decode knows them: no reads of index tensors)."""
        cell = p % self.capacity
        for name, t in tensors.items():
            self._buffer(name, t)[slot, cell] = t[0, 0]
        self.pos[slot, cell] = p

    def _buffer(self, name: str, t: torch.Tensor) -> torch.Tensor:
        buf = self.data.get(name)
        if buf is None:  # allocate lazily: dtype/shape/device follow the first write (autocast)
            buf = torch.zeros(self.slots, self.capacity, *t.shape[2:], dtype=t.dtype, device=t.device)
            self.data[name] = buf
        return buf

    def read(self, rows: torch.Tensor, names: tuple[str, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """All cells of the slots `rows`: ([tensor [B, C, ...] per name], positions [B, C])."""
        return [self.data[n][rows] for n in names], self.pos[rows]

    def gather(self, row: int | torch.Tensor, positions: torch.Tensor, name: str) -> torch.Tensor:
        """The tensor `name` at absolute `positions` (any shape) of one slot, or of slots `row`
        (a tensor broadcasting with `positions`: one slot per position); they must be held."""
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


class DenseStore:
    """Every past token's key (and value) per slot: [slots, max_len, G, D], written by position."""

    def __init__(self, owner: ModelCache, slots: int, max_len: int):
        self.owner, self.slots, self.max_len = owner, slots, max_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor | None, positions: torch.Tensor):
        """Store k, v [B, T, G, D] (v None: keys are the values, V4's K = V) at positions [B, T];
        return (keys [B, L, G, D], values, key positions [L]) covering every row's prefix."""
        rows, block = self.owner.rows, self.owner.row_block
        if self.k is None:
            shape = (self.slots, self.max_len, *k.shape[2:])
            self.k = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v = None if v is None else torch.zeros(shape, dtype=v.dtype, device=v.device)
        stores = [(self.k, k)] + ([(self.v, v)] if v is not None else [])
        for buf, t in stores:
            if block is not None and rows.shape[0] == 1:  # one row: a slice copy, no scatter
                p0 = int(positions[0, 0])
                buf[block.start, p0:p0 + positions.shape[1]] = t[0].to(buf.dtype)
            else:
                buf[rows.unsqueeze(1), positions.cpu()] = t.to(buf.dtype)
        # The prefix the furthest row has reached; a row's cells past its own positions are
        # stale or empty and are masked by position.
        L = int(positions.max()) + 1
        sel = block if block is not None else rows
        k_all = self.k[sel, :L].to(k.dtype)
        v_all = k_all if v is None else self.v[sel, :L].to(v.dtype)
        return k_all, v_all, torch.arange(L, device=positions.device)

    def truncate(self, slot: int, length: int) -> None:
        pass  # positions >= length are masked until rewritten


class RingStore:
    """The last `capacity` tokens' keys (and values) per slot, in a `RingBuffer`.

    The queries of a chunk see the ring as it was before the chunk (entries of earlier calls
    only: cells at positions >= the row's first new position are stale, e.g. rolled-back
    drafts) plus the chunk's own keys, so a chunk longer than the ring is still exact.
    """

    def __init__(self, owner: ModelCache, slots: int, capacity: int):
        self.owner = owner
        self.ring = RingBuffer(slots, capacity)

    def append(self, k: torch.Tensor, v: torch.Tensor | None, positions: torch.Tensor):
        """Like `DenseStore.append`, but key positions are per row: [B, K] (-1 = empty)."""
        rows = self.owner.rows
        names = ("k",) if v is None else ("k", "v")
        new = {"k": k} if v is None else {"k": k, "v": v}
        if "k" in self.ring.data:
            old, old_pos = self.ring.read(rows, names)
            old_pos = torch.where(old_pos < positions[:, :1].cpu(), old_pos, torch.full_like(old_pos, -1))
            old_pos = old_pos.to(positions.device)
            cat = [torch.cat([o.to(new[n].dtype), new[n]], dim=1) for o, n in zip(old, names, strict=True)]
            k_pos = torch.cat([old_pos, positions], dim=1)
        else:
            cat, k_pos = [new[n] for n in names], positions
        self.ring.write(rows, positions, **new)
        return cat[0], cat[-1], k_pos

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
        positions = positions.cpu()
        for b in range(rows.shape[0]):
            slot = int(rows[b])
            first, last = int(positions[b, 0]), int(positions[b, -1])
            # blocks whose last token (i+1)r - 1 is in [first, last]: i from first // r on
            if first // self.ratio >= (last + 1) // self.ratio:
                continue  # none completes (most decode steps): no tensor work
            blocks = torch.arange(first // self.ratio, (last + 1) // self.ratio)
            pos = (blocks.unsqueeze(1) + 1) * self.ratio + torch.arange(-self.span, 0)  # [n, span]
            lo = max(int(pos.min()), 0)
            feats = {}
            for name, t in raw.items():
                # the span's tokens: earlier ones from the ring (the partial state), then the chunk
                old = (self.raw.gather(slot, torch.arange(lo, first), name) if lo < first
                       else t.new_zeros(0, *t.shape[2:]))
                local = torch.cat([old.to(t.dtype), t[b]], dim=0)
                got = local[(pos - lo).clamp(min=0)]
                keep = (pos >= 0).view(*pos.shape, *[1] * (got.dim() - 2)).to(got.device)
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

    def store_one(self, row: int, block: int, entry: torch.Tensor) -> None:
        """`store` of one entry [...] for one block given as a host int (no index tensors)."""
        if self.entries is None:
            return self.store(row, torch.tensor([block]), entry.unsqueeze(0))
        self.entries[row, block] = entry.to(self.entries.dtype)
        if int(self.count[row]) <= block:
            self.count[row] = block + 1

    def read(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Entries [B, N, ...] of slots `rows` (N = the most blocks any row holds; a row's
        entries past its own count are stale: mask them with `block_positions`), or None
        before the first block of any slot."""
        if self.entries is None:
            return None
        return self.entries[rows, :max(int(self.count[rows].max()), 0)]

    def block_positions(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, N]: the last position of each held block (-1 where the row holds fewer), for
        `causal_mask`: a query at p sees entry i iff its block is complete, (i+1)r - 1 <= p."""
        n = int(self.count[rows].max())
        ends = (torch.arange(n) + 1) * self.ratio - 1
        held = torch.arange(n).unsqueeze(0) < self.count[rows].unsqueeze(1)
        return torch.where(held, ends.unsqueeze(0), torch.full_like(ends, -1).unsqueeze(0))

    def truncate(self, slot: int, length: int) -> None:
        self.raw.truncate(slot, length)
        self.count[slot] = min(int(self.count[slot]), length // self.ratio)


# ---------------------------------------------------------------------------------------
# The whole model's cache
# ---------------------------------------------------------------------------------------


class ModelCache:
    """The whole model's cache: one `AttentionCache` per attention layer (the main blocks and
    the MTP block, keyed by layer id), one `EngramCache` per Engram layer, the RoPE tables
    and per-slot token ids. Passed as `ctx.cache` for a cached forward.

    Keeping every slot's token ids (cheap) lets sublayers that look back at earlier tokens
    (Engram's N-gram hashing) read them in a cached forward (`token_history`).
    """

    def __init__(self, model, slots: int, max_len: int, slack: int = 0):
        from dsv4.infer.attn_cache import AttentionCache
        from dsv4.infer.engram_cache import EngramCache
        from dsv4.model.rope import has_compressed_layers, rope_frequencies

        self.slots, self.max_len = slots, max_len
        self.rows = torch.zeros(0, dtype=torch.long)
        self.row_block: slice | None = None  # rows as a slice when they are consecutive slots
        blocks = list(model.layers) + ([model.mtp.block] if getattr(model, "mtp", None) is not None else [])
        self.layers = {b.attn.layer_id: AttentionCache(self, b.attn, slots, max_len, slack) for b in blocks}
        self.engram = {b.engram.layer_id: EngramCache(self, b.engram, slots, slack)
                       for b in blocks if getattr(b, "engram", None) is not None}
        self.tokens = torch.zeros(slots, max_len, dtype=torch.long)
        cfg = model.config
        device = model.freqs.device
        self.freqs = rope_frequencies(cfg, max_len, device)
        self.freqs_compress = (rope_frequencies(cfg, max_len, device, kind="compress")
                               if has_compressed_layers(cfg) else None)

    def __getitem__(self, layer_id: int):
        return self.layers[layer_id]

    def bind(self, rows: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor,
             record: bool = True) -> None:
        """Declare the slots of the next forward's batch rows and record their token ids
        (`record=False` for the MTP block, whose ids are the next tokens)."""
        self.rows = rows
        n = rows.shape[0]
        if n == 1 and ids.numel() == 1:  # one token of one slot (single-stream decode): no index tensors
            r0 = int(rows[0])
            self.row_block = slice(r0, r0 + 1)
            if record:
                self.tokens[r0, int(positions.reshape(-1)[0])] = ids.reshape(-1)[0]
            return
        r0 = int(rows[0]) if n else 0
        consecutive = n > 0 and bool((rows == torch.arange(r0, r0 + n)).all())
        self.row_block = slice(r0, r0 + n) if consecutive else None
        if record:
            self.tokens[rows.unsqueeze(1), positions] = ids.to(self.tokens.device)

    def token_history(self, positions: torch.Tensor, n: int) -> torch.Tensor:
        """[B, T, n]: the ids at positions p-n+1..p of each bound row (-1 before the start)."""
        offs = torch.arange(-n + 1, 1, device=positions.device)
        pos = positions.unsqueeze(-1) + offs
        ids = self.tokens[self.rows.view(-1, 1, 1), pos.clamp(min=0)]
        return torch.where(pos >= 0, ids, torch.full_like(ids, -1))

    def truncate(self, slot: int, length: int) -> None:
        for c in list(self.layers.values()) + list(self.engram.values()):
            c.truncate(slot, length)


def cache_bytes(cfg, context: int, elem_bytes: int = 2) -> dict:
    """Bytes of decoding state one sequence holds at `context` tokens with these caches
    (keys/values/entries at `elem_bytes` each), per kind; the MTP block not included.

    Raw keys: the window (or every token); V4 shares one KV head and stores K = V once.
    Compressed layers add one entry per complete block (head_dim), CSA layers also the
    indexer's keys (index_head_dim) per block.
    """
    raw = cmp = idx = 0
    kv_heads = 1 if getattr(cfg, "shared_kv", False) else cfg.kv_heads
    kv_copies = 1 if getattr(cfg, "shared_kv", False) else 2
    for layer in range(cfg.n_layers):
        w = cfg.window_size
        held = min(w, context) if w else context
        raw += held * kv_heads * cfg.head_dim * kv_copies
        r = cfg.layer_compress_ratio(layer)
        if r:
            cmp += (context // r) * cfg.head_dim
            if r == 4:
                idx += (context // r) * cfg.index_head_dim
    out = {"raw": raw * elem_bytes, "compressed": cmp * elem_bytes, "indexer": idx * elem_bytes}
    out["total"] = sum(out.values())
    return out
