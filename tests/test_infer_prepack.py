"""Prepacked weights (infer/prepack.py): projections of one input packed side by side give the
values the separate projections give, the one-token decode really reads them, and a wrong
packed output would be caught by the same comparison."""

import pytest
import torch

import dsv4.model.packed as packed
from dsv4.infer.engine import Engine
from dsv4.infer.prepack import attn_input_weights, prepack_weights
from dsv4.infer.sampling import SamplingParams
from dsv4.model.attention import Attention
from dsv4.model.moe import Expert, MoE
from dsv4.model.packed import packed_outputs
from dsv4.model.transformer import build_model


def _model(preset="tiny"):
    torch.manual_seed(0)
    return build_model(preset, max_seq_len=256).eval()


def _generate(model, prepack: bool):
    params = SamplingParams(max_tokens=70, temperature=0, logprobs=0, ignore_eos=True)
    eng = Engine(model, None, max_batch=1, autocast=False, prepack=prepack)
    out = eng.generate(list(range(4, 70)), params)[0]
    return out.token_ids, torch.tensor([lp["logprob"] for lp in out.logprobs])


@torch.no_grad()  # (with grad on, the packed path stands aside: see the training test)
def test_packed_gemv_equals_separate_gemvs():
    model = _model()
    prepack_weights(model)
    x = torch.randn(1, 1, model.config.dim)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert {a.ratio for a in attns} == {0, 4, 16}  # sliding, CSA and HCA layers all packed
    for attn in attns:
        weights = attn_input_weights(attn)
        parts = packed_outputs(attn, "x", x)
        assert parts is not None and len(parts) == len(weights)
        for w, y in zip(weights, parts, strict=True):
            assert (w is None) == (y is None)
            if w is not None:  # the very same dot products: equal bits
                assert torch.equal(y, torch.nn.functional.linear(x, w))
    expert = next(m for m in model.modules() if isinstance(m, Expert))
    h1, h3 = packed_outputs(expert, "w13", x)
    assert torch.equal(h1, x @ expert.w1.weight.t()) and torch.equal(h3, x @ expert.w3.weight.t())
    moe = next(m for m in model.modules() if isinstance(m, MoE))
    logits, h1, h3 = packed_outputs(moe, "gate_w13", x)
    sh = moe.shared_experts
    assert torch.equal(logits, torch.nn.functional.linear(x, moe.gate.weight))
    assert torch.equal(h1, x @ sh.w1.weight.t()) and torch.equal(h3, x @ sh.w3.weight.t())


@torch.no_grad()
def test_packed_group_dropped_when_parameters_move():
    model = _model()
    prepack_weights(model)
    attn = model.layers[1].attn
    x = torch.randn(1, 1, model.config.dim)
    assert packed_outputs(attn, "x", x) is not None
    attn.compressor.wgate.weight.data = attn.compressor.wgate.weight.data.clone()  # one in the middle
    assert packed_outputs(attn, "x", x) is None  # its slice of the buffer is stale: not used
    model.double()  # every parameter re-allocated
    assert packed_outputs(model.layers[2].attn, "x", x.double()) is None


def test_training_a_prepacked_model_reaches_the_parameters():
    """The packed buffers are plain tensors: with grad on, the experts read their own weights."""
    model = _model()
    prepack_weights(model)
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    loss, _ = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    expert = next(m for m in model.modules() if isinstance(m, Expert) and m.w1.weight.grad is not None)
    assert expert.w3.weight.grad.abs().sum() > 0
    moe = next(m for m in model.modules() if isinstance(m, MoE))
    assert moe.shared_experts.w1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["tiny", "flagship"])
def test_packed_decode_same_tokens_and_used(preset, monkeypatch):
    want_ids, want_lp = _generate(_model(preset), prepack=False)
    hits = []
    real = packed.packed_outputs

    def counting(owner, name, x):
        out = real(owner, name, x)
        hits.append(out is not None)
        return out

    monkeypatch.setattr("dsv4.infer.attn_decode.packed_outputs", counting)
    monkeypatch.setattr("dsv4.model.moe.packed_outputs", counting)
    got_ids, got_lp = _generate(_model(preset), prepack=True)
    assert sum(hits) > 100 and all(hits)  # the packed GEMVs ran, never fell back
    assert got_ids == want_ids
    assert (got_lp - want_lp).abs().max() < 1e-4


@pytest.mark.parametrize("where,group,i,j", [("dsv4.infer.attn_decode", "x", 4, 5),
                                             ("dsv4.model.moe", "gate_w13", 1, 2)])
def test_a_wrong_packed_output_is_caught(where, group, i, j, monkeypatch):
    """Planted error: two outputs of a packed split swapped (the compressor's kv and gate; the
    shared expert's gate and up projections): the same comparison sees it."""
    want_ids, want_lp = _generate(_model(), prepack=False)
    real = packed.packed_outputs

    def swapped(owner, name, x):
        out = real(owner, name, x)
        if out is not None and name == group and out[i] is not None:
            out[i], out[j] = out[j], out[i]
        return out

    monkeypatch.setattr(f"{where}.packed_outputs", swapped)
    got_ids, got_lp = _generate(_model(), prepack=True)
    assert got_ids != want_ids or (got_lp - want_lp).abs().max() > 1e-3
