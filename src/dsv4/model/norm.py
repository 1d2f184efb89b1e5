"""RMSNorm, computed in fp32 for stability and cast back (as DeepSeek's reference does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_normalize(x, self.eps, self.weight)


def rms_normalize(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) (* weight) over the last dim, in fp32, cast back to x's dtype.

    Inference on fp32 tensors takes `F.rms_norm`: one fused op instead of six, the same bits
    (checked over many widths); a decode step normalises ~30 times per token."""
    if (x.dtype == torch.float32 and (weight is None or weight.dtype == torch.float32)
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling()):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 if weight is None else x32 * weight.float()).to(x.dtype)
