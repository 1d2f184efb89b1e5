"""V4 hybrid attention (SPEC 1.3): equivalences, causality, window, sink, inverse RoPE, indexer.

Most checks run one Attention module in fp32 on small shapes, against an independent
per-query reference written here with Python loops (slow but obviously correct).
"""

import math

import pytest
import torch

from dsv4.config import make_config
from dsv4.model import attention as attn_mod
from dsv4.model.attention import Attention, set_indexer_stage
from dsv4.model.rope import apply_rope, rope_frequencies
from dsv4.model.transformer import ForwardContext

V4 = dict(dim=48, n_heads=4, head_dim=16, rope_head_dim=8, q_lora_rank=24, shared_kv=True, attn_sink=True,
          o_groups=2, o_lora_rank=12, window_size=6, index_n_heads=8, index_head_dim=12, index_topk=3,
          max_seq_len=512, n_layers=3, compress_ratios=[0, 4, 16], vocab_size=256)


def make_attn(layer: int, seed: int = 0, **over) -> Attention:
    cfg = make_config("baseline", **{**V4, **over})  # baseline: every other switch off
    torch.manual_seed(seed)
    a = Attention(cfg, layer)
    with torch.no_grad():  # non-trivial values for params that init at zero / one
        for name, p in a.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
            elif name.endswith("attn_sink"):
                p.normal_(0, 1.0)
            else:
                p.uniform_(0.5, 1.5)
    return a.eval()


def run(a: Attention, x: torch.Tensor, offset: int = 0, train: bool = False):
    T = x.shape[1]
    main = rope_frequencies(a.cfg, offset + T)[offset:]
    comp = rope_frequencies(a.cfg, offset + T, kind="compress")[offset:]
    ctx = ForwardContext(ids=torch.zeros(x.shape[:2], dtype=torch.long), freqs=main, freqs_compress=comp)
    a.train(train)
    return a(x, ctx), ctx


# ---------------------------------------------------------------------------------------------
# independent reference
# ---------------------------------------------------------------------------------------------

def ref_compress(comp, x, freqs):
    """Loop over blocks: softmax-gated pooling (overlap for r=4), RMSNorm, RoPE at the block start
    (freqs[i] = rotation at block i's first token)."""
    r, d = comp.ratio, comp.head_dim
    kv, gate = comp.wkv(x).float(), comp.wgate(x).float()
    out = []
    for i in range(x.shape[1] // r):
        slots_kv, slots_g = [], []
        for j in range(r):
            t = i * r + j
            if comp.overlap:
                slots_kv.append(kv[:, t, d:])
                slots_g.append(gate[:, t, d:] + comp.ape[j, d:])
                if i > 0:
                    slots_kv.append(kv[:, t - r, :d])
                    slots_g.append(gate[:, t - r, :d] + comp.ape[j, :d])
            else:
                slots_kv.append(kv[:, t])
                slots_g.append(gate[:, t] + comp.ape[j])
        w = torch.stack(slots_g, 1).softmax(1)
        pooled = (w * torch.stack(slots_kv, 1)).sum(1)
        normed = pooled * torch.rsqrt(pooled.pow(2).mean(-1, keepdim=True) + comp.norm.eps) * comp.norm.weight
        out.append(apply_rope(normed[:, None, None], freqs[i: i + 1]).squeeze(1).squeeze(1))
    return torch.stack(out, 1) if out else x.new_zeros(x.shape[0], 0, d)


def ref_attention(a: Attention, x: torch.Tensor, dense: bool = False):
    """Per (batch, query, head) softmax over [window raw keys, visible/selected entries, sink]."""
    B, T, _ = x.shape
    cfg = a.cfg
    freqs = rope_frequencies(cfg, T, kind="compress" if a.ratio else "main")
    qr = a.q_norm(a.wq_a(x))
    q = a.wq_b(qr).view(B, T, cfg.n_heads, cfg.head_dim)
    q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
    q = apply_rope(q, freqs)
    kv = apply_rope(a.kv_norm(a.wkv(x)).unsqueeze(2), freqs).squeeze(2)
    ents = ref_compress(a.compressor, x, freqs[:: a.ratio]) if a.ratio else kv[:, :0]
    if a.indexer is not None and not dense:
        keys = ref_compress(a.indexer.compressor, x, freqs[:: a.ratio])
        scores = a.indexer.scores(x, qr, keys, freqs)
    out = torch.zeros_like(q)
    for b in range(B):
        for t in range(T):
            lo = max(0, t - cfg.window_size + 1) if cfg.window_size else 0
            keys = [kv[b, j] for j in range(lo, t + 1)]
            n_vis = (t + 1) // a.ratio if a.ratio else 0
            chosen = list(range(n_vis))
            if a.indexer is not None and not dense and n_vis > cfg.index_topk:
                order = torch.sort(scores[b, t, :n_vis], descending=True, stable=True).indices
                chosen = order[: cfg.index_topk].tolist()  # ties: earliest block first
            keys += [ents[b, i] for i in chosen]
            K = torch.stack(keys)
            for h in range(cfg.n_heads):
                logits = K @ q[b, t, h] * cfg.head_dim ** -0.5
                if a.attn_sink is not None:
                    logits = torch.cat([logits, a.attn_sink[h].view(1)])
                p = logits.softmax(0)[: len(keys)]
                out[b, t, h] = p @ K
    out = apply_rope(out, freqs, inverse=True)
    return a._output(out)


@pytest.mark.parametrize("layer", [0, 1, 2])  # window only, CSA (r=4), HCA (r=16)
def test_matches_reference_over_several_chunks(layer, monkeypatch):
    monkeypatch.setattr(attn_mod, "MIN_CHUNK", 8)  # T=40, C=8 -> 5 chunks exercise the chunk path
    a = make_attn(layer)
    x = torch.randn(2, 40, 48)
    with torch.no_grad():
        got, _ = run(a, x)
        want = ref_attention(a, x)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_compressor_matches_loop_reference():
    for layer in (1, 2):
        a = make_attn(layer)
        x = torch.randn(2, 37, 48)
        freqs = rope_frequencies(a.cfg, 37, kind="compress")[:: a.ratio]
        with torch.no_grad():
            torch.testing.assert_close(a.compressor(x, freqs), ref_compress(a.compressor, x, freqs))


def test_csa_with_topk_covering_all_blocks_equals_dense():
    x = torch.randn(2, 64, 48)
    a = make_attn(1, index_topk=16)  # 64 / 4 = 16 blocks
    with torch.no_grad():
        sparse, _ = run(a, x)
        set_indexer_stage(a, "dense")
        dense, _ = run(a, x)
        want = ref_attention(a, x, dense=True)
    # different code paths (gathered top-k columns vs masked dense columns), same attention
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense, want, atol=2e-5, rtol=1e-4)
    # and a small top-k really is sparse: it changes the result
    a_small = make_attn(1, index_topk=2)
    with torch.no_grad():
        assert not torch.allclose(run(a_small, x)[0], dense, atol=1e-4)


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("cut", [17, 32, 46])  # mid-block, at a block boundary, mid-block
def test_strict_causality(layer, cut, monkeypatch):
    monkeypatch.setattr(attn_mod, "MIN_CHUNK", 8)
    a = make_attn(layer)
    x = torch.randn(1, 70, 48)
    y = x.clone()
    y[:, cut:] = torch.randn_like(y[:, cut:])
    with torch.no_grad():
        ox, oy = run(a, x)[0], run(a, y)[0]
    torch.testing.assert_close(ox[:, :cut], oy[:, :cut], atol=0, rtol=0)
    assert (ox[:, cut:] - oy[:, cut:]).abs().amax(-1).min() > 0  # every later output is affected


def test_window_excludes_old_tokens_without_compression():
    a = make_attn(0, compress_ratios=[0, 0, 0])
    x = torch.randn(1, 40, 48)
    y = x.clone()
    y[:, 10] += 3.0
    with torch.no_grad():
        ox, oy = run(a, x)[0], run(a, y)[0]
    diff = (ox - oy).abs().amax(-1)[0]
    w = a.cfg.window_size
    assert diff[:10].max() == 0
    assert diff[10: 10 + w].min() > 0  # inside the window: seen
    assert diff[10 + w:].max() == 0  # beyond the window: no influence


def test_sink_rescales_softmax():
    a = make_attn(0)
    x = torch.randn(1, 12, 48)
    with torch.no_grad():
        a.attn_sink.fill_(-1e4)  # a vanishing sink is plain softmax
        with_sink = run(a, x)[0]
        b = make_attn(0, attn_sink=False)
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "attn_sink"})
        torch.testing.assert_close(with_sink, run(b, x)[0])
        # at t = 0 only the token itself is visible: its weight is 1 / (1 + exp(sink - logit))
        a.attn_sink.fill_(0.7)
        got, ctx = run(a, x)
        q, _ = a._query(x)
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + a.eps)
        q = apply_rope(q, ctx.freqs)
        kv = apply_rope(a.kv_norm(a.wkv(x)).unsqueeze(2), ctx.freqs)
        logit = (q[0, 0] * kv[0, 0]).sum(-1) / math.sqrt(a.head_dim)  # [H]
        weight = 1 / (1 + torch.exp(0.7 - logit))
        o = apply_rope((weight[:, None] * kv[0, 0])[None, None], ctx.freqs[:1], inverse=True)
        torch.testing.assert_close(got[0, 0], a._output(o)[0, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_inverse_rope_makes_output_translation_invariant(layer):
    a = make_attn(layer)
    x = torch.randn(1, 24, 48)
    with torch.no_grad():
        base = run(a, x)[0]
        shifted = run(a, x, offset=40)[0]  # multiple of the ratio: blocks keep their alignment
    torch.testing.assert_close(base, shifted, atol=2e-5, rtol=1e-4)
    # without the inverse rotation, the output would carry absolute position
    orig = attn_mod.apply_rope

    def no_inverse(t, f, inverse=False):
        return t if inverse else orig(t, f)

    attn_mod.apply_rope = no_inverse
    try:
        with torch.no_grad():
            assert not torch.allclose(run(a, x)[0], run(a, x, offset=40)[0], atol=1e-3)
    finally:
        attn_mod.apply_rope = orig


def _main_and_indexer_params(a):
    idx = {n for n, _ in a.named_parameters() if n.startswith("indexer.")}
    return idx, {n for n, _ in a.named_parameters()} - idx


@pytest.mark.parametrize("stage", ["sparse", "dense"])
def test_indexer_kl_trains_only_the_indexer(stage):
    a = make_attn(1)
    set_indexer_stage(a, stage)
    x = torch.randn(2, 48, 48, requires_grad=True)
    out, ctx = run(a, x, train=True)
    kl = ctx.aux_losses["indexer"]
    assert torch.isfinite(kl) and kl.item() > 0
    assert float(ctx.stats["indexer_kl"]) == pytest.approx(kl.item() / 1, rel=1e-6)  # one CSA layer in V4
    idx_names, main_names = _main_and_indexer_params(a)
    names = [n for n, _ in a.named_parameters()]
    *pgrads, x_grad = torch.autograd.grad(kl, list(a.parameters()) + [x], allow_unused=True)
    grads = dict(zip(names, pgrads, strict=True))
    for n in main_names:
        assert grads[n] is None or grads[n].abs().max() == 0, n
    assert all(grads[n] is not None and grads[n].abs().max() > 0 for n in idx_names)
    assert x_grad is None or x_grad.abs().max() == 0  # indexer input detached
    # the LM side (attention output) gives the indexer no gradient
    out, _ = run(a, x, train=True)
    g = torch.autograd.grad(out.square().sum(), [p for n, p in a.named_parameters() if n in idx_names],
                            allow_unused=True)
    assert all(t is None or t.abs().max() == 0 for t in g)


def test_indexer_kl_is_zero_when_indexer_agrees():
    from dsv4.model.indexer import indexer_kl

    mass = torch.rand(2, 5, 6)
    cand = torch.rand(2, 5, 6) > 0.3
    cand[:, 0] = False  # a query without candidates is ignored
    target = (mass * cand) / (mass * cand).sum(-1, keepdim=True).clamp_min(1e-30)
    assert indexer_kl(mass, target.clamp_min(1e-30).log(), cand).abs().item() < 1e-5
    assert indexer_kl(mass, torch.zeros(2, 5, 6), cand).item() > 1e-3


def test_stage_validation():
    with pytest.raises(ValueError, match="indexer stage"):
        set_indexer_stage(make_attn(1), "warmup")


def test_bf16_autocast_close_to_fp32():
    a = make_attn(1, index_topk=64)  # no top-k: bf16 rounding may legitimately flip a selection
    x = torch.randn(2, 40, 48)
    with torch.no_grad():
        ref = run(a, x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = run(a, x)[0]
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("stage", ["dense", "sparse"])
def test_indexer_learns_to_match_attention(stage):
    """Stage-wise DSA training: optimising only the indexer on its KL lowers the KL."""
    a = make_attn(1, index_topk=4)
    set_indexer_stage(a, stage)
    x = torch.randn(2, 64, 48)
    params = [p for n, p in a.named_parameters() if n.startswith("indexer.")]
    opt = torch.optim.Adam(params, lr=1e-2)
    kls = []
    for _ in range(40):
        _, ctx = run(a, x, train=True)
        opt.zero_grad()
        ctx.aux_losses["indexer"].backward()
        opt.step()
        kls.append(float(ctx.stats["indexer_kl"]))
    assert kls[-1] < 0.5 * kls[0], kls


def test_compressor_pool_resumes_from_carried_state():
    """The cached-decoding contract: pooling later blocks with the previous block's Ca half
    (ape included) carried in gives the same entries as compressing the whole prefix."""
    a = make_attn(1)
    comp = a.compressor
    x = torch.randn(2, 24, 48)
    freqs = rope_frequencies(a.cfg, 24, kind="compress")[::4]
    d = comp.head_dim
    with torch.no_grad():
        full = comp(x, freqs)
        kv, score = comp.project(x)
        kv, score = kv.view(2, 6, 4, -1), score.view(2, 6, 4, -1)
        first = comp.finish(comp.pool(kv[:, :3], score[:, :3]), freqs[:3])
        prev_kv, prev_score = kv[:, 2, :, :d], score[:, 2, :, :d] + comp.ape[:, :d]
        rest = comp.finish(comp.pool(kv[:, 3:], score[:, 3:], prev_kv, prev_score), freqs[3:])
    torch.testing.assert_close(torch.cat([first, rest], 1), full)


def test_topk_ties_go_to_the_earliest_block():
    """Selection = a stable descending sort (deterministic under ties, whatever N is), in O(N)."""
    from dsv4.model.indexer import topk_indices, topk_select

    torch.manual_seed(0)
    for _ in range(30):
        scores = torch.randint(-3, 4, (2, 7, 13)).float() / 2  # many exact ties, both signs
        scores = torch.where(torch.rand(2, 7, 13) < 0.2, -0.0, scores)  # -0.0 ties with +0.0
        visible = torch.rand(7, 13) > 0.3
        k = int(torch.randint(1, 16, ()))
        order = torch.sort(scores.masked_fill(~visible, float("-inf")), dim=-1, descending=True, stable=True)
        want = torch.zeros(2, 7, 13, dtype=torch.bool).scatter_(-1, order.indices[..., :k], True) & visible
        assert torch.equal(topk_select(scores, visible, k), want)
        idx, ok = topk_indices(scores, visible, k)
        assert torch.equal(torch.zeros_like(want).scatter_(-1, idx, ok), want)
        # more blocks after the visible ones (a longer forward) do not change the picks
        longer = torch.cat([scores, torch.rand(2, 7, 5)], -1)
        wider = torch.cat([visible, torch.zeros(7, 5, dtype=torch.bool)], -1)
        assert torch.equal(topk_select(longer, wider, k)[..., :13], want)
