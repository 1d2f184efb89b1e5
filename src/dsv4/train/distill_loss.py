"""Distillation losses: off-policy logit KD and on-policy (reverse KL) distillation.

- Off-policy (Hinton et al. 2015): on corpus text, the student matches the teacher's
  next-token distribution, forward KL(p_teacher || p_student) per token, with temperature
  T (the loss is scaled by T^2 so gradient size does not depend on T). Mass-covering.
- On-policy (Agarwal et al. 2024 GKD; Thinking Machines 2025): the student samples, the
  teacher scores the same tokens, and the per-token reverse KL estimate
  log p_student(x_t) - log p_teacher(x_t) is a per-token cost: its negative is the
  advantage in a policy-gradient loss (`onpolicy_distill_loss`). Mode-seeking: the
  student learns to avoid what the teacher would not say, on its own distribution.
  `reverse_kl` is the exact per-position reverse KL over the vocabulary when both logits
  are at hand (same tokenizer).

Shapes: logits [B, T, V]; per-token log-probs and mask [B, T].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dsv4.train.grpo import aggregate


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Token-mean KL(teacher || student) at temperature T, times T^2; teacher is not trained."""
    t = float(temperature)
    s_logp = F.log_softmax(student_logits.float() / t, dim=-1)
    t_logp = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # [B, T]
    if mask is None:
        mask = torch.ones_like(kl)
    return aggregate(kl, mask, "token-mean") * (t * t)


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Token-mean exact KL(student || teacher) over the vocabulary, at the given positions."""
    s_logp = F.log_softmax(student_logits.float(), dim=-1)
    t_logp = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    kl = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    if mask is None:
        mask = torch.ones_like(kl)
    return aggregate(kl, mask, "token-mean")


def reverse_kl_per_token(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """The single-sample estimate log p_s(x) - log p_t(x) at student-sampled tokens x."""
    return student_logp - teacher_logp


def onpolicy_distill_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    coef: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Policy-gradient loss whose per-token advantage is -(reverse KL estimate).

    `old_logp` are the student's log-probs at sampling time (advantages and the importance
    ratio use them; detached). Its gradient is that of the sampled reverse KL
    (REINFORCE with the per-token cost), token-mean aggregated.
    """
    adv = -(reverse_kl_per_token(old_logp, teacher_logp)).detach() * coef
    ratio = torch.exp(logp - old_logp.detach())
    loss = aggregate(-adv * ratio, mask, "token-mean")
    stats = {"reverse_kl": float(aggregate(reverse_kl_per_token(old_logp, teacher_logp).detach(), mask))}
    return loss, stats
