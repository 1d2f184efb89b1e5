"""Rotary position embedding on the last `rope_dim` dims of a head, with YaRN scaling.

V4 rotates only part of each head (the rest carries position-free content), so the
helpers here take the rotated slice explicitly. YaRN (Peng et al. 2023) interpolates
low frequencies by `rope_factor` and keeps high frequencies, blending between
`beta_fast` and `beta_slow` rotations over the original context length.
"""

from __future__ import annotations

import math

import torch

from dsv4.config import ModelConfig


def rope_frequencies(cfg: ModelConfig, seq_len: int, device=None) -> torch.Tensor:
    """Complex rotations [seq_len, rope_dim/2] (cos + i sin) for positions 0..seq_len-1."""
    dim = cfg.rope_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    if cfg.rope_factor > 1.0 and cfg.original_seq_len > 0:
        # YaRN: correction range in dimension space from the rotation counts beta_fast/slow.
        def dim_for_rotations(n_rot: float) -> float:
            turns = cfg.original_seq_len / (n_rot * 2 * math.pi)
            return dim * math.log(turns) / (2 * math.log(cfg.rope_theta))

        low = max(math.floor(dim_for_rotations(cfg.beta_fast)), 0)
        high = min(math.ceil(dim_for_rotations(cfg.beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64, device=device) - low) / (high - low)).clamp(0, 1)
        keep = 1.0 - ramp  # 1 -> keep the original (high) frequency, 0 -> interpolate
        inv_freq = inv_freq / cfg.rope_factor * (1 - keep) + inv_freq * keep
    t = torch.arange(seq_len, dtype=torch.float64, device=device)
    angles = torch.outer(t, inv_freq)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate the last `2*freqs.shape[-1]` dims of x [..., T, H, D] by freqs [T, r/2]
    (or [B, T, r/2]: per-row positions, as in ragged cached decoding).

    `inverse=True` applies the conjugate rotation (V4 un-rotates the rope dims of the
    attention output so that the output carries no absolute position).
    """
    rd = freqs.shape[-1] * 2
    head, tail = x[..., : x.shape[-1] - rd], x[..., x.shape[-1] - rd:]
    f = freqs.conj() if inverse else freqs
    shape = tail.shape
    t = torch.view_as_complex(tail.float().reshape(*shape[:-1], rd // 2, 2))
    t = t * f.unsqueeze(-2)  # [T, r/2] or per-row [B, T, r/2] -> broadcast over heads
    t = torch.view_as_real(t).reshape(shape).to(x.dtype)
    return torch.cat([head, t], dim=-1) if head.shape[-1] else t


def yarn_attention_scale(cfg: ModelConfig) -> float:
    """YaRN's softmax temperature correction (1 when scaling is off)."""
    if cfg.rope_factor > 1.0 and cfg.original_seq_len > 0:
        return 0.1 * math.log(cfg.rope_factor) + 1.0
    return 1.0
