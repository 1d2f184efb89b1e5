"""Multi-token prediction: one extra block that predicts the token after next (SPEC 1.5).

At position t the MTP block sees the main model's final residual streams h_t (before the
hc_head collapse) and the embedding of the next token x_{t+1}, combined by two
projections after their own RMSNorms (DeepSeek-V3 eq. 21, V4's `e_proj`/`h_proj`):

    x = e_proj(RMSNorm(embed(x_{t+1})))  +  h_proj(RMSNorm(h_t))      (per stream)

then runs one ordinary Block (its own mHC, attention, FFN/MoE), collapses the streams
with its own hc_head, applies its own final norm and the SHARED output head, and is
trained to predict x_{t+2}. Embedding and head are shared with the main model (passed
in, not registered twice). The loss weight is scheduled by the training progress:
0.3 early, 0.1 late (DeepSeek-V3: 0.3 for the first 10T tokens, 0.1 for the last 4.8T).

At inference the same block drafts one token for self-speculative decoding
(`Transformer.mtp_draft`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig
from dsv4.model import mhc
from dsv4.model.mhc import HyperHead
from dsv4.model.mhc_fused import compiled
from dsv4.model.norm import RMSNorm, rms_normalize


def mtp_weight(cfg: ModelConfig, progress: float) -> float:
    """The MTP loss weight at `progress` in [0, 1] of training (a step schedule)."""
    return cfg.mtp_loss_weight if progress < cfg.mtp_weight_switch else cfg.mtp_loss_weight_late


def mtp_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(next_ids, mtp_targets) from the main next-token targets [B, T].

    next_ids[t] = x_{t+1} = targets[t] (ignored positions replaced by id 0, whose loss is
    masked anyway); mtp_targets[t] = x_{t+2} = targets[t+1], and -100 where either token
    is unknown (the last position, padding, masked prompt tokens).
    """
    ignore = targets < 0
    next_ids = targets.masked_fill(ignore, 0)
    later = torch.full_like(targets, -100)
    later[:, :-1] = targets[:, 1:]
    later = later.masked_fill(ignore, -100)
    return next_ids, later


def _norm_proj(x, norm_weight, weight, eps: float, dtype):
    """h_proj(hnorm(x)) as the eager modules compute it (norm in fp32, cast to x's dtype, matmul in
    `dtype`), for torch.compile: on the n-wide mHC streams the norm's eager elementwise passes
    and their autograd cost twice the matmuls; compiled they are one loop each way."""
    return rms_normalize(x, eps, norm_weight).to(dtype) @ weight.to(dtype).t()


class MTPBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, block: nn.Module):
        super().__init__()
        self.hc_mult = cfg.hc_mult
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.e_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.h_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.block = block  # an ordinary Block with layer_id = n_layers (window-only attention)
        self.hc_head = HyperHead(cfg) if cfg.hc_mult > 1 else None
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, streams: torch.Tensor, next_ids: torch.Tensor, embed: nn.Module, ctx) -> torch.Tensor:
        """Final-normed MTP hidden states [B, T, D] (feed to the shared head)."""
        e = self.e_proj(self.enorm(embed(next_ids)))
        if mhc.compile_enabled() and torch.is_grad_enabled():  # the fused training path (mhc.set_compile)
            with torch.autocast(device_type=streams.device.type, enabled=False):
                h = compiled(_norm_proj, self.hc_mult)(streams, self.hnorm.weight, self.h_proj.weight,
                                                       self.hnorm.eps, e.dtype)
        else:
            h = self.h_proj(self.hnorm(streams))
        x = h + (e.unsqueeze(-2) if self.hc_mult > 1 else e)
        x = self.block(x, ctx)
        if self.hc_head is not None:
            x = self.hc_head(x)
        return self.norm(x)

    def loss(self, streams, targets, embed: nn.Module, head: nn.Module, ctx) -> torch.Tensor:
        next_ids, later = mtp_targets(targets)
        logits = head(self(streams, next_ids, embed, dataclasses.replace(ctx, ids=next_ids)))
        if (later >= 0).any():
            return F.cross_entropy(logits.float().flatten(0, 1), later.flatten(), ignore_index=-100)
        return logits.sum() * 0.0  # keep the graph (and DDP/FSDP) happy on all-ignored batches
