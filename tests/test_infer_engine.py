"""The inference engine: cached decode equals full recompute, batching and speculation change nothing."""

import pytest
import torch

from dsv4.infer.engine import Engine
from dsv4.infer.sampling import SamplingParams
from dsv4.infer.speculative import MTPDrafter
from dsv4.model.transformer import build_model

PROMPTS = [list(range(5, 16)), [7, 3, 9], list(range(100, 140))]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("tiny", max_seq_len=512).eval()
    with torch.no_grad():  # Engram's conv is zero at init: make it count, so its cached state is tested
        for layer in m.layers:
            if getattr(layer, "engram", None) is not None:
                layer.engram.conv_weight.normal_(0, 0.5)
    return m


def full_logprobs(model, ids, autocast=False):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return torch.log_softmax(model(torch.tensor([ids])).float(), dim=-1)[0]


@pytest.mark.parametrize("autocast,tol", [(False, 1e-4), (True, 0.15)])
def test_cached_decode_matches_full_recompute(model, autocast, tol):
    """>= 300 cached decode steps (prefill in odd chunks) vs recomputing the whole sequence."""
    prompt = PROMPTS[0]
    eng = Engine(model, None, max_batch=2, autocast=autocast, prefill_chunk=4)
    out = eng.generate(prompt, SamplingParams(max_tokens=320, temperature=0, logprobs=5))[0]
    assert len(out.token_ids) == 320 and out.finish_reason == "length"
    ref = full_logprobs(model, prompt + out.token_ids, autocast)[len(prompt) - 1:-1]
    got = torch.tensor([lp["logprob"] for lp in out.logprobs])
    want = ref.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
    assert (got - want).abs().max() < tol
    # the top-5 alternatives agree too (values; ids may swap only on near-ties in bf16)
    got_top = torch.tensor([[v for _, v in lp["top"]] for lp in out.logprobs])
    assert (got_top - ref.topk(5, dim=-1).values).abs().max() < tol
    if not autocast:  # fp32: greedy tokens are exactly the argmax of the recomputed logits
        assert torch.equal(ref.argmax(-1), torch.tensor(out.token_ids))


def test_bf16_prefill_fp32_decode_is_close_to_fp32(model):
    """The default precision mode (bf16 prompt chunks, fp32 decode steps)."""
    prompt = list(range(3, 80))
    out = Engine(model, None, max_batch=1, prefill_chunk=32).generate(
        prompt, SamplingParams(max_tokens=60, temperature=0, logprobs=0, ignore_eos=True))[0]
    ref = full_logprobs(model, prompt + out.token_ids)[len(prompt) - 1:-1]
    got = torch.tensor([lp["logprob"] for lp in out.logprobs])
    assert (got - ref.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]).abs().max() < 0.15


@pytest.mark.parametrize("preset", ["lite", "flagship"])
def test_cached_decode_matches_full_recompute_other_presets(preset):
    """Every V4 preset: windows wrap (64) and CSA/HCA blocks complete many times over."""
    torch.manual_seed(0)
    m = build_model(preset, max_seq_len=256).eval()
    prompt = list(range(40, 90))
    out = Engine(m, None, max_batch=1, autocast=False, prefill_chunk=24).generate(
        prompt, SamplingParams(max_tokens=150, temperature=0, logprobs=0, ignore_eos=True))[0]
    ref = full_logprobs(m, prompt + out.token_ids)[len(prompt) - 1:-1]
    got = torch.tensor([lp["logprob"] for lp in out.logprobs])
    assert (got - ref.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]).abs().max() < 1e-4
    assert torch.equal(ref.argmax(-1), torch.tensor(out.token_ids))


def test_temperature_zero_and_seed_are_deterministic(model):
    eng = Engine(model, None, max_batch=2, autocast=False)
    greedy = SamplingParams(max_tokens=40, temperature=0)
    assert eng.generate(PROMPTS[1], greedy)[0].token_ids == eng.generate(PROMPTS[1], greedy)[0].token_ids
    s1 = SamplingParams(max_tokens=40, temperature=1.0, seed=123)
    s2 = SamplingParams(max_tokens=40, temperature=1.0, seed=124)
    a, b, c = (eng.generate(PROMPTS[1], p)[0].token_ids for p in (s1, s1, s2))
    assert a == b and a != c


def test_batched_equals_unbatched_and_queueing(model):
    """A ragged batch (different prompt lengths, staggered finishes, more requests than slots)
    gives each request exactly what it gets alone."""
    params = [SamplingParams(max_tokens=n, temperature=t, seed=s, top_k=k, top_p=p)
              for n, t, s, k, p in [(30, 0.0, 1, 0, 1.0), (12, 0.9, 2, 50, 1.0), (25, 1.0, 3, 0, 0.9)]]
    prompts = PROMPTS + [PROMPTS[1]]
    params = params + [SamplingParams(max_tokens=20, temperature=0.7, seed=9)]
    alone = [Engine(model, None, max_batch=1, autocast=False).generate(p, sp)[0].token_ids
             for p, sp in zip(prompts, params, strict=True)]
    together = Engine(model, None, max_batch=3, autocast=False, prefill_chunk=8).generate(prompts, params)
    assert [o.token_ids for o in together] == alone
    assert [len(t) for t in alone] == [30, 12, 25, 20]


def test_top_k_one_is_greedy_and_top_p_tiny_is_greedy(model):
    eng = Engine(model, None, max_batch=1, autocast=False)
    greedy = eng.generate(PROMPTS[2], SamplingParams(max_tokens=20, temperature=0))[0].token_ids
    for sp in (SamplingParams(max_tokens=20, temperature=1.5, top_k=1, seed=5),
               SamplingParams(max_tokens=20, temperature=1.5, top_p=1e-6, seed=5)):
        assert eng.generate(PROMPTS[2], sp)[0].token_ids == greedy


def test_cancel_frees_slot(model):
    eng = Engine(model, None, max_batch=1, autocast=False)
    seq = eng.submit(PROMPTS[0], SamplingParams(max_tokens=1000, temperature=0))
    for _ in range(3):
        eng.step()
    assert eng.free_slots == [] and seq.slot == 0
    eng.cancel(seq)
    assert eng.free_slots == [0] and not eng.has_work() and seq.finish_reason == "cancelled"
    # the slot is reusable and the stale cache does not leak into the next request
    ref = Engine(model, None, max_batch=1, autocast=False).generate(PROMPTS[1], SamplingParams(
        max_tokens=10, temperature=0))[0].token_ids
    assert eng.generate(PROMPTS[1], SamplingParams(max_tokens=10, temperature=0))[0].token_ids == ref


def test_prompt_too_long_is_rejected(model):
    eng = Engine(model, None, max_batch=1, autocast=False)
    with pytest.raises(ValueError, match="context"):
        eng.submit(list(range(512)), SamplingParams())
    # a prompt that fits stops at the context end with finish_reason "length"
    out = eng.generate(list(range(500)), SamplingParams(max_tokens=100, temperature=0))[0]
    assert len(out.token_ids) == 12 and out.finish_reason == "length"


# ---- speculative decoding -------------------------------------------------------------------


def self_drafter(engine, seqs, k):
    """Drafts with the model itself (greedy, no cache): every draft is the target's argmax."""
    out = []
    for s in seqs:
        ids = list(s.ids)
        for _ in range(k):
            with torch.no_grad():
                ids.append(int(engine.model(torch.tensor([ids]))[0, -1].argmax()))
        out.append(ids[-k:])
    return torch.tensor(out)


def random_drafter(engine, seqs, k):
    g = torch.Generator().manual_seed(sum(len(s.ids) for s in seqs))
    return torch.randint(0, 50, (len(seqs), k), generator=g)


@pytest.mark.parametrize("drafter,k", [(self_drafter, 3), (random_drafter, 4)])
def test_speculative_equals_plain_at_temperature_zero(model, drafter, k):
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (40, 23, 31)]
    plain = Engine(model, None, max_batch=3, autocast=False).generate(PROMPTS, params)
    eng = Engine(model, None, max_batch=3, autocast=False, draft_fn=drafter, num_draft=k)
    spec = eng.generate(PROMPTS, params)
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    st = eng.spec_stats
    rate = st["accepted"] / st["drafted"]
    if drafter is self_drafter:
        assert rate > 0.9  # every draft agrees except those cut off by a finished request
        assert st["steps"] < 40 / 3 + 3
    else:
        assert rate < 0.2


def test_speculative_sampling_matches_plain_with_seed(model):
    """One uniform per emitted token from the request's generator: sampled outputs match too."""
    params = SamplingParams(max_tokens=30, temperature=0.8, seed=11)
    plain = Engine(model, None, max_batch=1, autocast=False).generate(PROMPTS[0], params)[0]
    spec = Engine(model, None, max_batch=1, autocast=False, draft_fn=self_drafter,
                  num_draft=2).generate(PROMPTS[0], params)[0]
    assert spec.token_ids == plain.token_ids


def test_mtp_speculative_equals_plain_and_drafts_match_full_recompute(model):
    """The MTP head drafts through its own cache: each draft equals `model.mtp_draft` on the
    whole sequence, and verified output equals plain decoding."""
    assert model.mtp is not None  # the tiny preset has every component on
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (40, 25, 30)]
    plain = Engine(model, None, max_batch=3, autocast=False, prefill_chunk=16).generate(PROMPTS, params)
    drafter, seen = MTPDrafter(), []

    def spy(engine, seqs, k):
        out = drafter(engine, seqs, k)
        seen.extend((list(s.ids), int(t[0])) for s, t in zip(seqs, out, strict=True))
        return out

    spy.needs_streams = True
    eng = Engine(model, None, max_batch=3, autocast=False, draft_fn=spy, num_draft=1, prefill_chunk=16)
    assert [o.token_ids for o in eng.generate(PROMPTS, params)] == [o.token_ids for o in plain]
    checked = 0
    for ids, draft in seen[::5]:
        nxt, want = model.mtp_draft(torch.tensor([ids[:-1]]))
        assert int(nxt[0]) == ids[-1]  # greedy: the main head's token is the sequence's last
        assert draft == int(want[0])
        checked += 1
    assert checked >= 10 and eng.spec_stats["steps"] > 0
