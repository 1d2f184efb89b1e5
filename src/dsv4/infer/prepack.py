"""Matmul weights laid out [in, out] in memory for one-token decoding (`Engine(prepack=True)`).

A decode step multiplies one row vector by every weight matrix it reads: ~120 GEMVs per
token on the flagship-sized model, most of them reading weights that are no longer in cache.
With PyTorch's [out, in] layout each output is a dot product (a horizontal reduction per
output); with the storage transposed, x @ W^T streams W^T's rows into all outputs at once,
which on our CPU is ~1.5x faster per cold 256 x 256 GEMV (fp32, one thread) and ~11% of a
flagship-sized decode step.

`prepack_weights` re-lays each 2-D matmul parameter in place: the tensor keeps its shape
[out, in] (a transposed view of [in, out] storage), so every module computes exactly what
it did (`F.linear` then hands the BLAS a contiguous W^T). Opt-in because it changes the
model's parameters: a checkpoint writer that needs contiguous tensors, or a training loop
that views parameters, would see non-contiguous ones (RL rollouts share the policy model).
Embedding and memory tables are left as they are (rows are gathered, not multiplied); a head
tied to the embedding is re-laid with it (one row per token is still cheap to gather).
"""

from __future__ import annotations

import torch
from torch import nn


def in_out_layout(w: torch.Tensor) -> torch.Tensor:
    """`w` [out, in] with its storage laid out [in, out] (same shape and values)."""
    return w.t().contiguous().t()


@torch.no_grad()
def prepack_weights(model: nn.Module) -> int:
    """Store the matmul weights of `model` (every `weight` of nn.Linear, the routed experts
    and the MoE gates, the mHC `phi` maps) as [in, out]; returns how many were re-laid (one
    already laid out so, e.g. by an earlier engine, is skipped)."""
    from dsv4.model.mhc import HyperConnection, HyperHead
    from dsv4.model.moe import ExpertWeight, Gate

    n, seen = 0, set()
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, ExpertWeight, Gate)):
            p = mod.weight
        elif isinstance(mod, (HyperConnection, HyperHead)):
            p = mod.phi
        else:
            continue
        if id(p) in seen or p.dim() != 2 or not p.is_contiguous() or 1 in p.shape:
            continue
        seen.add(id(p))
        p.data = in_out_layout(p.data)
        n += 1
    return n
