"""The one-token decode paths (attn_decode, MoE `route_one`, host mHC coefficients) compute
what the general cached paths compute, through windows wrapping, CSA/HCA blocks completing,
the indexer picking among more blocks than its top-k, and speculative rollback."""

import pytest
import torch

import dsv4.infer.attn_cache as attn_cache
from dsv4.infer import attn_decode
from dsv4.infer.engine import Engine
from dsv4.infer.sampling import SamplingParams
from dsv4.model import mhc
from dsv4.model.moe import MoE
from dsv4.model.transformer import build_model


def _generate(model, prompt, n, fast: bool, monkeypatch, **kw):
    with monkeypatch.context() as mp:
        if not fast:
            mp.setattr(attn_cache, "can_decode_one", lambda *a: False)
        return Engine(model, None, max_batch=1, autocast=False, **kw).generate(
            prompt, SamplingParams(max_tokens=n, temperature=0, logprobs=0, ignore_eos=True))[0]


@pytest.mark.parametrize("preset", ["tiny", "flagship"])
def test_one_token_attention_equals_general_path(preset, monkeypatch):
    torch.manual_seed(0)
    model = build_model(preset, max_seq_len=512).eval()
    calls = []
    real = attn_decode.decode_one
    monkeypatch.setattr(attn_cache, "decode_one", lambda *a: calls.append(1) or real(*a))
    prompt = list(range(5, 40))
    # 200 tokens: 64-token windows wrap, blocks of 4 and 16 complete, N > index_topk
    fast = _generate(model, prompt, 200, True, monkeypatch)
    assert len(calls) > 100  # the short path really ran
    slow = _generate(model, prompt, 200, False, monkeypatch)
    assert fast.token_ids == slow.token_ids
    a = torch.tensor([lp["logprob"] for lp in fast.logprobs])
    b = torch.tensor([lp["logprob"] for lp in slow.logprobs])
    assert (a - b).abs().max() < 1e-4


def test_one_token_steps_after_speculative_rollback(monkeypatch):
    """Drafts written ahead and rolled back, then one-token steps near the end of the
    context (where k shrinks to 0): stale ring cells and dropped blocks stay invisible."""
    torch.manual_seed(0)
    model = build_model("tiny", max_seq_len=160).eval()
    prompt = list(range(3, 30))

    def bad_drafts(engine, seqs, k):  # always wrong after the first: rollback every step
        return torch.full((len(seqs), k), 7, dtype=torch.long)

    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    spec = Engine(model, None, max_batch=1, draft_fn=bad_drafts, num_draft=3).generate(prompt, params)[0]
    plain = Engine(model, None, max_batch=1).generate(prompt, params)[0]
    assert spec.token_ids == plain.token_ids and len(plain.token_ids) == 160 - len(prompt)


def test_route_one_equals_gate():
    torch.manual_seed(0)
    for layer in (0, 3):  # hash-routed and learned routing (flagship: 1 hash layer)
        moe = MoE(build_model("flagship").config, layer_id=layer).eval()
        moe.gate.bias.normal_(0, 0.01)
        for t in range(8):
            x, ids = torch.randn(1, moe.gate.weight.shape[1]), torch.tensor([t * 11])
            with torch.no_grad():
                w, e = moe.gate(x, ids)
                w1, e1 = moe.gate.route_one(x, ids)
            assert e[0].tolist() == e1
            assert (w[0] - torch.tensor(w1)).abs().max() < 1e-6


def test_host_coefficients_equal_tensor_path():
    cfg = build_model("tiny").config
    hc = mhc.HyperConnection(cfg)
    with torch.no_grad():
        hc.bias.normal_()
        hc.alpha.fill_(0.5)
        hc.phi.normal_(0, 0.1)
        xs = torch.randn(1, cfg.hc_mult, cfg.dim)
        pre, post, comb_t = mhc.one_token_coefficients(hc, xs)
        args = (xs, hc.phi, hc.alpha, hc.bias, hc.n, hc.eps, hc.norm_eps, hc.iters, hc.unconstrained)
        h, post_t, comb = mhc._nograd_premix(*args, loop_sinkhorn=True)
    assert (torch.bmm(pre, xs) - h).abs().max() < 1e-5
    assert (post[..., 0] - post_t).abs().max() < 1e-6
    assert (comb_t.transpose(1, 2) - comb).abs().max() < 1e-6
    with torch.no_grad():  # a parameter update is seen (the cached gate floats are re-read)
        hc.alpha.fill_(0.1)
        h2, _, _ = mhc._nograd_premix(*args, loop_sinkhorn=True)
        pre2, _, _ = mhc.one_token_coefficients(hc, xs)
    assert (torch.bmm(pre2, xs) - h2).abs().max() < 1e-5


def test_prepacked_weights_give_the_same_tokens():
    """Engine(prepack=True): [in, out] storage, same shapes and maths, same greedy tokens."""
    torch.manual_seed(0)
    model = build_model("tiny", max_seq_len=256).eval()
    params = SamplingParams(max_tokens=60, temperature=0, logprobs=0, ignore_eos=True)
    prompt = list(range(4, 50))
    want = Engine(model, None, max_batch=1, autocast=False).generate(prompt, params)[0]
    got = Engine(model, None, max_batch=1, autocast=False, prepack=True).generate(prompt, params)[0]
    w = model.layers[0].attn.wq_a.weight
    assert not w.is_contiguous() and w.stride(0) == 1  # stored [in, out] (a column slice of its pack)
    assert got.token_ids == want.token_ids
    a = torch.tensor([lp["logprob"] for lp in got.logprobs])
    b = torch.tensor([lp["logprob"] for lp in want.logprobs])
    assert (a - b).abs().max() < 1e-4


def test_load_engine_prepacks_on_cpu(tmp_path):
    """The engine owns a model it loaded: its weights are prepacked by default, same tokens."""
    from dsv4.infer.load import load_engine
    from serve_fixtures import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path, max_seq_len=128)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    packed = load_engine(ckpt, max_batch=1, autocast=False)
    plain = load_engine(ckpt, max_batch=1, autocast=False, prepack=False)
    assert not packed.model.layers[0].attn.wkv.weight.is_contiguous()
    assert plain.model.layers[0].attn.wkv.weight.is_contiguous()
    prompt = list(range(5, 30))
    assert packed.generate(prompt, params)[0].token_ids == plain.generate(prompt, params)[0].token_ids


@pytest.mark.parametrize("inverse", [False, True])
def test_rope_one_token_in_place_equals_complex_product(inverse):
    """apply_rope's fp32 inference form (the tail of a copy rotated in place) gives the bits of
    the complex product of the rope dims, the head dims untouched, for strided inputs too."""
    from dsv4.model.rope import apply_rope

    torch.manual_seed(0)
    f = torch.polar(torch.ones(1, 1, 16), torch.randn(1, 1, 16) * 10)
    for x in (torch.randn(1, 1, 4, 64), torch.randn(1, 1, 64, 3).transpose(2, 3)):
        with torch.no_grad():
            got = apply_rope(x, f, inverse=inverse)
        c = torch.view_as_complex(x[..., 32:].contiguous().unflatten(-1, (16, 2)))
        g = f.unsqueeze(-2)
        want = torch.cat([x[..., :32], torch.view_as_real(c * (g.conj() if inverse else g)).flatten(-2)], -1)
        assert torch.equal(got, want)
        assert (got - apply_rope(x, f, inverse=inverse)).abs().max() < 1e-5  # the autograd form
