"""Dense SwiGLU feed-forward (the FFN of the baseline, and each expert of DeepSeekMoE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float = 0.0) -> torch.Tensor:
    """silu(gate) * up, with V4's optional clamp of both activations at +-limit."""
    if limit > 0:
        gate = gate.clamp(max=limit)
        up = up.clamp(-limit, limit)
    return F.silu(gate) * up


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, swiglu_limit: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down
        self.swiglu_limit = swiglu_limit

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        return self.w2(swiglu(self.w1(x), self.w3(x), self.swiglu_limit))
