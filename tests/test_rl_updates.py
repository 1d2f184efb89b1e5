"""GRPO's mu (`RLConfig.updates_per_batch`): mu = 1 is exactly the single on-policy step;
with mu = 2 the second update is importance-weighted against the policy that sampled (ratio
!= 1) and the clip (clip-higher) masks the tokens that left [1 - eps_low, 1 + eps_high]."""

from __future__ import annotations

import copy

import pytest
import torch

from dsv4.model.transformer import build_model
from dsv4.train.grpo import group_advantages, grpo_loss
from dsv4.train.optim import build_optimizers
from dsv4.train.pretrain import apply_gradients
from dsv4.train.rl import RLConfig, _grpo_config, pack_completions, policy_logprobs, update_step

PROMPT, A, B = [5, 6, 7, 8], 20, 30
COMPS = [[A, B], [B], [A], [B, A]]  # rewarded: those starting with A
ADV = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 4)
TRUNC = torch.zeros(4, dtype=torch.bool)


def _setup(**kw):
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=64)
    cfg = RLConfig(init="x", max_steps=1, autocast=False, **kw)
    return model, cfg, build_optimizers(model, cfg)


def _batch_logp(model):
    x, y, mask = pack_completions([PROMPT] * 4, COMPS, 0)
    with torch.no_grad():
        return policy_logprobs(model, x, y, False)[0], mask


def test_one_update_per_batch_is_exactly_the_on_policy_step():
    model, cfg, opts = _setup(lr=1e-2, muon_lr=0.02)
    ref_model = copy.deepcopy(model)
    ref_opts = build_optimizers(ref_model, cfg)
    stats = update_step(model, opts, cfg, [PROMPT] * 4, COMPS, 0, torch.device("cpu"), ADV, TRUNC)
    # the single step written out: old logprobs = current ones, one loss, one optimizer step
    x, y, mask = pack_completions([PROMPT] * 4, COMPS, 0)
    with torch.no_grad():
        old, _ = policy_logprobs(ref_model, x, y, False)
    logp, _ = policy_logprobs(ref_model, x, y, False)
    loss, _ = grpo_loss(logp, old, ADV, mask, _grpo_config(cfg), None, TRUNC)
    loss.backward()
    apply_gradients(ref_model, ref_opts, cfg.grad_clip)
    assert "updates" not in stats and stats["loss"] == loss.item() and stats["clip_frac"] == 0.0
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("minibatches", [1, 2])
def test_second_update_is_clipped_against_the_sampling_policy(minibatches):
    # a large lr so that one update moves the policy past the clip range on some tokens
    model, cfg, opts = _setup(lr=0.05, muon_lr=0.1, updates_per_batch=2, minibatches=minibatches)
    once, cfg1, opts1 = _setup(lr=0.05, muon_lr=0.1, minibatches=minibatches)  # the same init
    old, mask = _batch_logp(model)
    stats = update_step(model, opts, cfg, [PROMPT] * 4, COMPS, 0, torch.device("cpu"), ADV, TRUNC)
    update_step(once, opts1, cfg1, [PROMPT] * 4, COMPS, 0, torch.device("cpu"), ADV, TRUNC)
    assert len(stats["updates"]) == 2 and stats["updates"][-1]["loss"] == stats["loss"]
    first, second = stats["updates"]
    if minibatches == 1:  # on-policy at update 1 (with 2 slices, its second slice is already not)
        assert first["clip_frac"] == 0.0 and abs(first["ratio"] - 1.0) < 1e-5
    # update 2 starts from the policy after one update (= `once`), weighed against `old`
    mid, _ = _batch_logp(once)
    ratio = torch.exp(mid - old)
    m = mask.bool()
    adv = ADV.unsqueeze(1).expand_as(ratio)
    # the pessimistic bound clips A > 0 tokens above 1 + eps_high and A < 0 tokens below 1 - eps_low
    clipped = ((adv > 0) & (ratio > 1 + cfg.eps_high)) | ((adv < 0) & (ratio < 1 - cfg.eps_low))
    assert abs(ratio[m].mean().item() - 1.0) > 1e-3  # the policy moved: ratio != 1 at update 2
    assert clipped[m].any()  # and some tokens left the clip range
    if minibatches == 1:  # one slice: the stats are the whole batch's, comparable by hand
        assert second["ratio"] == pytest.approx(ratio[m].mean().item(), rel=1e-4)
        assert second["clip_frac"] == pytest.approx(clipped[m].float().mean().item(), abs=1e-6)
    else:
        assert second["clip_frac"] > 0.0


def test_clipped_tokens_get_no_gradient():
    """Toy case by hand: A = +1 everywhere; ratios 1.5 (above 1 + 0.28: clipped, no gradient),
    1.1 (inside: gradient -ratio / n) and, for A = -1, 0.5 (below 1 - 0.2: clipped)."""
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 1.1], [0.5, 1.1]])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_loss(logp, old, adv, torch.ones(2, 2))
    loss.backward()
    g = logp.grad
    assert g[0, 0] == 0 and g[1, 0] == 0  # clipped: masked out of the update
    assert g[0, 1].item() == pytest.approx(-1.1 / 4) and g[1, 1].item() == pytest.approx(1.1 / 4)
    assert stats["clip_frac"] == pytest.approx(0.5)


def test_updates_per_batch_must_be_positive():
    from dsv4.errors import UserError

    with pytest.raises(UserError):
        RLConfig(init="x", max_steps=1, updates_per_batch=0).validate()


def test_cli_passes_updates_per_batch_and_train_part(monkeypatch, tmp_path):
    import dsv4.train.rl as rl_mod
    from dsv4.cli import main

    seen = {}

    def fake_rl(cfg):
        seen["cfg"] = cfg
        return {"step": 0, "mean_reward": 0.0, "mean_pass_rate": 0.0, "checkpoint": "-"}

    monkeypatch.setattr(rl_mod, "rl", fake_rl)
    assert main(["train", "rl", "--init", "x", "--out", str(tmp_path), "--max-steps", "1",
                 "--updates-per-batch", "3", "--minibatches", "2", "--train-part", "rl"]) == 0
    cfg = seen["cfg"]
    assert (cfg.updates_per_batch, cfg.minibatches, cfg.train_part) == (3, 2, "rl")
