"""Prefetch of Engram rows: addresses are known before the forward pass (issue 8; SPEC 1.2).

An Engram layer's rows are a pure function of the token ids (engram_hash), so the rows of
the next batch (training), of a prompt, or of a just-sampled token (decoding) can be
gathered from host memory or from the mmap file in a background thread while the CPU/GPU
is busy with the current step, or with the layers before the first Engram layer:

    pf = EngramPrefetcher(model)
    pf.submit(next_ids)            # addresses now (cheap), row gathers in the background
    ... current step runs ...
    model(next_ids)                # Engram layers find the staged gathers and use them

Decoding one token with cached prefixes: `pf.submit(new_ids, prefix_ids=last_ids)` with
the same ids the engine's Engram cache hashes (prefix = the max_order-1 ids before).

Correctness never depends on the guess: a store uses a staged gather only if its rows
equal the rows the forward computes, and rows written by the optimizer after the gather
began are re-read (engram_store.TableStore). Memory stores in dense mode are skipped
(F.embedding reads the parameter in place).

`prefetch_batches(prefetcher, batches)` wraps a batch iterator for training loops: it
submits batch i+1 when it yields batch i; `peek_batch(loader)` reads a resumable loader's
next batch without consuming it (what the pretraining loop uses).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn


class EngramPrefetcher:
    def __init__(self, model: nn.Module, workers: int = 1):
        from dsv4.model.engram import Engram  # engram imports the store module; avoid a cycle

        self.layers = [m for m in model.modules() if isinstance(m, Engram) and not m.table.dense]
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="engram-prefetch") if self.layers else None
        self.submitted = 0

    @torch.no_grad()
    def submit(self, ids: torch.Tensor, prefix_ids: torch.Tensor | None = None) -> None:
        """Stage the rows every sparse Engram layer will read for `ids` [B, T]."""
        for layer in self.layers:
            layer.table.stage(layer.addresses(ids, prefix_ids), self.pool)
        self.submitted += 1

    def stage_rows(self, layer: nn.Module, rows: torch.Tensor) -> None:
        """Stage precomputed rows for one Engram layer (e.g. from an engine's own hashing)."""
        if not layer.table.dense:
            layer.table.stage(rows, self.pool)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def __enter__(self) -> EngramPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def peek_batch(loader):
    """The batch `loader.next_batch()` will return next, without consuming it (a loader with
    state_dict/load_state_dict, like dsv4.train.loader.TokenLoader): resume stays exact."""
    state = loader.state_dict()
    batch = loader.next_batch()
    loader.load_state_dict(state)
    return batch


def prefetch_batches(prefetcher: EngramPrefetcher, batches: Iterable) -> Iterator:
    """Yield the batches of `batches` ((x, ...) tuples or tensors), each one's Engram rows
    staged while the previous one was being consumed."""
    it = iter(batches)
    try:
        cur = next(it)
    except StopIteration:
        return
    prefetcher.submit(cur[0] if isinstance(cur, (tuple, list)) else cur)
    for nxt in it:
        prefetcher.submit(nxt[0] if isinstance(nxt, (tuple, list)) else nxt)
        yield cur
        cur = nxt
    yield cur
