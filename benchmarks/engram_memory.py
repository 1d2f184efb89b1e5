"""Benchmark: the Engram memory hierarchy (issue 8) -- `flagship` with an Engram table of
>= 10x the backbone's parameters, kept in memory vs memory-mapped on disk with prefetch.

    PYTHONPATH=src python benchmarks/engram_memory.py [--rounds 3 --steps 2 --batch 4 --seq 256]

Configurations (same model, same batches; bf16 autocast on the CPU, as training runs):
  train  memory_dense   table = nn.Parameter, dense Adam (the default `engram_store=memory`)
         memory_sparse  table in RAM, row-wise SparseRowAdam (same optimizer math as mmap)
         mmap_prefetch  table + Adam moments in mmap files (page cache warm), hot-row cache,
                        next batch's rows gathered in a background thread during the step
         mmap_cold      as mmap_prefetch, but before every step the table and state files are
                        evicted from the page cache and the hot cache is cleared; the step's
                        own rows are submitted at its start (overlap: embedding + layer 0 only)
  (mmap_cold uses its own copy of the files, so evicting them never cools the warm run)
  infer  memory         forward (prefill) with the dense in-memory table
         mmap_prefetch  forward with the next batch prefetched
         mmap_cold      as above, page cache and hot cache dropped before every batch

Configurations run interleaved (round robin, `--steps` timed steps each per round, after one
untimed warm-up step) so that the other tenants of a shared machine slow all of them alike;
each number is the median step, in wall-clock time and in process CPU time (all threads,
the prefetch thread included: on a loaded machine the CPU time is the steadier measure of
cost, the wall clock the one that shows I/O waits). Tokens are Zipf-distributed ids (s = 1.1) over the vocab,
as text roughly is. Writes benchmarks/results/engram_memory.json; the table files live in a
temporary directory (--dir) that is deleted at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dsv4.model.engram_prefetch import EngramPrefetcher
from dsv4.model.engram_store import engram_memory_stats, table_stores
from dsv4.model.transformer import build_model
from dsv4.train.config import TrainConfig
from dsv4.train.engram_optim import SparseRowAdam
from dsv4.train.optim import build_optimizers
from dsv4.train.pretrain import train_step


def table_size_for(ratio: float) -> tuple[int, int, int]:
    """(engram_vocab_size, backbone params, table params) for a table >= ratio x backbone."""
    with torch.device("meta"):
        m = build_model("flagship")
    backbone = sum(p.numel() for n, p in m.named_parameters() if "table" not in n)
    cfg = m.config
    slots = len(cfg.engram_layer_ids) * len(cfg.engram_ngram_orders) * cfg.engram_n_heads
    head_dim = cfg.engram_dim // (len(cfg.engram_ngram_orders) * cfg.engram_n_heads)
    size = int(ratio * backbone / (slots * head_dim)) + 1
    with torch.device("meta"):
        m = build_model("flagship", engram_vocab_size=size)
    table = sum(p.numel() for n, p in m.named_parameters() if "table" in n)
    return size, backbone, table


def zipf_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weights = torch.arange(1, vocab + 1, dtype=torch.float64).pow(-1.1)
    perm = torch.randperm(vocab, generator=gen)
    return [perm[torch.multinomial(weights, batch * (seq + 1), replacement=True, generator=gen)]
            .view(batch, seq + 1) for _ in range(n)]


def drop_caches(model) -> None:
    for _, s in table_stores(model):
        if s.kind == "mmap":
            s.file.drop_page_cache()
            for f in getattr(s, "_state_files", []):
                f.drop_page_cache()
            if s.cache is not None:
                s.cache.clear()


class Runner:
    """One configuration: a model, its optimizers, a prefetcher, a cursor into the batches."""

    def __init__(self, name, model, opts, batches, prefetch: bool, cold: bool, train: bool):
        self.name, self.model, self.opts, self.batches = name, model, opts, batches
        self.pf = EngramPrefetcher(model) if prefetch else None
        self.cold, self.train, self.i, self.times, self.cpu = cold, train, 0, [], []
        model.train(train)

    def step(self, timed: bool) -> None:
        b = self.batches[self.i % len(self.batches)]
        nxt = self.batches[(self.i + 1) % len(self.batches)]
        self.i += 1
        x, y = b[:, :-1], b[:, 1:]
        if self.cold:
            drop_caches(self.model)
        t0, c0 = time.perf_counter(), time.process_time()
        if self.pf is not None:
            if self.cold or self.i == 1:
                self.pf.submit(x)  # nothing was prefetched for this batch
            if not self.cold:
                self.pf.submit(nxt[:, :-1])  # gathered while this step computes
        if self.train:
            train_step(self.model, self.opts, x, y, grad_clip=1.0, autocast=True)
        else:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                self.model(x)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if timed:
            self.times.append(dt)
            self.cpu.append(dc)  # all threads of the process, the prefetch thread's work included

    def result(self, tokens: int) -> dict:
        med, cpu = statistics.median(self.times), statistics.median(self.cpu)
        out = {"median_step_s": med, "tokens_per_s": tokens / med, "median_cpu_s": cpu,
               "tokens_per_cpu_s": tokens / cpu, "steps": len(self.times)}
        stats = engram_memory_stats(self.model)
        if "engram_cache_hit_rate" in stats:
            out["hot_cache_hit_rate"] = stats["engram_cache_hit_rate"]
        if "engram_prefetch_hits" in stats:
            out["prefetch_hits"] = stats["engram_prefetch_hits"]
            out["sync_gathers"] = stats.get("engram_sync_gathers", 0.0)
        return out


def run(runners: list[Runner], rounds: int, steps: int, tokens: int) -> dict:
    for r in runners:
        r.step(timed=False)
    for _ in range(rounds):
        for r in runners:
            for _ in range(steps):
                r.step(timed=True)
    return {r.name: r.result(tokens) for r in runners}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=10.0, help="table params / backbone params")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where the table files go (default: a temp dir in /tmp)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "engram_memory.json"))
    args = ap.parse_args()

    size, backbone, table = table_size_for(args.ratio)
    tmp = Path(tempfile.mkdtemp(prefix="engram_bench_", dir=args.dir))
    tokens = args.batch * args.seq
    tcfg = TrainConfig(preset="flagship", out_dir=str(tmp / "o"), data_dir=str(tmp / "d"))
    res: dict = {"preset": "flagship", "engram_vocab_size": size, "backbone_params": backbone,
                 "table_params": table, "table_over_backbone": table / backbone,
                 "table_bytes": table * 4, "batch": args.batch, "seq": args.seq,
                 "threads": torch.get_num_threads(), "rounds": args.rounds, "steps_per_round": args.steps}
    try:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        dense = build_model("flagship", engram_vocab_size=size)
        sd = dense.state_dict()
        sparse = build_model("flagship", engram_vocab_size=size)
        sparse.load_state_dict(sd)
        mm = build_model("flagship", engram_vocab_size=size, engram_store="mmap",
                         engram_path=str(tmp / "warm"))
        t1 = time.perf_counter()
        mm.load_state_dict(sd)  # chunked copy into the file
        res["mmap_load_state_dict_s"] = time.perf_counter() - t1
        res["build_s"] = t1 - t0
        # the cold runs get their own files, so that evicting them never touches the warm ones
        mm_cold = build_model("flagship", engram_vocab_size=size, engram_store="mmap",
                              engram_path=str(tmp / "cold"))
        mm_cold.load_state_dict(sd)
        del sd
        sparse_opt = SparseRowAdam(sparse, tcfg.lr * tcfg.engram_lr_mult, tuple(tcfg.betas),
                                   include_memory=True)
        batches = zipf_batches(8, args.batch, args.seq, dense.config.vocab_size)

        train = [
            Runner("memory_dense", dense, build_optimizers(dense, tcfg), batches, False, False, True),
            Runner("memory_sparse", sparse, build_optimizers(sparse, tcfg) + [sparse_opt], batches,
                   False, False, True),
            Runner("mmap_prefetch", mm, build_optimizers(mm, tcfg), batches, True, False, True),
            Runner("mmap_cold", mm_cold, build_optimizers(mm_cold, tcfg), batches, True, True, True),
        ]
        res["train"] = run(train, args.rounds, args.steps, tokens)
        store = table_stores(mm)[0][1]
        res["train_mmap_resident_fraction_after"] = float(store.file.resident_pages().mean())
        del train
        gc.collect()

        for m in (dense, mm, mm_cold):
            for _, s in table_stores(m):
                s.counters.clear()
                if s.cache is not None:
                    s.cache.clear()
        infer = [Runner("memory", dense, [], batches, False, False, False),
                 Runner("mmap_prefetch", mm, [], batches, True, False, False),
                 Runner("mmap_cold", mm_cold, [], batches, True, True, False)]
        res["infer"] = run(infer, args.rounds, args.steps * 2, tokens)

        tr, inf = res["train"], res["infer"]
        pairs = {"train_mmap_prefetch_over_memory_sparse": (tr, "mmap_prefetch", "memory_sparse"),
                 "train_mmap_prefetch_over_memory_dense": (tr, "mmap_prefetch", "memory_dense"),
                 "train_mmap_cold_over_memory_sparse": (tr, "mmap_cold", "memory_sparse"),
                 "infer_mmap_prefetch_over_memory": (inf, "mmap_prefetch", "memory"),
                 "infer_mmap_cold_over_memory": (inf, "mmap_cold", "memory")}
        res["ratios"] = {k: d[a]["tokens_per_s"] / d[b]["tokens_per_s"] for k, (d, a, b) in pairs.items()}
        res["ratios_cpu_time"] = {k: d[a]["tokens_per_cpu_s"] / d[b]["tokens_per_cpu_s"]
                                  for k, (d, a, b) in pairs.items()}
        res["load_average_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
