"""A cache of hot Engram rows in RAM in front of a slower tier (issue 8).

N-gram use is Zipfian: a small set of rows takes most lookups, so a few thousand cached
rows save most reads from the mmap file (or, on a GPU, from host memory). The policy is
LFU with aging, fully vectorised (no per-row Python):

  - each slot has a score; a hit adds 1, and every `age_every` lookups all scores halve,
    so the cache follows a drifting distribution;
  - a missed row is admitted into a free slot, else into the coldest slot whose score is
    below 1 (not hit since it was admitted or since aging wore its hits off): one-off
    rows churn through these probation slots while frequently used rows stay.

Lookups use a sorted copy of the slot keys (searchsorted), rebuilt only when rows are
admitted. `update` keeps cached copies equal to the store (write-through).
"""

from __future__ import annotations

import torch


class HotRowCache:
    def __init__(self, capacity: int, dim: int, dtype: torch.dtype = torch.float32, age_every: int = 64):
        self.capacity, self.dim, self.dtype, self.age_every = int(capacity), dim, dtype, age_every
        self.clear()

    def clear(self) -> None:
        # Slots are allocated as they fill (a cache that never fills costs only what it holds).
        self.slot_keys = torch.empty(0, dtype=torch.long)
        self.vals = torch.empty(0, self.dim, dtype=self.dtype)
        self.score = torch.empty(0)
        self.used = 0
        self._sorted_keys = torch.empty(0, dtype=torch.long)
        self._sorted_slots = torch.empty(0, dtype=torch.long)
        self.lookups = self.hits = self._calls = 0

    def _grow(self, need: int) -> None:
        """Room for `need` slots: capacity doubles (amortised O(1) per admitted row)."""
        size = min(self.capacity, max(need, 2 * len(self.slot_keys), 1024))
        if size <= len(self.slot_keys):
            return
        n = self.used
        keys, vals, score = self.slot_keys, self.vals, self.score
        self.slot_keys = torch.full((size,), -1, dtype=torch.long)
        self.vals = torch.zeros(size, self.dim, dtype=self.dtype)
        self.score = torch.zeros(size)
        self.slot_keys[:n], self.vals[:n], self.score[:n] = keys[:n], vals[:n], score[:n]

    @property
    def nbytes(self) -> int:
        return self.vals.numel() * self.vals.element_size() + self.slot_keys.numel() * 8 * 3

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def _find(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hit mask over u, slots of the hits)."""
        if not len(self._sorted_keys) or not len(u):
            return torch.zeros(len(u), dtype=torch.bool), torch.empty(0, dtype=torch.long)
        pos = torch.searchsorted(self._sorted_keys, u).clamp_max(len(self._sorted_keys) - 1)
        hit = self._sorted_keys[pos] == u
        return hit, self._sorted_slots[pos[hit]]

    def lookup(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hit mask over the unique rows u, their cached values [hits, dim])."""
        hit, slots = self._find(u)
        self.score[slots] += 1
        self.lookups += len(u)
        self.hits += len(slots)
        self._calls += 1
        if self._calls % self.age_every == 0:
            self.score.mul_(0.5)
        return hit, self.vals[slots]

    def admit(self, u: torch.Tensor, v: torch.Tensor) -> None:
        """Offer missed rows u (not cached) with their values v."""
        if self.capacity <= 0 or not len(u):
            return
        take = min(self.capacity - self.used, len(u))
        if take > 0:
            self._grow(self.used + take)
            a, b = self.used, self.used + take
            self.slot_keys[a:b], self.vals[a:b], self.score[a:b] = u[:take], v[:take].to(self.dtype), 0.0
            self.used = b
            u, v = u[take:], v[take:]
        if len(u):
            cold = torch.nonzero(self.score[: self.used] < 1).squeeze(1)
            cold = cold[torch.argsort(self.score[cold], stable=True)][: len(u)]
            n = len(cold)
            self.slot_keys[cold] = u[:n]
            self.vals[cold] = v[:n].to(self.dtype)
            self.score[cold] = 0.0
        self._sorted_keys, self._sorted_slots = torch.sort(self.slot_keys[: self.used])

    def update(self, u: torch.Tensor, v: torch.Tensor) -> None:
        """Write-through: refresh the cached copies of rows u (others are ignored)."""
        hit, slots = self._find(u)
        if len(slots):
            self.vals[slots] = v[hit].to(self.dtype)
