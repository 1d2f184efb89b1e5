"""Decode fast paths compute what the general paths compute.

The inference path of mHC (no autograd Functions, host Sinkhorn for one token, the opt-in
compiled coefficients), the one-token MoE and the engine's `compile=True` must agree with
the autograd / grouped code that training uses, or cached decoding would drift from it.
"""

import pytest
import torch

from dsv4.config import make_config
from dsv4.infer.engine import Engine
from dsv4.infer.sampling import SamplingParams
from dsv4.model import indexer, mhc
from dsv4.model.moe import MoE
from dsv4.model.transformer import build_model


def _randomised(module):
    """Gates far from their init (comb not ~J/n, post not ~1), so differences would show."""
    with torch.no_grad():
        module.bias.normal_()
        module.alpha.fill_(0.5)
        module.phi.normal_(0, 0.1)
    return module


@pytest.mark.parametrize("preset", ["lite", "tiny"])  # n = 2 and n = 4 streams
@pytest.mark.parametrize("tokens", [1, 3, 300])  # host Sinkhorn, small batch, big batch
def test_hyper_connection_nograd_equals_autograd_path(preset, tokens):
    cfg = make_config(preset)
    hc = _randomised(mhc.HyperConnection(cfg))
    sub = torch.nn.Linear(cfg.dim, cfg.dim)
    x = torch.randn(1, tokens, cfg.hc_mult, cfg.dim)
    want = hc(x.clone().requires_grad_(), sub).detach()
    with torch.no_grad():
        got = hc(x, sub)
    assert (got - want).abs().max() < 1e-5


def test_hyper_head_nograd_equals_autograd_path():
    cfg = make_config("tiny")
    head = _randomised(mhc.HyperHead(cfg))
    x = torch.randn(2, 5, cfg.hc_mult, cfg.dim)
    want = head(x.clone().requires_grad_()).detach()
    with torch.no_grad():
        assert (head(x) - want).abs().max() < 1e-5


@pytest.mark.parametrize("n", [2, 4])
def test_host_sinkhorn_equals_tensor_sinkhorn(n):
    logits = torch.randn(1, n, n) * 4  # peaked rows: many iterations matter
    with torch.no_grad():
        host = mhc.sinkhorn(logits)  # one matrix: the host path
        tensor = mhc.sinkhorn(logits.expand(3, n, n))[:1]  # three: the batched tensor path
    assert (host - tensor).abs().max() < 1e-6
    assert (host.sum(-2) - 1).abs().max() < 1e-4  # doubly stochastic


def test_one_token_moe_equals_grouped_routing():
    torch.manual_seed(0)
    moe = MoE(make_config("flagship"), layer_id=3).eval()  # learned routing, top-2 of 8
    x = torch.randn(4, moe.gate.weight.shape[1])
    with torch.no_grad():
        batched = moe(x)  # grouped by expert
        single = torch.cat([moe(x[i:i + 1]) for i in range(4)])  # the one-token path
    assert (batched - single).abs().max() < 1e-6


def test_compiled_decode_gives_the_eager_tokens():
    """Engine(compile=True): the compiled mHC coefficients, same greedy tokens and logprobs."""
    torch.manual_seed(0)
    model = build_model("tiny", engram_layer_ids=[], n_mtp_layers=0, max_seq_len=256).eval()
    for m in model.modules():  # comb far from J/n: a wrong Sinkhorn would change the logits
        if isinstance(m, mhc.HyperConnection):
            _randomised(m)
    params = SamplingParams(max_tokens=40, temperature=0, logprobs=0, ignore_eos=True)
    prompt = list(range(3, 40))
    eager = Engine(model, None, max_batch=1).generate(prompt, params)[0]
    try:
        compiled = Engine(model, None, max_batch=1, compile=True).generate(prompt, params)[0]
        assert mhc._DECODE, "compile=True did not install the compiled path"
    finally:  # process-wide switches: leave the eager paths to the tests after this one
        mhc.set_decode_compile(False)
        indexer.set_score_compile(False)
    assert compiled.token_ids == eager.token_ids
    a = torch.tensor([lp["logprob"] for lp in eager.logprobs])
    b = torch.tensor([lp["logprob"] for lp in compiled.logprobs])
    assert (a - b).abs().max() < 1e-4
