"""DeepSeekMoE: grouped experts vs a naive per-token reference, routing, hash layers, bias balancing."""

import pytest
import torch
import torch.nn.functional as F

from dsv4.config import make_config
from dsv4.model import build_model
from dsv4.model.ffn import FeedForward, swiglu
from dsv4.model.moe import MoE, hash_routing_table
from dsv4.model.transformer import ForwardContext

# Every switch off except what a test turns on (the `tiny` preset has all components on).
SMALL = dict(vocab_size=2048, dim=64, n_layers=2, n_heads=2, head_dim=32, max_seq_len=128)


def _moe(layer_id=1, **over):
    base = dict(dim=32, n_routed_experts=6, n_activated_experts=2, moe_inter_dim=24, n_hash_layers=1)
    cfg = make_config("baseline", **{**SMALL, **base, **over})
    torch.manual_seed(0)
    moe = MoE(cfg, layer_id)
    for p in moe.parameters():  # init_std 0.02 makes outputs tiny; use O(1) weights for the comparison
        torch.nn.init.normal_(p, 0.0, 0.3)
    return cfg, moe


def _ctx(ids):
    return ForwardContext(ids=ids, freqs=torch.zeros(ids.shape[1], 1))


def _naive(moe, x, ids):
    """Per-token loop straight from the definition (SPEC 1.4)."""
    g = moe.gate
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        logits = g.weight @ x[n]
        s = {"softmax": logits.softmax(-1), "sigmoid": logits.sigmoid()}.get(
            g.score_func, F.softplus(logits).sqrt())
        sel = g.tid2eid[ids[n]] if g.is_hash else (s + g.bias).topk(g.topk).indices
        w = s[sel]
        if g.score_func != "softmax":
            w = w / w.sum()
        for e, we in zip(sel.tolist(), (w * g.route_scale).tolist(), strict=True):
            ex = moe.experts[e]
            out[n] += we * ex.w2.weight @ swiglu(ex.w1.weight @ x[n], ex.w3.weight @ x[n], moe.swiglu_limit)
        sh = moe.shared_experts
        out[n] += sh.w2.weight @ swiglu(sh.w1.weight @ x[n], sh.w3.weight @ x[n], moe.swiglu_limit)
    return out


@pytest.mark.parametrize("score_func", ["sqrtsoftplus", "sigmoid", "softmax"])
@pytest.mark.parametrize("layer_id", [0, 1])  # 0: hash-routed, 1: learned routing
def test_grouped_experts_equal_naive_reference(score_func, layer_id):
    cfg, moe = _moe(layer_id, score_func=score_func, swiglu_limit=0.5, route_scale=2.5)
    moe.gate.bias.copy_(torch.randn(cfg.n_routed_experts))  # bias must change selection, not weights
    x = torch.randn(3, 7, cfg.dim)
    ids = torch.randint(0, cfg.vocab_size, (3, 7))
    want = _naive(moe, x.reshape(-1, cfg.dim), ids.reshape(-1)).view_as(x)
    # both the per-expert loop (CPU default) and the grouped_mm path (CUDA default) match
    for grouped in (False, True):
        moe._grouped_mm_ok = lambda *a, g=grouped: g
        torch.testing.assert_close(moe(x, _ctx(ids)), want, atol=1e-4, rtol=1e-4)


def test_grouped_and_looped_gradients_agree_under_bf16_autocast():
    cfg, moe = _moe()
    x = torch.randn(2, 16, cfg.dim)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    grads = []
    for grouped in (True, False):
        moe.zero_grad()
        moe._grouped_mm_ok = (lambda *a: True) if grouped else (lambda *a: False)
        with torch.autocast("cpu", torch.bfloat16):
            y = moe(x, _ctx(ids))
        (y.float() ** 2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in moe.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=2e-2, rtol=2e-2)
    assert grads[0].abs().sum() > 0


def test_bias_changes_selection_only():
    cfg, moe = _moe(score_func="sqrtsoftplus")
    x = torch.randn(40, cfg.dim)
    w0, idx0 = moe.gate(x, None)
    moe.gate.bias[3] = 100.0  # force expert 3 into every token's top-k
    w1, idx1 = moe.gate(x, None)
    assert (idx1 == 3).any(dim=1).all() and not (idx0 == 3).any(dim=1).all()
    torch.testing.assert_close(w1.sum(-1), torch.full((40,), cfg.route_scale))
    # weights are the unbiased scores of the chosen experts, renormalised
    s = moe.gate.scores(x).gather(1, idx1)
    torch.testing.assert_close(w1, s / s.sum(-1, keepdim=True) * cfg.route_scale)


def test_hash_routing_is_deterministic_and_depends_only_on_token_id():
    t1 = hash_routing_table(500, 8, 2, layer_id=0)
    assert torch.equal(t1, hash_routing_table(500, 8, 2, layer_id=0))
    assert not torch.equal(t1, hash_routing_table(500, 8, 2, layer_id=1))
    assert (t1[:, 0] != t1[:, 1]).all()  # k distinct experts per token
    assert torch.bincount(t1.flatten(), minlength=8).min() > 500 * 2 / 8 * 0.7  # roughly uniform
    cfg, moe = _moe(layer_id=0)
    _, moe2 = _moe(layer_id=0)
    assert torch.equal(moe.gate.tid2eid, moe2.gate.tid2eid)
    ids = torch.tensor([[5, 9, 5]])
    _, idx = moe.gate(torch.randn(3, cfg.dim), ids)
    assert torch.equal(idx[0], idx[2]) and torch.equal(idx, moe.gate.tid2eid[ids[0]])


def _skewed_input(dim, n=512):
    torch.manual_seed(1)
    direction = torch.randn(dim)
    return direction + 0.3 * torch.randn(n, dim)  # every token points the same way: one expert wins


def test_bias_balancing_lowers_max_over_mean_load():
    cfg, moe = _moe(n_routed_experts=8, bias_update_speed=0.02)
    x = _skewed_input(cfg.dim)
    moe.train()
    ratios = []
    for _ in range(60):
        ctx = _ctx(torch.zeros(1, x.shape[0], dtype=torch.long))
        moe(x.unsqueeze(0), ctx)
        ratios.append(float(ctx.stats["moe_load_max_over_mean"]))
        moe.gate.after_optimizer_step()  # what Transformer.after_optimizer_step reaches
    assert ratios[0] > 2.5, ratios[0]  # the input really is skewed
    assert max(ratios[-5:]) < 0.6 * ratios[0], (ratios[0], ratios[-5:])
    assert moe.gate.load.sum() == 0  # reset after each step


def test_load_counted_only_in_training_and_bias_is_checkpointed():
    cfg, moe = _moe()
    x = torch.randn(1, 10, cfg.dim)
    moe.eval()
    moe(x, _ctx(torch.zeros(1, 10, dtype=torch.long)))
    assert moe.gate.load.sum() == 0
    moe.train()
    moe(x, _ctx(torch.zeros(1, 10, dtype=torch.long)))
    assert moe.gate.load.sum() == 10 * cfg.n_activated_experts
    sd = build_model("baseline", **SMALL, n_routed_experts=4, n_hash_layers=1).state_dict()
    assert "layers.1.ffn.gate.bias" in sd and "layers.0.ffn.gate.tid2eid" in sd
    assert not any(k.endswith("gate.load") for k in sd)


def test_block_uses_moe_switch_and_model_is_causal():
    dense = build_model("baseline", **SMALL)
    assert isinstance(dense.layers[0].ffn, FeedForward)
    torch.manual_seed(0)
    model = build_model("baseline", **SMALL, n_routed_experts=4, n_activated_experts=2,
                        n_hash_layers=1).eval()
    assert isinstance(model.layers[1].ffn, MoE) and model.layers[0].ffn.gate.is_hash
    ids = torch.randint(0, 2048, (2, 24))
    logits = model(ids)
    assert logits.shape == (2, 24, 2048)
    ids2 = ids.clone()
    ids2[:, 12:] = torch.randint(0, 2048, (2, 12))
    torch.testing.assert_close(model(ids2)[:, :12], logits[:, :12])
    model.train()
    loss, stats = model.loss(ids, ids)
    loss.backward()
    assert {"moe_load_max_over_mean", "moe_load_max_over_mean_l0", "moe_load_max_over_mean_l1"} <= set(stats)
    assert all(p.grad is not None for n, p in model.named_parameters() if "gate.weight" in n)
