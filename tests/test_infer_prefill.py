"""Long prompt chunks (issue 5's long-context prefill): the windowed sub-chunk attention, the
blocked indexer top-k and the log-sum-exp merge of HCA entries give what short chunks and a
full recompute give."""

import pytest
import torch

import dsv4.infer.attn_cache as attn_cache
import dsv4.infer.windowed as windowed
import dsv4.model.indexer as indexer
from dsv4.config import make_config
from dsv4.infer.engine import Engine
from dsv4.infer.sampling import SamplingParams
from dsv4.model.indexer import Indexer, tie_broken_keys, topk_earliest, topk_indices
from dsv4.model.rope import rope_frequencies
from dsv4.model.transformer import build_model


@pytest.fixture(scope="module")
def model():
    # flagship's components (CSA top-16, HCA, sink, MQA, mHC, MoE, Engram, MTP) with a short window
    torch.manual_seed(0)
    return build_model("flagship", max_seq_len=512, window_size=16).eval()


def run(model, prompt, chunk, new_tokens=8):
    eng = Engine(model, None, max_batch=1, autocast=False, prefill_chunk=chunk)
    return eng.generate(prompt, SamplingParams(max_tokens=new_tokens, temperature=0, logprobs=3,
                                               ignore_eos=True))[0]


@pytest.mark.parametrize("compiled", [False, True])
def test_long_chunks_equal_short_chunks_and_full_recompute(model, compiled, monkeypatch):
    calls = {"windowed": 0, "merged": 0}

    def spy(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(attn_cache, "windowed_attend", spy("windowed", attn_cache.windowed_attend))
    monkeypatch.setattr(windowed, "_dense_lse", spy("merged", windowed._dense_lse))
    if compiled:  # the compiled index scores (Engine(compile=True)) in the prefill and decode steps
        monkeypatch.setitem(indexer._SCORE, "fn", torch.compile(indexer.head_scores_fused, dynamic=True))
    torch.manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (420,)).tolist()  # 105 CSA blocks >> top-16
    long = run(model, prompt, 200)  # chunks of 200, 200, 20: sub-chunks of 64 for the first two
    assert calls["windowed"] > 0 and calls["merged"] > 0  # the long-chunk path ran, HCA merge included
    n_long = calls["windowed"]
    short = run(model, prompt, 7)
    assert calls["windowed"] == n_long  # chunks of 7 take the per-token path
    assert short.token_ids == long.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([prompt + long.token_ids])).float(), -1)
    ref = ref[0, len(prompt) - 1:-1]
    for out in (long, short):
        got = torch.tensor([lp["logprob"] for lp in out.logprobs])
        want = ref.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
        assert (got - want).abs().max() < 1e-4
        top = torch.tensor([[v for _, v in lp["top"]] for lp in out.logprobs])
        assert (top - ref.topk(3, -1).values).abs().max() < 1e-4


def test_dense_lse_is_softmax_and_logsumexp(monkeypatch):
    monkeypatch.setattr(windowed, "SCORE_BLOCK", 200 * 50)  # 600 rows: three row blocks of 200
    torch.manual_seed(0)
    q, e = torch.randn(600, 16), torch.randn(50, 16)
    out, lse = windowed._dense_lse(q, e, 0.7)
    z = q @ e.T * 0.7
    torch.testing.assert_close(out, z.softmax(-1) @ e)
    torch.testing.assert_close(lse, z.logsumexp(-1, keepdim=True))


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("n_blocks,queries_per_step", [(5, 8), (40, 8), (40, 64)])
def test_select_equals_topk_of_the_scores_with_ties_and_ragged_rows(n_blocks, queries_per_step, compiled,
                                                                    monkeypatch):
    """`Indexer.select` (blocked, no [T, N] scores) picks the set `topk_indices(scores)` picks:
    ties (duplicated keys) to the earliest block, a block only once complete, rows holding
    fewer blocks; with N <= top-k every visible block."""
    cfg = make_config("baseline", dim=48, n_heads=4, head_dim=16, rope_head_dim=8, q_lora_rank=24,
                      shared_kv=True, index_n_heads=4, index_head_dim=12, index_topk=6, max_seq_len=512,
                      n_layers=2, compress_ratios=[0, 4], window_size=8, vocab_size=256)
    torch.manual_seed(0)
    ind = Indexer(cfg, 24, 4)
    B, T, start = 2, 50, 130
    x, qr = torch.randn(B, T, 48), torch.randn(B, T, 24)
    keys = torch.randn(B, 4, 12)[:, torch.randint(0, 4, (n_blocks,))]  # 4 distinct keys: exact ties
    q_pos = torch.arange(start, start + T).expand(B, T)
    ends = ((torch.arange(n_blocks) + 1) * 4 - 1).repeat(B, 1)
    if n_blocks > 5:
        ends[1, 30:] = -1  # row 1 holds 30 blocks (a ragged batch)
    # positions up to start + T: some blocks complete inside this query block
    ends = torch.where(ends > start + T, -1, ends)
    freqs = rope_frequencies(cfg, start + T, kind="compress")[start:]
    monkeypatch.setattr(indexer, "SCORE_BLOCK", queries_per_step * n_blocks)
    if compiled:
        monkeypatch.setitem(indexer._SCORE, "fn", torch.compile(indexer.head_scores_fused, dynamic=True))
    with torch.no_grad():
        idx, ok = ind.select(x, qr, keys, freqs, q_pos, ends, cfg.index_topk)
        visible = (ends.unsqueeze(1) >= 0) & (ends.unsqueeze(1) <= q_pos.unsqueeze(2))
        want_idx, want_ok = topk_indices(ind.scores(x, qr, keys, freqs), visible, cfg.index_topk)

    def picked(i, o):
        return torch.zeros(B, T, n_blocks, dtype=torch.bool).scatter_(-1, i, o)

    assert torch.equal(picked(idx, ok), picked(want_idx, want_ok))
    assert picked(idx, ok).any()


def test_compiled_head_scores_do_not_depend_on_shapes():
    """The opt-in inductor kernel of the index scores' head sum (`set_score_compile`) is the
    fused function's math, and a row's scores come out the same bits in a one-query call (decode)
    as in a many-query call (prefill), with any number of blocks after them."""
    fn = torch.compile(indexer.head_scores_fused, dynamic=True)
    torch.manual_seed(0)
    for r, n in [(16, 1000), (5, 4099), (64, 333), (3, 17), (8, 5000)]:
        for dtype in (torch.bfloat16, torch.float32):
            dots = (torch.randn(r, 4, n) * 3).to(dtype)
            w = torch.randn(r, 4) * 0.1
            many = fn(dots, w)
            torch.testing.assert_close(many, indexer.head_scores_fused(dots, w))
            torch.testing.assert_close(many, indexer._head_scores(dots.clone(), w))
            for i in (0, r // 2, r - 1):
                for m in (n, n // 2 + 1, 1):
                    one = fn(dots[i:i + 1, :, :m].contiguous(), w[i:i + 1])
                    assert torch.equal(one[0], many[i, :m]), (r, n, dtype, i, m)


@pytest.mark.parametrize("group", [1, 3, 8])
def test_topk_by_group_maxima_is_the_tie_broken_topk(group, monkeypatch):
    """Long rows' top-k (group maxima first) is the top-k of the tie-broken keys over the whole
    row, in their order: many tied values (zeros, small integers), -inf cells, whole -inf rows,
    a short last group."""
    monkeypatch.setattr(indexer, "TOPK_GROUP", group)
    torch.manual_seed(0)
    grouped = False
    for n, k in [(100, 5), (257, 6), (97, 1), (64, 16)]:
        s = torch.randint(-2, 4, (9, n)).float().relu_()
        s[3:6] = torch.randn(3, n)
        s[:, torch.rand(n) < 0.3] = float("-inf")
        s[7] = float("-inf")
        s[8, n // 2:] = float("-inf")
        vals, idx = topk_earliest(s, k)
        want = tie_broken_keys(s, s > float("-inf")).topk(k, dim=-1).indices
        assert torch.equal(idx, want), (n, k)
        assert torch.equal(vals, s.gather(-1, want))
        if n >= 4 * k * group:
            grouped = True
    assert grouped  # at least one case took the grouped path


def test_long_chunks_gqa_window_without_sink_or_shared_kv():
    """The sub-chunk path with 2 KV heads, separate values and no sink (a window-only GQA model)."""
    torch.manual_seed(0)
    m = build_model("baseline", max_seq_len=512, window_size=16, n_kv_heads=2).eval()
    prompt = torch.randint(0, m.config.vocab_size, (300,)).tolist()
    long, short = run(m, prompt, 150), run(m, prompt, 5)
    assert long.token_ids == short.token_ids
    got = torch.tensor([lp["logprob"] for lp in long.logprobs])
    want = torch.tensor([lp["logprob"] for lp in short.logprobs])
    assert (got - want).abs().max() < 1e-4
