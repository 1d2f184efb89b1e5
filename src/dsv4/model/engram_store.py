"""Engram table stores: where the hashed N-gram rows live (issue 8; SPEC 1.2, systems).

An Engram layer reads a handful of rows per token from a table that can be far larger than
the backbone. Its module calls `self.table(rows)` and gets [.., dim] vectors; the store
behind it is chosen by `engram_store`:

  memory  an nn.Parameter `table.weight`, read with F.embedding: the dense default, trained
          by the dense Adam group of `optim_groups()["engram"]`.
  host    a separate host tensor, not a parameter (pinned when CUDA is present; rows are
          gathered on the CPU and copied to the GPU asynchronously on a side stream).
  mmap    a memory-mapped file per layer, `<engram_path>/engram_l<layer>.table`
          (engram_tablefile.py), so tables larger than RAM work; a hot-row cache in RAM
          (engram_hotcache.py) sits in front of it.

Non-dense stores ("sparse mode", also available for memory) read the unique rows of a
batch into a small leaf tensor W [U, dim] and return W[inverse]; backward leaves the exact
row-wise gradient in W.grad, and `SparseRowAdam` (dsv4.train.engram_optim) reads, updates
and writes back just those rows. Nothing proportional to the table is ever allocated.

Addresses are a pure function of token ids, so `EngramPrefetcher` (engram_prefetch.py) can
`stage()` a gather for rows that a later forward will ask for; `forward` uses a staged
gather whose rows match exactly (else it reads synchronously, so a wrong guess costs time,
never correctness). Rows written after a staged gather began are re-read when it is used.

Checkpoints: `state_dict()` holds `table.weight` for every store; for mmap it is a view of
the mapping (zero copy), and `load_state_dict` copies into any store in row chunks, so a
huge table is never copied whole into RAM. Round trips between stores are exact.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Executor, Future
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.model.engram_hash import ENGRAM_SEED
from dsv4.model.engram_hotcache import HotRowCache
from dsv4.model.engram_tablefile import TableFile

CHUNK_ELEMS = 1 << 22  # rows are initialised and copied in chunks of ~16 MB (fp32)
DEFAULT_CACHE_ROWS = 1 << 16


def copy_rows_chunked(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[:] = src, a row chunk at a time (src may be mmap-backed or on another device)."""
    step = max(1, CHUNK_ELEMS // max(1, dst.shape[1]))
    with torch.no_grad():
        for a in range(0, dst.shape[0], step):
            dst[a: a + step].copy_(src[a: a + step])


class _Staged:
    """A gather started ahead of the forward that will need it."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows
        self.future: Future | None = None
        self.dirty: list[torch.Tensor] = []  # rows written since the gather began
        self.closed = False


class TableStore(nn.Module):
    kind = "base"

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.rows, self.dim = rows, dim
        self.dense = False  # memory store: F.embedding into a Parameter
        self.collect_grads = False  # set by SparseRowAdam: record (rows, leaf) per forward
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.cache: HotRowCache | None = None
        self._staged: collections.deque[_Staged] = collections.deque()
        self._lock = threading.Lock()
        self._side_stream = None
        self.counters = collections.Counter()

    def __getstate__(self) -> dict:
        # Locks, in-flight gathers and CUDA streams cannot be copied: a deepcopy (RL's frozen
        # reference model) or a pickle gets fresh ones.
        state = dict(self.__dict__)
        state.update(_lock=None, _staged=collections.deque(), _side_stream=None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()

    # ---- storage ------------------------------------------------------------------------
    @property
    def storage(self) -> torch.Tensor:
        """The whole table [rows, dim] (a view; never copy it)."""
        raise NotImplementedError

    def read(self, u: torch.Tensor) -> torch.Tensor:
        """Rows u (unique, sorted) [U, dim], through the hot-row cache when there is one."""
        with self._lock:
            store = self.storage
            u = u.to(store.device)
            self.counters["rows_read"] += len(u)
            if self.cache is None:
                return store.index_select(0, u)
            hit, cached = self.cache.lookup(u)
            out = torch.empty(len(u), self.dim, dtype=store.dtype)
            out[hit] = cached.to(store.dtype)
            miss = u[~hit]
            fetched = store.index_select(0, miss)
            out[~hit] = fetched
            self.cache.admit(miss, fetched)
            self.counters["rows_from_tier"] += len(miss)
            return out

    def write(self, u: torch.Tensor, values: torch.Tensor) -> None:
        """storage[u] = values, keeping the cache and any staged gathers consistent."""
        with self._lock:
            store = self.storage
            u = u.to(store.device)
            store.index_copy_(0, u, values.to(store.device, store.dtype))
            if self.cache is not None:
                self.cache.update(u, values)
            for st in self._staged:
                if not st.closed:
                    st.dirty.append(u)
            self.counters["rows_written"] += len(u)

    def new_state_table(self, suffix: str, dim: int, dtype: torch.dtype) -> torch.Tensor:
        """Zeroed per-row optimizer state [rows, dim] in this store's tier."""
        return torch.zeros(self.rows, dim, dtype=dtype, device=self.storage.device)

    def will_read(self, u: torch.Tensor) -> None:
        """Hint that rows u (and their optimizer state) are about to be read."""

    def set_cache_rows(self, capacity: int) -> None:
        self.cache = HotRowCache(capacity, self.dim, self.storage.dtype) if capacity > 0 else None

    def stats(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self.counters.items()}
        if self.cache is not None:
            out.update(cache_hit_rate=self.cache.hit_rate, cache_rows=float(self.cache.used),
                       cache_bytes=float(self.cache.nbytes))
        return out

    # ---- prefetch -------------------------------------------------------------------------
    def stage(self, rows: torch.Tensor, executor: Executor | None = None) -> None:
        """Start gathering `rows` (as a later forward will pass them) in `executor`."""
        st = _Staged(rows.detach())
        with self._lock:
            self._staged.append(st)
            while len(self._staged) > 4:  # guesses nobody used
                self._staged.popleft().closed = True
        if executor is not None:
            st.future = executor.submit(self._gather, st.rows)
        else:
            st.future = _done(self._gather(st.rows))

    def _gather(self, rows: torch.Tensor):
        u, inv = torch.unique(rows.reshape(-1), return_inverse=True)
        self.will_read(u)
        w = self.read(u)
        return u, inv, self._to_device(w, rows.device)

    def _take_staged(self, rows: torch.Tensor):
        with self._lock:
            match = None
            for i, st in enumerate(self._staged):
                if st.rows.shape == rows.shape and torch.equal(st.rows, rows.to(st.rows.device)):
                    match = i
                    break
            if match is None:
                return None
            for _ in range(match + 1):  # older guesses were skipped: drop them too
                st = self._staged.popleft()
                st.closed = True
        u, inv, w = st.future.result()
        with self._lock:
            dirty = list(st.dirty)
        if dirty:
            stale = torch.isin(u, torch.cat(dirty).to(u.device))
            if stale.any():
                w = w.clone()
                w[stale] = self._to_device(self.read(u[stale]), w.device)
        return u, inv, w

    def _to_device(self, w: torch.Tensor, device: torch.device) -> torch.Tensor:
        if w.device == device:
            return w
        if device.type != "cuda":
            return w.to(device)
        # Host -> GPU on a side stream: pinned staging, non-blocking copy, the consumer waits.
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device)
        w = w.pin_memory()
        with torch.cuda.stream(self._side_stream):
            out = w.to(device, non_blocking=True)
        torch.cuda.current_stream(device).wait_stream(self._side_stream)
        out.record_stream(torch.cuda.current_stream(device))
        return out

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return F.embedding(rows, self.weight)
        got = self._take_staged(rows) if self._staged else None
        if got is not None:
            u, inv, w = got
            self.counters["prefetch_hits"] += 1
        else:
            u, inv, w = self._gather(rows)
            self.counters["sync_gathers"] += 1
        if self.collect_grads and torch.is_grad_enabled():
            w = w.detach().requires_grad_(True)  # leaf: backward leaves the row-wise grads here
            self.pending.append((u, w))
        return w[inv.to(w.device)].view(*rows.shape, self.dim)

    # ---- checkpoints --------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.storage if keep_vars else self.storage.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        src = state_dict[key]
        if tuple(src.shape) != (self.rows, self.dim):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(src.shape)}, "
                              f"the table in this model is {(self.rows, self.dim)}")
            return
        with self._lock:
            copy_rows_chunked(self.storage.data, src)
            if self.cache is not None:
                self.cache.clear()
            for st in self._staged:
                st.closed = True
            self._staged.clear()
        self.flush()

    def flush(self) -> None:
        pass

    def extra_repr(self) -> str:
        return f"{self.kind}, rows={self.rows}, dim={self.dim}"


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def _init_normal_chunked(t: torch.Tensor, std: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    step = max(1, CHUNK_ELEMS // t.shape[1])
    for a in range(0, t.shape[0], step):
        t[a: a + step].normal_(0.0, std, generator=gen)


class MemoryStore(TableStore):
    """The table as an nn.Parameter (`table.weight`): dense autograd and optimizer by default."""

    kind = "memory"

    def __init__(self, rows: int, dim: int, std: float):
        super().__init__(rows, dim)
        self.weight = nn.Parameter(torch.empty(rows, dim))
        nn.init.normal_(self.weight, 0.0, std)
        self.dense = True

    @property
    def storage(self) -> torch.Tensor:
        return self._parameters["weight"].data

    def set_sparse(self) -> None:
        """Train row-wise (SparseRowAdam) instead of through the dense optimizer."""
        self.dense = False
        self.weight.requires_grad_(False)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)


class HostStore(TableStore):
    """A host tensor outside the module's parameters (pinned when CUDA is present), so that
    `model.to("cuda")` leaves it in host memory and only gathered rows cross to the GPU."""

    kind = "host"

    def __init__(self, rows: int, dim: int, std: float, seed: int):
        super().__init__(rows, dim)
        data = torch.empty(rows, dim)
        _init_normal_chunked(data, std, seed)
        self._data = data.pin_memory() if torch.cuda.is_available() else data

    @property
    def storage(self) -> torch.Tensor:
        return self._data

    weight = storage  # the table, for code that reads `engram.table.weight` (not a Parameter)


class MmapStore(TableStore):
    """A memory-mapped table file; an existing valid file is opened as is (its rows kept)."""

    kind = "mmap"

    def __init__(self, path: str | Path, rows: int, dim: int, std: float, seed: int,
                 cache_rows: int = DEFAULT_CACHE_ROWS):
        super().__init__(rows, dim)
        self.file = TableFile(path, rows, dim, torch.float32)
        if self.file.created:
            _init_normal_chunked(self.file.tensor, std, seed)
            self.file.mark_complete()
        self.set_cache_rows(min(cache_rows, rows))

    @property
    def storage(self) -> torch.Tensor:
        return self.file.tensor

    weight = storage

    def new_state_table(self, suffix: str, dim: int, dtype: torch.dtype) -> torch.Tensor:
        path = self.file.path.with_name(self.file.path.name + suffix)
        f = TableFile(path, self.rows, dim, dtype, fresh=True)
        f.mark_complete()
        self._state_files = getattr(self, "_state_files", []) + [f]
        return f.tensor

    def will_read(self, u: torch.Tensor) -> None:
        # From a cold page cache the kernel then reads all these pages concurrently (instead of
        # one fault at a time), including the Adam rows the optimizer step will touch.
        for f in [self.file] + (getattr(self, "_state_files", []) if self.collect_grads else []):
            f.will_need(u)

    def flush(self) -> None:
        self.file.flush()
        for f in getattr(self, "_state_files", []):
            f.flush()


def make_table_store(cfg, layer_id: int, rows: int, dim: int) -> TableStore:
    """The store `cfg.engram_store` names for layer `layer_id` (memory when building on meta)."""
    kind = cfg.engram_store
    if kind == "memory" or torch.empty(0).device.type == "meta":
        return MemoryStore(rows, dim, cfg.init_std)
    seed = ENGRAM_SEED * 7919 + layer_id  # host and mmap start from the same rows
    if kind == "host":
        return HostStore(rows, dim, cfg.init_std, seed)
    return MmapStore(Path(cfg.engram_path) / f"engram_l{layer_id}.table", rows, dim, cfg.init_std, seed)


def table_stores(model: nn.Module) -> list[tuple[str, TableStore]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TableStore)]


def engram_memory_stats(model: nn.Module) -> dict[str, float]:
    """Counters of every store, summed, plus the overall hot-cache hit rate."""
    total: collections.Counter = collections.Counter()
    hits = lookups = 0
    for _, s in table_stores(model):
        total.update(s.counters)
        if s.cache is not None:
            hits, lookups = hits + s.cache.hits, lookups + s.cache.lookups
    out = {f"engram_{k}": float(v) for k, v in total.items()}
    if lookups:
        out["engram_cache_hit_rate"] = hits / lookups
    return out
