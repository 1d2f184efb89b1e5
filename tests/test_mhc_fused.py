"""The fused (torch.compile) stream paths of `mhc.set_compile` match the eager reference maths.

`set_compile(True)` swaps in fused versions of the passes over the n-times-wider residual
stream (benchmarks/mhc_overhead.py uses them). They must compute the same function: values
and gradients (input and every parameter) are compared with the eager path on the same
weights, under bf16 autocast as in training. Small shapes keep the compiling short.
"""

import pytest
import torch

from dsv4.config import make_config
from dsv4.model import mhc, mhc_fused
from dsv4.model.engram import Engram, _gate, _gate_norm_bwd, _gate_norm_fwd, _rms
from dsv4.model.mtp import MTPBlock
from dsv4.model.transformer import ForwardContext

SMALL = dict(vocab_size=512, dim=32, n_layers=2, n_heads=2, head_dim=16, max_seq_len=64)


@pytest.fixture
def compiled():
    """Turn the fused paths on for one test and off again afterwards (tests run eager)."""
    yield lambda on: mhc.set_compile(on)
    mhc.set_compile(False)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _run_engram(engram, x, ids):
    x = x.clone().requires_grad_()
    engram.zero_grad(set_to_none=True)
    ctx = ForwardContext(ids=ids, freqs=torch.zeros(ids.shape[1], 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = engram(x, ctx)
    weight = torch.linspace(-1, 1, out.numel()).view(out.shape)  # a loss that weighs every entry
    (out.float() * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in engram.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads, float(ctx.stats["engram_gate_l0"])


@pytest.mark.parametrize("hc_mult", [1, 4])
def test_fused_engram_matches_eager(compiled, hc_mult):
    cfg = make_config("baseline", **SMALL, hc_mult=hc_mult, engram_layer_ids=[0], engram_vocab_size=97,
                      engram_dim=16, engram_n_heads=2, engram_ngram_orders=[2, 3])
    torch.manual_seed(0)
    engram = Engram(cfg, 0).train()
    with torch.no_grad():  # non-trivial norms and conv (the conv is zero at init)
        for p in (engram.query_norm, engram.key_norm, engram.conv_norm):
            p.uniform_(0.5, 1.5)
        engram.conv_weight.normal_(0.0, 0.3)
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    shape = (2, 24, hc_mult, cfg.dim) if hc_mult > 1 else (2, 24, cfg.dim)
    x = torch.randn(shape).to(torch.bfloat16 if hc_mult > 1 else torch.float32)
    ref = _run_engram(engram, x, ids)
    compiled(True)
    got = _run_engram(engram, x, ids)
    # bf16 autocast: the eager conv runs in bf16, the fused one in fp32
    assert _rel(got[0], ref[0]) < 1e-2
    assert _rel(got[1], ref[1]) < 2e-2
    assert got[2].keys() == ref[2].keys() and len(ref[2]) == 7
    for name in ref[2]:
        assert _rel(got[2][name], ref[2][name]) < 3e-2, name
    assert got[3] == pytest.approx(ref[3], rel=1e-3)


def _run_hc(module, x, sublayer=None):
    x = x.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x) if sublayer is None else module(x, sublayer)
    weight = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out.float() * weight).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("head", [False, True])
def test_fused_hyper_connection_matches_eager(compiled, head):
    cfg = make_config("baseline", **SMALL, hc_mult=4)
    torch.manual_seed(0)
    module = (mhc.HyperHead if head else mhc.HyperConnection)(cfg)
    with torch.no_grad():  # away from the init, where every gate is at its symmetric point
        module.phi.normal_(0.0, 0.5)
        module.alpha.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.5)
    lin = torch.nn.Linear(cfg.dim, cfg.dim)  # a sublayer whose gradient depends on its input
    sub = None if head else (lambda h: torch.tanh(lin(h)))
    x = torch.randn(3, 20, 4, cfg.dim).to(torch.bfloat16)
    ref = _run_hc(module, x, sub)
    compiled(True)
    got = _run_hc(module, x, sub)
    assert got[0].dtype == ref[0].dtype and got[0].shape == ref[0].shape
    assert _rel(got[0], ref[0]) < 1e-2
    assert _rel(got[1], ref[1]) < 2e-2
    assert got[2].keys() == ref[2].keys() == {"phi", "alpha", "bias"}
    for name in ref[2]:
        assert _rel(got[2][name], ref[2][name]) < 3e-2, name


def test_fused_sinkhorn_matches_eager():
    """The unrolled compiled Sinkhorn (forward, and a backward that recomputes it) against the
    reference mhc.sinkhorn with its hand-written backward, logits from mild to saturating."""
    torch.manual_seed(0)
    logits = torch.randn(60, 4, 4) * torch.logspace(-1, 1.5, 60).view(-1, 1, 1)  # up to ~30
    g = torch.randn(60, 4, 4)
    out = {}
    for name, fn in (("ref", mhc.sinkhorn), ("fused", mhc_fused.sinkhorn)):
        x = logits.clone().requires_grad_()
        comb = fn(x, 20, 1e-6)
        comb.backward(g)
        out[name] = (comb.detach(), x.grad)
    assert out["fused"][0].shape == (60, 4, 4)
    assert (out["fused"][0] - out["ref"][0]).abs().max() < 1e-5
    assert _rel(out["fused"][1], out["ref"][1]) < 1e-4


def test_fused_mtp_projection_matches_eager(compiled):
    """MTP's per-stream hnorm + h_proj under the fused switch (one compiled function) gives the
    eager modules' values and gradients (streams, norm weight, projection)."""
    cfg = make_config("baseline", **SMALL, hc_mult=4, n_mtp_layers=1)
    torch.manual_seed(0)
    mtp = MTPBlock(cfg, lambda x, ctx: x)  # the block itself is tested elsewhere
    with torch.no_grad():
        mtp.hnorm.weight.uniform_(0.5, 1.5)
    embed = torch.nn.Embedding(cfg.vocab_size, cfg.dim)
    ids = torch.randint(0, cfg.vocab_size, (3, 20))
    streams = torch.randn(3, 20, 4, cfg.dim).to(torch.bfloat16)

    def run():
        x = streams.clone().requires_grad_()
        mtp.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mtp(x, ids, embed, None)
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return out.detach(), x.grad, mtp.hnorm.weight.grad.clone(), mtp.h_proj.weight.grad.clone()

    ref = run()
    compiled(True)
    got = run()
    for a, b in zip(got, ref, strict=True):
        assert _rel(a, b) < 1e-2


@pytest.mark.parametrize("n", [1, 4])
def test_engram_gate_backward_matches_autograd(n):
    """The hand-written backward of Engram's gate + conv-input norm (`_gate_norm_bwd`) against
    autograd through the eager maths (`_gate` and `_rms`, fp32 inside). A large eps makes its
    terms count (RMSNorm(U) = c v with c = alpha / sqrt(alpha^2 m + eps) depends on alpha
    through eps), and one token's zero hidden state puts its scores inside the gate's clamp."""
    torch.manual_seed(0)
    B, T, D, eps = 2, 5, 16, 0.3
    h, key, value = torch.randn(B, T, n, D), torch.randn(B, T, n, D), torch.randn(B, T, D)
    h[0, 0] = 0.0  # score 0: no gradient through the clamped square root
    norms = [1 + 0.3 * torch.randn(n * D) for _ in range(3)]
    inputs = [t.requires_grad_() for t in (h, key, value, *norms)]
    g_u, g_z = torch.randn(B, T, n, D), torch.randn(B, T, n, D)

    alpha, u = _gate(*inputs[:5], eps)
    z = _rms(u, inputs[5], eps)
    ref = torch.autograd.grad((u * g_u).sum() + (z * g_z).sum(), inputs)
    with torch.no_grad():
        a2, u2, z2, *saved = _gate_norm_fwd(*inputs, eps)
        got = _gate_norm_bwd(g_u, g_z, *inputs, a2, *saved, eps)
    for x, y in ((a2, alpha), (u2, u), (z2, z)):
        assert _rel(x, y) < 1e-5
    names = ("h", "key", "value", "query_norm", "key_norm", "conv_norm")
    for name, x, y in zip(names, got, ref, strict=True):
        assert _rel(x, y) < 1e-4, name
