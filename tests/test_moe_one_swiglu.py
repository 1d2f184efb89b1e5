"""MoE's one-token path with one SwiGLU over the shared and routed experts (`MoE._one_swiglu`,
prepacked fp32) gives the bits of the per-expert SwiGLUs, is really taken, and stands aside
where the concatenation could change a value (ragged widths)."""

import pytest
import torch

from dsv4.infer.prepack import prepack_weights
from dsv4.model.moe import MoE
from dsv4.model.transformer import build_model


def _moe(layer: int, **kw) -> MoE:
    torch.manual_seed(layer)
    cfg = build_model("flagship", **kw).config
    moe = MoE(cfg, layer_id=layer).eval()
    moe.gate.bias.data.normal_(0, 0.01)
    prepack_weights(moe)
    return moe


@pytest.mark.parametrize("layer", [0, 3])  # hash-routed, learned routing
@torch.no_grad()
def test_one_swiglu_equals_per_expert_swiglus(layer, monkeypatch):
    moe = _moe(layer)
    calls = []
    fused = MoE._one_swiglu

    def spy(self, *a):
        out = fused(self, *a)
        calls.append(out is not None)
        return out

    xs = [(torch.randn(1, moe.gate.weight.shape[1]) * 3, torch.tensor([t * 7])) for t in range(12)]
    monkeypatch.setattr(MoE, "_one_swiglu", spy)
    got = [moe._one_token(x, ids) for x, ids in xs]
    assert calls and all(calls)  # the fused path ran each time
    monkeypatch.setattr(MoE, "_one_swiglu", lambda self, *a: None)  # the per-expert path
    want = [moe._one_token(x, ids) for x, ids in xs]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    # the same comparison catches a one-ulp slip in one routing weight (a planted bug)
    x, ids = xs[0]
    weights, experts = moe.gate.route_one(x, ids)
    pre = [None, *[moe.shared_experts.w1(x), moe.shared_experts.w3(x)]]
    slipped = fused(moe, pre, x, [weights[0] * (1 + 2 ** -20), *weights[1:]], experts)
    assert not torch.equal(slipped, want[0])


@torch.no_grad()
def test_one_swiglu_stands_aside_on_ragged_widths():
    moe = _moe(3, moe_inter_dim=40)  # not a whole number of vectors: the tails would differ
    x = torch.randn(1, moe.gate.weight.shape[1])
    weights, experts = moe.gate.route_one(x, None)
    pre = [None, moe.shared_experts.w1(x), moe.shared_experts.w3(x)]
    assert moe._one_swiglu(pre, x, weights, experts) is None
