"""Rotary position embedding on the last `rope_dim` dims of a head, with YaRN scaling.

V4 rotates only part of each head (the rest carries position-free content), so the
helpers here take the rotated slice explicitly. RoPE is *interleaved*: dims (2i, 2i+1)
form one complex pair, as in DeepSeek's reference (`view_as_complex` on pairs).

YaRN (Peng et al. 2023) interpolates low frequencies by `rope_factor` and keeps high
frequencies, blending linearly between the dimensions that complete `beta_fast` and
`beta_slow` rotations over `original_seq_len` tokens. Facts checked against DeepSeek's
V4 inference code (`precompute_freqs_cis`) and transformers' DeepseekV4:
  - YaRN is on iff `original_seq_len > 0` (factor 1 is then a no-op);
  - correction range: floor/ceil of d*ln(L/(2*pi*beta)) / (2 ln theta), clamped to [0, d-1];
  - V4 applies NO YaRN softmax temperature (mscale): transformers forces
    `attention_factor=1.0` for V4, DeepSeek's softmax scale is head_dim**-0.5;
  - two RoPE tables: window-only layers use plain `rope_theta` without YaRN ("main");
    CSA/HCA layers, their compressors and indexers use `compress_rope_theta` with YaRN
    ("compress"). A model without compressed layers (the baseline) keeps YaRN on its
    single table so that long-context scaling still works there.
  - frequencies are computed in fp32 like both references, so angles match bit for bit
    in the conversion check (fp64 would differ by ~1e-4 rad at 1e5 positions).
"""

from __future__ import annotations

import math

import torch

from dsv4.config import ModelConfig


def has_compressed_layers(cfg: ModelConfig) -> bool:
    return any(r > 0 for r in cfg.compress_ratios)


def rope_frequencies(cfg: ModelConfig, seq_len: int, device=None, kind: str = "main") -> torch.Tensor:
    """Complex rotations [seq_len, rope_dim/2] (cos + i sin) for positions 0..seq_len-1.

    kind="main": the table of window-only layers (and of every layer when no layer is
    compressed); kind="compress": the table of CSA/HCA layers (DeepSeek V4 Attention.__init__).
    """
    if kind == "compress":
        theta = cfg.compress_rope_theta or cfg.rope_theta
        yarn = True
    elif kind == "main":
        theta = cfg.rope_theta
        yarn = not has_compressed_layers(cfg)  # V4: "disable YaRN in pure sliding-window attention"
    else:
        raise ValueError(f"unknown rope kind {kind!r}")
    return rope_table(cfg.rope_dim, seq_len, theta, cfg.original_seq_len if yarn else 0,
                      cfg.rope_factor, cfg.beta_fast, cfg.beta_slow, device)


def yarn_inv_freq(dim: int, theta: float, original_seq_len: int, factor: float,
                  beta_fast: float, beta_slow: float, device=None) -> torch.Tensor:
    """Per-pair angular frequencies [dim/2], YaRN-blended when original_seq_len > 0."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    if original_seq_len > 0:
        def dim_for_rotations(n_rot: float) -> float:
            # the dimension whose wavelength fits n_rot times into the original context
            return dim * math.log(original_seq_len / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(dim_for_rotations(beta_fast)), 0)
        high = min(math.ceil(dim_for_rotations(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
        keep = 1.0 - ramp  # 1 -> keep the original (high) frequency, 0 -> interpolate by factor
        inv_freq = inv_freq / factor * (1 - keep) + inv_freq * keep
    return inv_freq


def rope_table(dim: int, seq_len: int, theta: float, original_seq_len: int = 0, factor: float = 1.0,
               beta_fast: float = 32, beta_slow: float = 1, device=None) -> torch.Tensor:
    inv_freq = yarn_inv_freq(dim, theta, original_seq_len, factor, beta_fast, beta_slow, device)
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(t, inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate the last `2*freqs.shape[-1]` dims of x [..., T, H, D] by freqs [T, r/2].

    `inverse=True` applies the conjugate rotation (V4 un-rotates the rope dims of the
    attention output so that the output carries no absolute position). Computed in fp32
    and cast back to x's dtype, with real arithmetic on (even, odd) pairs — the complex
    product written out, so that torch.compile/inductor can fuse it (no complex kernels).
    """
    rd = freqs.shape[-1] * 2
    head, tail = x[..., : x.shape[-1] - rd], x[..., x.shape[-1] - rd:]
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # inference: one complex product, half the ops (decode runs ~4 rotations per layer
        # per token); the same bits as the written-out form below on CPU
        f = freqs.unsqueeze(-2)
        if x.dtype == torch.float32 and x.shape[-1] % 2 == 0 and f.shape[:-2] == x.shape[:-2]:
            # fp32 (one-token decode): rotate the tail of a copy in place, ~half the small ops
            # again (no cast, no cat); the same complex product, so the same bits
            out = x.clone(memory_format=torch.contiguous_format)
            c = torch.view_as_complex(out[..., out.shape[-1] - rd:].unflatten(-1, (rd // 2, 2)))
            c.mul_(f.conj() if inverse else f)
            return out
        c = torch.view_as_complex(tail.float().unflatten(-1, (rd // 2, 2)))
        t = torch.view_as_real(c * (f.conj() if inverse else f)).flatten(-2).to(x.dtype)
        return torch.cat([head, t], dim=-1) if head.shape[-1] else t
    f = torch.view_as_real(freqs)  # [T, r/2, 2] = (cos, sin)
    cos, sin = f[..., 0].unsqueeze(-2), f[..., 1].unsqueeze(-2)  # [T, 1, r/2]: broadcast over heads
    if inverse:
        sin = -sin
    t = tail.float().unflatten(-1, (rd // 2, 2))
    even, odd = t[..., 0], t[..., 1]
    t = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)
    return torch.cat([head, t], dim=-1) if head.shape[-1] else t


def yarn_attention_scale(cfg: ModelConfig) -> float:
    """YaRN's softmax temperature correction 0.1 ln(s) + 1 (1 when scaling is off).

    Kept for reference and for non-V4 uses: V4 itself does NOT apply it (see module doc).
    """
    if cfg.rope_factor > 1.0 and cfg.original_seq_len > 0:
        return 0.1 * math.log(cfg.rope_factor) + 1.0
    return 1.0
