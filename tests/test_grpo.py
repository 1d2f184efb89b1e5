"""GRPO and distillation math against hand-computed examples, and toy policies that learn."""

import math

import pytest
import torch

from dsv4.train.distill_loss import forward_kl, onpolicy_distill_loss, reverse_kl, reverse_kl_per_token
from dsv4.train.grpo import GRPOConfig, aggregate, group_advantages, grpo_loss, kl_k3, token_logprobs


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4)
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.866025; group 2: all equal -> 0
    s = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(a, torch.tensor([s, -s, -s, s, 0, 0, 0, 0]), atol=1e-5)
    dr = group_advantages(r, 4, std_norm=False)  # Dr.GRPO: mean-only
    assert torch.allclose(dr, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(3), 1)


def _example():
    ratios = torch.tensor([[1.0, 1.5, 0.5], [1.0, 1.1, 0.7]])
    old = torch.log(torch.full((2, 3), 0.3))
    logp = (old + ratios.log()).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old, adv, mask


def test_clipped_loss_by_hand():
    logp, old, adv, mask = _example()
    cfg = GRPOConfig(eps_low=0.2, eps_high=0.28)
    # seq 0 (A=+1): -1, -min(1.5, 1.28) = -1.28, -0.5 (0.5 < 0.8: unclipped side is smaller)
    # seq 1 (A=-1): 1, 1.1, masked (0.7 -> 0.8)
    loss, stats = grpo_loss(logp, old, adv, mask, cfg)
    assert loss.item() == pytest.approx((-1 - 1.28 - 0.5 + 1 + 1.1) / 5, abs=1e-5)
    assert stats["clip_frac"] == pytest.approx(1 / 5)
    assert stats["tokens"] == 5
    loss.backward()
    g = logp.grad
    # the clipped token gives no gradient; an unclipped token's gradient is -A * ratio / n_tokens
    assert g[0, 1].item() == 0.0
    assert g[0, 2].item() == pytest.approx(-0.5 / 5, abs=1e-6)
    assert g[1, 1].item() == pytest.approx(1.1 / 5, abs=1e-6)
    assert g[1, 2].item() == 0.0  # masked


def test_aggregations_by_hand():
    logp, old, adv, mask = _example()
    seq = grpo_loss(logp, old, adv, mask, GRPOConfig(loss_agg="seq-mean-token-mean"))[0]
    assert seq.item() == pytest.approx(((-1 - 1.28 - 0.5) / 3 + (1 + 1.1) / 2) / 2, abs=1e-5)
    dr = grpo_loss(logp, old, adv, mask, GRPOConfig(loss_agg="seq-mean-token-sum-norm", max_tokens=4))[0]
    assert dr.item() == pytest.approx((-1 - 1.28 - 0.5 + 1 + 1.1) / (2 * 4), abs=1e-5)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = torch.tensor([[1, 0], [0, 0]])
    assert aggregate(x, m, "seq-mean-token-mean").item() == 1.0  # the empty sequence does not count
    with pytest.raises(ValueError):
        GRPOConfig(loss_agg="mean")


def test_truncated_samples_are_masked():
    logp, old, adv, mask = _example()
    trunc = torch.tensor([False, True])
    loss = grpo_loss(logp, old, adv, mask, GRPOConfig(), truncated=trunc)[0]
    assert loss.item() == pytest.approx((-1 - 1.28 - 0.5) / 3, abs=1e-5)
    kept = grpo_loss(logp, old, adv, mask, GRPOConfig(mask_truncated=False), truncated=trunc)[0]
    assert kept.item() == pytest.approx(-0.136, abs=1e-5)


def test_k3_kl_by_hand():
    logp = torch.log(torch.tensor([0.5]))
    ref = torch.log(torch.tensor([0.25]))
    # d = log(0.25/0.5) = -ln 2: exp(d) - d - 1 = 0.5 + ln 2 - 1
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    assert kl_k3(ref, ref).item() == 0.0
    logp, old, adv, mask = _example()
    ref = old.clone()
    base = grpo_loss(logp, old, adv, mask, GRPOConfig())[0]
    with_kl, stats = grpo_loss(logp, old, adv, mask, GRPOConfig(kl_coef=0.1), ref_logp=ref)
    kl = kl_k3(logp.detach(), ref)
    expect = ((kl * mask).sum() / mask.sum()).item()
    assert stats["kl"] == pytest.approx(expect, abs=1e-6)
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * expect, abs=1e-5)
    with pytest.raises(ValueError):
        grpo_loss(logp, old, adv, mask, GRPOConfig(kl_coef=0.1))


def test_token_logprobs():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))


def test_kd_losses_by_hand_and_zero_when_equal():
    t = torch.log(torch.tensor([[[0.5, 0.5]]]))
    s = torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert forward_kl(s, t).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    x = torch.randn(2, 5, 11)
    assert forward_kl(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert forward_kl(x, x.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert reverse_kl(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert forward_kl(x, torch.randn(2, 5, 11)).item() > 0
    lp = torch.randn(2, 5)
    assert torch.equal(reverse_kl_per_token(lp, lp), torch.zeros(2, 5))
    loss, stats = onpolicy_distill_loss(lp.clone().requires_grad_(), lp, lp, torch.ones(2, 5))
    assert loss.item() == 0.0 and stats["reverse_kl"] == 0.0


def _sample(logits: torch.Tensor, g: int, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(torch.softmax(logits, -1), g, replacement=True, generator=gen)


def test_toy_policy_learns_the_rewarded_answer():
    """A 2-token 'model' (a logits table per position); reward 1 iff the answer is (2, 1)."""
    gen = torch.Generator().manual_seed(0)
    table = torch.zeros(2, 4, requires_grad=True)  # position -> logits over 4 tokens
    opt = torch.optim.SGD([table], lr=0.5)
    G = 16

    def p_target():
        p = torch.softmax(table.detach(), -1)
        return (p[0, 2] * p[1, 1]).item()

    before = p_target()
    cfg = GRPOConfig(loss_agg="token-mean")
    for _ in range(25):
        with torch.no_grad():
            toks = torch.stack([_sample(table[i], G, gen) for i in range(2)], dim=1)  # [G, 2]
            rewards = ((toks[:, 0] == 2) & (toks[:, 1] == 1)).float()
            old = token_logprobs(table.detach().expand(G, 2, 4), toks)
        adv = group_advantages(rewards, G)
        for _ in range(2):  # two optimisation steps per batch exercise the ratio and clipping
            logp = token_logprobs(table.expand(G, 2, 4), toks)
            loss, _ = grpo_loss(logp, old, adv, torch.ones(G, 2), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert before == pytest.approx(1 / 16)
    assert p_target() > 0.5


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("std_norm", [True, False])
def test_one_step_moves_toward_the_rewarded_answer(agg, std_norm):
    table = torch.zeros(2, 4, requires_grad=True)
    toks = torch.cartesian_prod(torch.arange(4), torch.arange(4))  # all 16 answers, once each
    rewards = ((toks[:, 0] == 2) & (toks[:, 1] == 1)).float()
    old = token_logprobs(table.detach().expand(16, 2, 4), toks)
    logp = token_logprobs(table.expand(16, 2, 4), toks)
    adv = group_advantages(rewards, 16, std_norm=std_norm)
    loss, _ = grpo_loss(logp, old, adv, torch.ones(16, 2), GRPOConfig(loss_agg=agg))
    loss.backward()
    with torch.no_grad():
        table -= 1.0 * table.grad
    p = torch.softmax(table.detach(), -1)
    assert p[0, 2] > 0.25 and p[1, 1] > 0.25  # both rewarded tokens gained probability
    assert p[0].argmax() == 2 and p[1].argmax() == 1


def test_onpolicy_distillation_moves_student_to_teacher():
    gen = torch.Generator().manual_seed(1)
    teacher = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    student = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([student], lr=0.5)
    kl0 = reverse_kl(student.detach().view(1, 1, 4), teacher.view(1, 1, 4)).item()
    for _ in range(40):
        with torch.no_grad():
            toks = _sample(student.detach(), 64, gen).view(64, 1)
            old = token_logprobs(student.detach().expand(64, 1, 4), toks)
            t_lp = token_logprobs(teacher.expand(64, 1, 4), toks)
        logp = token_logprobs(student.expand(64, 1, 4), toks)
        loss, _ = onpolicy_distill_loss(logp, old, t_lp, torch.ones(64, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    kl1 = reverse_kl(student.detach().view(1, 1, 4), teacher.view(1, 1, 4)).item()
    assert kl1 < 0.25 * kl0


def test_offpolicy_kd_fits_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(3, 4, 7)
    student = torch.zeros(3, 4, 7, requires_grad=True)
    opt = torch.optim.Adam([student], lr=0.1)
    first = None
    for _ in range(100):
        loss = forward_kl(student, teacher, temperature=2.0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * first
