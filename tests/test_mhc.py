"""mHC: Sinkhorn projection, the hyper-connection residual, stream expand/collapse, diagnostics."""

import math

import pytest
import torch

from dsv4.model import build_model
from dsv4.model.diagnostics import amax_gain_profile, amax_gain_stats
from dsv4.model.mhc import HyperConnection, HyperHead, PlainResidual, expand_streams, sinkhorn
from dsv4.model.transformer import Block


def _sums(m):
    return m.sum(-1), m.sum(-2)


def test_sinkhorn_is_doubly_stochastic_with_finite_gradients():
    torch.manual_seed(0)
    logits = torch.randn(64, 4, 4, requires_grad=True)
    m = sinkhorn(logits, iters=20)
    assert m.dtype == torch.float32 and (m >= 0).all()
    rows, cols = _sums(m)
    assert (rows - 1).abs().max() < 1e-3 and (cols - 1).abs().max() < 1e-3
    (m * torch.randn_like(m)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_sinkhorn_first_normalisation_is_a_row_softmax():
    # With one iteration DeepSeek's variant is softmax over the last axis (+eps), then a
    # column normalisation: a matrix whose rows are already uniform is left uniform.
    logits = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    m = sinkhorn(logits, iters=1, eps=0.0)
    soft = torch.softmax(logits, -1)
    torch.testing.assert_close(m, soft / soft.sum(0, keepdim=True))


def test_sinkhorn_large_magnitude_logits_do_not_underflow():
    # Uniformly very negative logits: a naive exp() gives 0/0; the row softmax gives 1/n.
    m = sinkhorn(torch.full((3, 4, 4), -1e3))
    torch.testing.assert_close(m, torch.full((3, 4, 4), 0.25), atol=1e-5, rtol=0)
    # A sharp permutation survives exactly, with finite gradients.
    perm = torch.eye(4)[torch.tensor([2, 0, 3, 1])]
    logits = (1e3 * perm - 5e2).requires_grad_()
    m = sinkhorn(logits)
    torch.testing.assert_close(m, perm, atol=1e-3, rtol=0)
    m.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # Random +-1e3 logits: finite, non-negative, columns exact; rows converge (DeepSeek's 20
    # iterations are approximate for such sharp inputs -- the paper's composite gain 1.6).
    torch.manual_seed(1)
    logits = (torch.randn(256, 4, 4) * 1e3).requires_grad_()
    m = sinkhorn(logits)
    rows, cols = _sums(m)
    assert torch.isfinite(m).all() and (m >= 0).all() and m.amax(-1).min() > 0.05
    assert (cols - 1).abs().max() < 1e-3 and (rows - 1).abs().max() < 0.1
    (m * torch.randn_like(m)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    rows, cols = _sums(sinkhorn(logits.detach(), iters=2000))
    assert (rows - 1).abs().max() < 1e-3 and (cols - 1).abs().max() < 1e-3


def test_hc_mult_1_is_exactly_the_plain_residual():
    torch.manual_seed(0)
    model = build_model("baseline", n_layers=2, max_seq_len=32).eval()
    assert not any(isinstance(m, (HyperConnection, HyperHead)) for m in model.modules())
    assert all(isinstance(b.attn_residual, PlainResidual) for b in model.layers)
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    ctx = model._context(ids)
    x = model.embed(ids)
    for blk in model.layers:  # the textbook pre-norm transformer, written out by hand
        x = x + blk.attn(blk.attn_norm(x), ctx)
        x = x + blk.ffn(blk.ffn_norm(x), ctx)
    assert torch.equal(model(ids), model.head(model.norm(x)))


def test_mhc_at_init_is_the_plain_residual_model():
    # With the dynamic terms off (alpha = 0), the init biases make n identical streams behave
    # as one: pre = 1/n reads the mean, post = 1 writes F to every stream, comb = J/n mixes.
    torch.manual_seed(0)
    plain = build_model("baseline", n_layers=2, max_seq_len=32).eval()
    hyper = build_model("baseline", n_layers=2, max_seq_len=32, hc_mult=4).eval()
    missing, unexpected = hyper.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("residual" in k or "hc_head" in k for k in missing)
    with torch.no_grad():
        for m in hyper.modules():
            if isinstance(m, (HyperConnection, HyperHead)):
                m.alpha.zero_()
    ids = torch.randint(0, plain.config.vocab_size, (2, 32))
    torch.testing.assert_close(hyper(ids), plain(ids), rtol=1e-4, atol=1e-4)


def test_streams_expand_and_collapse_shapes():
    cfg = build_model("baseline", n_layers=1, hc_mult=4).config
    x = torch.randn(2, 5, cfg.dim)
    s = expand_streams(x, 4)
    assert s.shape == (2, 5, 4, cfg.dim) and all(torch.equal(s[:, :, k], x) for k in range(4))
    head = HyperHead(cfg)
    out = head(s)
    assert out.shape == (2, 5, cfg.dim)
    with torch.no_grad():
        head.alpha.zero_()
    torch.testing.assert_close(head(s), x * (1 + 4 * cfg.hc_eps))  # weights 1/n (+eps)


def test_hyper_connection_applies_comb_transposed():
    # out_k = post_k * F + sum_j comb[j, k] x_j, comb as returned (rows = softmax axis).
    torch.manual_seed(0)
    cfg = build_model("baseline", n_layers=1, hc_mult=3).config
    hc = HyperConnection(cfg)
    with torch.no_grad():
        hc.alpha.fill_(1.0)
        hc.bias.normal_(0, 2.0)  # a clearly non-symmetric comb
    x = torch.randn(2, 4, 3, cfg.dim)
    w = torch.randn(cfg.dim, cfg.dim) / cfg.dim**0.5
    out = hc(x, lambda h: h @ w)
    pre, post, comb = hc.coefficients(x)
    assert (comb - comb.transpose(-1, -2)).abs().max() > 0.05
    for b in range(2):
        for t in range(4):
            y = (pre[b, t, :, None] * x[b, t]).sum(0) @ w
            for k in range(3):
                ref = post[b, t, k] * y + sum(comb[b, t, j, k] * x[b, t, j] for j in range(3))
                torch.testing.assert_close(out[b, t, k], ref, rtol=1e-4, atol=1e-5)


def test_hyper_connection_is_autocast_friendly_and_trainable():
    torch.manual_seed(0)
    cfg = build_model("baseline", n_layers=1, hc_mult=4).config
    blk = Block(cfg, 0)
    x = torch.randn(2, 16, 4, cfg.dim, requires_grad=True)
    ctx = build_model("baseline", n_layers=1)._context(torch.zeros(2, 16, dtype=torch.long))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pre, post, comb = blk.attn_residual.coefficients(x)
        y = blk(x, ctx)
    assert pre.dtype == post.dtype == comb.dtype == torch.float32
    # the streams leave the block in the training dtype (bf16 under autocast)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    y.square().mean().backward()
    for p in (blk.attn_residual.phi, blk.attn_residual.alpha, blk.attn_residual.bias, x):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_amax_gain_orientation_and_composition():
    T = 3
    eye = torch.eye(2).expand(T, 2, 2)
    fwd, bwd = amax_gain_profile([eye] * 4)
    assert torch.allclose(fwd, torch.ones(4)) and torch.allclose(bwd, torch.ones(4))
    # comb as applied: out_k = sum_j comb[j, k] x_j; comb=[[1,1],[0,0]] -> H_res=[[1,0],[1,0]]:
    # row sums (forward) 1, column sums (backward) 2.
    comb = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).expand(T, 2, 2)
    fwd, bwd = amax_gain_profile([comb])
    assert fwd.item() == pytest.approx(1.0) and bwd.item() == pytest.approx(2.0)
    # Composites multiply: 2I over 5 layers gives 2^5 from the bottom, 2 from the top.
    fwd, bwd = amax_gain_profile([2 * eye] * 5)
    assert fwd.tolist() == pytest.approx([32, 16, 8, 4, 2]) and bwd.tolist() == pytest.approx(fwd.tolist())
    assert amax_gain_stats([2 * eye] * 5)["mhc_amax_fwd"] == pytest.approx(32)
    # computed in fp32 even when the training step runs under bf16 autocast
    near = torch.eye(2).expand(T, 2, 2) * (1 + 1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fwd, _ = amax_gain_profile([near] * 10)
    assert fwd[0].item() == pytest.approx((1 + 1e-3) ** 10, rel=1e-5)


def test_training_stats_report_the_composite_gain():
    torch.manual_seed(0)
    ids = torch.randint(0, 512, (2, 33))
    mhc = build_model("baseline", n_layers=3, vocab_size=512, max_seq_len=32, hc_mult=4)
    _, stats = mhc.loss(ids[:, :-1], ids[:, 1:])
    assert stats["mhc_amax_fwd"] == pytest.approx(1.0, abs=1e-3) and math.isfinite(stats["mhc_amax_bwd"])
    hc = build_model("baseline", n_layers=3, vocab_size=512, max_seq_len=32, hc_mult=4, hc_unconstrained=True)
    with torch.no_grad():
        for m in hc.modules():
            if isinstance(m, HyperConnection):
                m.bias[2 * 4:] += 0.3  # an unconstrained H_res with row sums 2.2 per layer
    _, stats = hc.loss(ids[:, :-1], ids[:, 1:])
    assert stats["mhc_amax_fwd"] > 2.2 ** 6 * 0.9
    plain = build_model("baseline", n_layers=3, vocab_size=512, max_seq_len=32)
    _, stats = plain.loss(ids[:, :-1], ids[:, 1:])
    assert "mhc_amax_fwd" not in stats


def _sinkhorn_reference(logits, iters=20, eps=1e-6):
    # SPEC 1.1 written out in fp64 on the [..., n, n] layout, autograd through every step.
    m = torch.softmax(logits.double(), -1) + eps
    m = m / (m.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(-1, keepdim=True) + eps)
        m = m / (m.sum(-2, keepdim=True) + eps)
    return m


@pytest.mark.parametrize("tokens", [1, 5, 300])  # the small-batch (decode) and the long no-grad paths
def test_sinkhorn_fast_paths_match_the_reference(tokens):
    torch.manual_seed(tokens)
    logits = torch.randn(tokens, 4, 4) * 3
    with torch.no_grad():
        torch.testing.assert_close(sinkhorn(logits).double(), _sinkhorn_reference(logits), atol=1e-6, rtol=0)
    # the hand-written backward against autograd through the fp64 reference
    leaf = logits.clone().requires_grad_()
    g = torch.randn(tokens, 4, 4)
    (sinkhorn(leaf) * g).sum().backward()
    ref = logits.double().requires_grad_()
    (_sinkhorn_reference(ref) * g.double()).sum().backward()
    torch.testing.assert_close(leaf.grad.double(), ref.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("autocast", [False, True])
def test_hyper_connection_eager_path_matches_fused_path(monkeypatch, autocast):
    # The eager path (hand-written backward for the stream passes) against the fused path of
    # mhc_fused.py (other hand-written backwards; its kernels run uncompiled here, so this
    # checks the maths without compiling): same outputs and gradients, for a
    # hyper-connection followed by the collapsing HyperHead.
    from dsv4.model import mhc, mhc_fused
    torch.manual_seed(0)
    cfg = build_model("baseline", n_layers=1, hc_mult=4, dim=64).config
    hc, head = HyperConnection(cfg), HyperHead(cfg)
    with torch.no_grad():
        for m in (hc, head):
            m.alpha.fill_(1.0)
            m.bias.normal_(0, 1.0)
    lin = torch.nn.Linear(64, 64)
    x0 = torch.randn(2, 8, 4, 64)
    w = torch.randn(4, 64)

    def run():
        x = x0.clone().requires_grad_()
        hc.zero_grad()
        head.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = hc(x, lin)
            z = head(y)
        ((y.float() * w).sum() + (z.float() * w[0]).sum()).backward()
        grads = [p.grad.clone() for p in (*hc.parameters(), *head.parameters())]
        return [y.detach(), z.detach(), x.grad, *grads]

    eager = run()
    monkeypatch.setattr(mhc_fused, "_kernel", lambda name, head=False: mhc_fused._KERNELS[name])
    monkeypatch.setattr(mhc, "_COMPILED", {"pre": mhc_fused.stream_pre, "post": mhc_fused.stream_post,
                                           "sinkhorn": mhc_fused.sinkhorn})
    plain = run()
    for a, b in zip(eager, plain, strict=True):
        # bf16 streams (autocast): the two sum in different orders before the final rounding
        tol = 2 ** -7 if autocast else 1e-4
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())
