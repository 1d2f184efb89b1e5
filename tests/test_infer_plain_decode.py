"""The plain model's one-token decode path (dsv4.infer.plain_decode) computes what the generic
cached forward and a full recompute compute: for MHA and GQA, partial RoPE, the SwiGLU clamp and
tied embeddings, in ragged batches, with bf16 weights, and after the weights change in place."""

import pytest
import torch

from dsv4.infer import plain_decode
from dsv4.infer.engine import Engine
from dsv4.infer.sampling import SamplingParams
from dsv4.model.rope import apply_rope, rope_table
from dsv4.model.transformer import build_model

SMALL = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, head_dim=16, max_seq_len=512)
VARIANTS = [{}, dict(n_kv_heads=2, rope_head_dim=8, swiglu_limit=0.05, tie_embeddings=True)]
PROMPTS = [list(range(5, 16)), [7, 3, 9], list(range(100, 140))]


def plain(**overrides):
    torch.manual_seed(0)
    return build_model("baseline", **{**SMALL, **overrides}).eval()


def full_logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).float(), dim=-1)[0]


def test_rope_on_the_fast_paths_layout_gives_the_models_bits():
    """The fast path rotates q and k of all heads as [B, n, D] with one position per row; that
    gives the same bits as the model's [B, T=1, n, D] call (fp32), so it does not drift from
    the generic path."""
    torch.manual_seed(0)
    f = rope_table(16, 300, 10000.0)[[3, 77, 250]]  # three rows at different positions
    q = torch.randn(3, 4, 16)
    with torch.no_grad():
        assert torch.equal(apply_rope(q, f), apply_rope(q.unsqueeze(1), f.unsqueeze(1))[:, 0])
    partial = rope_table(8, 300, 10000.0)[[3, 77, 250]]  # RoPE on the last 8 of 16 dims
    with torch.no_grad():
        assert torch.equal(apply_rope(q, partial), apply_rope(q.unsqueeze(1), partial.unsqueeze(1))[:, 0])


def test_supports_only_plain_models():
    assert plain_decode.supports(plain())
    for preset in ("tiny", "lite"):
        m = build_model(preset, max_seq_len=64)
        assert not plain_decode.supports(m)
        with pytest.raises(ValueError):
            Engine(m, None, weight_dtype=torch.bfloat16)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_fast_decode_matches_full_recompute(overrides):
    """>= 300 fast decode steps (prefill in odd chunks) vs recomputing the whole sequence."""
    model = plain(**overrides)
    eng = Engine(model, None, max_batch=2, autocast=False, prefill_chunk=4)
    assert eng.fast is not None
    prompt = PROMPTS[0]
    out = eng.generate(prompt, SamplingParams(max_tokens=320, temperature=0, logprobs=5, ignore_eos=True))[0]
    ref = full_logprobs(model, prompt + out.token_ids)[len(prompt) - 1:-1]
    got = torch.tensor([lp["logprob"] for lp in out.logprobs])
    assert (got - ref.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]).abs().max() < 1e-4
    assert torch.equal(ref.argmax(-1), torch.tensor(out.token_ids))


@pytest.mark.parametrize("overrides", VARIANTS)
def test_fast_decode_equals_generic_path_in_ragged_batches(overrides):
    model = plain(**overrides)
    params = SamplingParams(max_tokens=40, temperature=0.8, seed=3, logprobs=3, ignore_eos=True)
    outs = [Engine(model, None, max_batch=3, autocast=False, fast_decode=fast).generate(PROMPTS, params)
            for fast in (True, False)]
    for a, b in zip(*outs, strict=True):
        assert a.token_ids == b.token_ids
        la = torch.tensor([lp["logprob"] for lp in a.logprobs])
        lb = torch.tensor([lp["logprob"] for lp in b.logprobs])
        assert (la - lb).abs().max() < 1e-5


def test_bf16_weights_are_close_to_fp32():
    """bf16 Linear weights (fp32 stream, norms, attention, cache): logprobs within bf16 tolerance."""
    model = plain()
    prompt = list(range(3, 80))
    out = Engine(model, None, max_batch=1, weight_dtype=torch.bfloat16).generate(
        prompt, SamplingParams(max_tokens=60, temperature=0, logprobs=0, ignore_eos=True))[0]
    ref = full_logprobs(model, prompt + out.token_ids)[len(prompt) - 1:-1]
    got = torch.tensor([lp["logprob"] for lp in out.logprobs])
    err = (got - ref.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]).abs().max()
    assert 0 < err < 0.15  # not exact (the weights were rounded), but close


def test_weights_changed_in_place_are_repacked():
    """An optimizer step between generations (in-place update) reaches the packed weights."""
    model = plain()
    eng = Engine(model, None, max_batch=1, autocast=False)
    params = SamplingParams(max_tokens=20, temperature=0, logprobs=0, ignore_eos=True)
    before = eng.generate(PROMPTS[2], params)[0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = eng.generate(PROMPTS[2], params)[0]
    want = Engine(model, None, max_batch=1, autocast=False, fast_decode=False).generate(PROMPTS[2], params)[0]
    assert after.token_ids == want.token_ids and after.token_ids != before.token_ids
    got = torch.tensor([lp["logprob"] for lp in after.logprobs])
    ref = torch.tensor([lp["logprob"] for lp in want.logprobs])
    assert (got - ref).abs().max() < 1e-5
