"""GRPO's math as pure torch functions: advantages, the clipped objective, KL, aggregation.

The RL loop (train helper) samples G completions per task, scores them (dsv4.tasks.reward),
then calls `group_advantages` and `grpo_loss` on per-token log-probabilities:

- Advantages (DeepSeekMath GRPO, eq. 3 outcome supervision): A_i = (r_i - mean(r)) / std(r)
  within each group of G samples of one prompt, the same for every token of sample i.
  Dr.GRPO (Liu et al. 2025) drops the std division (it up-weights too easy/hard groups):
  `std_norm=False`.
- Clipped surrogate (PPO), with DAPO's clip-higher (Yu et al. 2025): the ratio is clipped
  to [1 - eps_low, 1 + eps_high] with eps_high > eps_low, so low-probability tokens with
  positive advantage can still grow (keeps entropy from collapsing).
- KL to a reference policy, the k3 estimator (Schulman; GRPO eq. 4):
  KL ~= exp(ref - logp) - (ref - logp) - 1, unbiased and always >= 0.
- Loss aggregation: "token-mean" (DAPO: every token in the batch weighs the same),
  "seq-mean-token-mean" (original GRPO: mean over each sequence, then over sequences,
  which down-weights tokens of long answers), "seq-mean-token-sum-norm" (Dr.GRPO: token
  sums divided by a constant, the generation budget, so length carries no bias).
- Truncated samples (hit the length limit without finishing) are masked out (DAPO's
  overlong filtering), so the policy is not pushed around by answers cut mid-way.

Shapes: logp, old_logp, ref_logp, mask are [B, T] (T = completion tokens); advantages [B].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class GRPOConfig:
    eps_low: float = 0.2
    eps_high: float = 0.28  # DAPO clip-higher; = eps_low for symmetric PPO clipping
    kl_coef: float = 0.0  # beta of the k3 KL to the reference (0: no reference model needed)
    std_norm: bool = True  # False: Dr.GRPO's mean-only advantages
    loss_agg: str = "token-mean"
    max_tokens: int | None = None  # the constant of seq-mean-token-sum-norm (default: T)
    mask_truncated: bool = True

    def __post_init__(self):
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"loss_agg must be one of {AGGREGATIONS}, got {self.loss_agg!r}")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError("need 0 <= eps_low < 1 and eps_high >= 0")


def group_advantages(
    rewards: torch.Tensor, group_size: int, std_norm: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Per-sample advantages from rewards [B] laid out group by group (B = n_groups * G).

    A group whose rewards are all equal gets advantage 0 (it carries no signal).
    The std is the unbiased sample std (as TRL's GRPO), so G must be >= 2 when std_norm.
    """
    r = rewards.float().reshape(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if std_norm:
        if group_size < 2:
            raise ValueError("std-normalised advantages need group_size >= 2")
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position: logits [B, T, V], targets [B, T] -> [B, T] (float32)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution per position: [B, T, V] -> [B, T]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) at tokens sampled from pi (GRPO eq. 4)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", max_tokens: int | None = None
) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar over the tokens where mask is 1."""
    m = mask.to(per_token.dtype)
    summed = (per_token * m).sum(dim=1)  # [B]
    if mode == "token-mean":
        return summed.sum() / m.sum().clamp(min=1)
    if mode == "seq-mean-token-mean":
        n = m.sum(dim=1)
        live = n > 0  # fully masked (e.g. truncated) sequences do not count
        if not live.any():
            return summed.sum() * 0.0
        return (summed[live] / n[live]).mean()
    if mode == "seq-mean-token-sum-norm":
        return summed.sum() / (per_token.shape[0] * float(max_tokens or per_token.shape[1]))
    raise ValueError(f"unknown aggregation {mode!r}; use one of {AGGREGATIONS}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig | None = None,
    ref_logp: torch.Tensor | None = None,
    truncated: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """The GRPO/DAPO objective to minimise, and stats (clip fraction, KL, ratio)."""
    cfg = cfg or GRPOConfig()
    mask = mask.to(logp.dtype)
    if truncated is not None and cfg.mask_truncated:
        mask = mask * (~truncated.bool()).to(logp.dtype).unsqueeze(1)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # [B, 1]: the same for every token
    ratio = torch.exp(logp - old_logp.detach())
    clipped = torch.clamp(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    # PPO's pessimistic bound: max of the two losses = min of the two objectives.
    per_token = torch.maximum(-adv * ratio, -adv * clipped)
    stats = {}
    if cfg.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        kl = kl_k3(logp, ref_logp.detach())
        per_token = per_token + cfg.kl_coef * kl
        stats["kl"] = float(aggregate(kl.detach(), mask))
    loss = aggregate(per_token, mask, cfg.loss_agg, cfg.max_tokens)
    with torch.no_grad():
        was_clipped = ((-adv * clipped) > (-adv * ratio)).to(logp.dtype)
        stats["clip_frac"] = float(aggregate(was_clipped, mask))
        stats["ratio"] = float(aggregate(ratio, mask))
        stats["tokens"] = int(mask.sum())
    return loss, stats
