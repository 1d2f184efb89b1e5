"""Engram prefetch (issue 8): staged gathers are used only when they match, stay correct when
batch size and sequence length change, see rows written after they began, and serve the
prompt / new-token pattern of decoding."""

from __future__ import annotations

import numpy as np
import torch

from dsv4.model.engram_prefetch import EngramPrefetcher, peek_batch, prefetch_batches
from dsv4.model.transformer import build_model


def _pair(tmp_path):
    torch.manual_seed(0)
    mem = build_model("tiny").eval()
    mm = build_model("tiny", engram_store="mmap", engram_path=str(tmp_path)).eval()
    mm.load_state_dict(mem.state_dict())
    return mem, mm


def test_prefetch_correct_when_batch_and_length_change(tmp_path):
    mem, mm = _pair(tmp_path)
    store = mm.layers[1].engram.table
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 2048, s, generator=gen) for s in ((2, 16), (4, 5), (1, 33), (3, 16), (2, 16))]
    with EngramPrefetcher(mm) as pf, torch.no_grad():
        for ids in seqs:
            pf.submit(ids)
            assert torch.equal(mm(ids), mem(ids))
        assert store.counters["prefetch_hits"] == len(seqs) and store.counters["sync_gathers"] == 0
        # a wrong guess costs a synchronous read, never a wrong answer
        pf.submit(seqs[0])
        assert torch.equal(mm(seqs[1]), mem(seqs[1]))
        assert store.counters["sync_gathers"] == 1
        # the same shape with one token changed does not match either
        other = seqs[4].clone()
        other[1, 7] = (other[1, 7] + 1) % 2048
        pf.submit(seqs[4])
        assert torch.equal(mm(other), mem(other))
        assert store.counters["sync_gathers"] == 2
        # an unused guess stays queued: a later forward of it still hits
        assert torch.equal(mm(seqs[4]), mem(seqs[4]))
        assert store.counters["prefetch_hits"] == len(seqs) + 1


def test_prefetch_rereads_rows_written_after_the_gather(tmp_path):
    _, mm = _pair(tmp_path)
    eng = mm.layers[1].engram
    ids = torch.randint(0, 2048, (2, 12))
    rows = eng.addresses(ids)
    with EngramPrefetcher(mm) as pf:
        pf.submit(ids)
        pf.pool.submit(lambda: None).result()  # the staged gather has run
        changed = torch.unique(rows)[:3]
        eng.table.write(changed, torch.full((3, eng.table.dim), 5.0))
        with torch.no_grad():
            got = eng.retrieve(rows)
    assert eng.table.counters["prefetch_hits"] == 1
    assert torch.equal(got, eng.table.storage[rows].flatten(-2))
    assert (got == 5.0).any()


def test_prefetch_for_prompt_then_each_new_token(tmp_path):
    mem, mm = _pair(tmp_path)
    eng_m, eng = mem.layers[1].engram, mm.layers[1].engram
    ids = torch.randint(0, 2048, (2, 20))
    with EngramPrefetcher(mm) as pf, torch.no_grad():
        pf.submit(ids[:, :12])  # the prompt
        prompt_rows = eng.addresses(ids[:, :12])
        assert torch.equal(eng.retrieve(prompt_rows), eng_m.retrieve(prompt_rows))
        for t in range(12, 20):  # each new token, hashed with its prefix
            new, prefix = ids[:, t:t + 1], ids[:, :t]
            pf.submit(new, prefix_ids=prefix)
            rows = eng.addresses(new, prefix)
            assert torch.equal(rows, eng.addresses(ids[:, :t + 1])[:, -1:])
            assert torch.equal(eng.retrieve(rows), eng_m.retrieve(rows))
    assert eng.table.counters["prefetch_hits"] == 9 and eng.table.counters["sync_gathers"] == 0


def test_prefetch_batches_and_peek_keep_the_loader_exact(tmp_path):
    from dsv4.train.loader import TokenLoader

    _, mm = _pair(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 2048, 5000).astype(np.uint16)
    a = TokenLoader(tokens, 4, 32, seed=3)
    b = TokenLoader(tokens, 4, 32, seed=3)
    for _ in range(5):
        peeked = peek_batch(a)
        got = a.next_batch()
        assert torch.equal(peeked[0], got[0]) and torch.equal(got[0], b.next_batch()[0])
    batches = [b.next_batch() for _ in range(4)]
    with EngramPrefetcher(mm) as pf, torch.no_grad():
        for x, _ in prefetch_batches(pf, batches):
            mm(x)
    assert mm.layers[1].engram.table.counters["prefetch_hits"] == 4


def test_engine_with_mmap_table_prefetches_and_matches_memory(tmp_path):
    """The inference engine (prefill chunks + cached decode, batched) stages every Engram
    gather before the forward: same tokens and log-probs as with the in-memory table."""
    from dsv4.infer.engine import Engine
    from dsv4.infer.sampling import SamplingParams

    mem, mm = _pair(tmp_path)
    prompts = [list(range(5, 30)), [7, 3, 9]]
    params = SamplingParams(max_tokens=12, temperature=0, logprobs=1)
    want = Engine(mem, None, max_batch=2, prefill_chunk=8).generate(prompts, params)
    eng = Engine(mm, None, max_batch=2, prefill_chunk=8)
    got = eng.generate(prompts, params)
    for a, b in zip(want, got, strict=True):
        assert a.token_ids == b.token_ids
        assert [x["logprob"] for x in a.logprobs] == [x["logprob"] for x in b.logprobs]
    store = mm.layers[1].engram.table
    assert store.counters["prefetch_hits"] >= 12 and store.counters["sync_gathers"] == 0
    eng.prefetcher.close()
