"""Matmul weights laid out [in, out] in memory for one-token decoding (`Engine(prepack=True)`).

A decode step multiplies one row vector by every weight matrix it reads: ~120 GEMVs per
token on the flagship-sized model, most of them reading weights that are no longer in cache.
With PyTorch's [out, in] layout each output is a dot product (a horizontal reduction per
output); with the storage transposed, x @ W^T streams W^T's rows into all outputs at once,
which on our CPU is ~1.5x faster per cold 256 x 256 GEMV (fp32, one thread) and ~11% of a
flagship-sized decode step.

`prepack_weights` re-lays each 2-D matmul parameter in place: the tensor keeps its shape
[out, in] (a transposed view of [in, out] storage), so every module computes exactly what
it did (`F.linear` then hands the BLAS W^T with its row stride). Opt-in because it changes the
model's parameters: a checkpoint writer that needs contiguous tensors, or a training loop
that views parameters, would see non-contiguous ones (RL rollouts share the policy model).
Embedding and memory tables are left as they are (rows are gathered, not multiplied); a head
tied to the embedding is re-laid with it (one row per token is still cheap to gather).

Projections that read the same input are packed side by side (`pack_columns`): one [in,
sum(out)] buffer whose column slices ARE the parameters (views, no second copy), so the
module path reads its own slice as before, while a one-token path multiplies the whole
buffer in one GEMV (`packed_outputs`) and splits the output with views -- per attention
layer wq_a, wkv, the compressors' wkv/wgate and the indexer's weights_proj (7 GEMVs -> 1 on
a CSA layer), per SwiGLU (routed and shared experts) w1|w3, and the MoE gate with its
shared expert's w1|w3. Each output column is the same dot product in the same order, so the
packed GEMV's values equal the separate ones (tests/test_infer_prepack.py); a GEMV call costs
~2 us before it streams a byte, and the flagship-sized model makes ~59 a token instead of ~108.
Only without autograd: the buffer is a plain tensor, so a training forward (which must reach
the parameters' gradients) takes the separate projections.
"""

from __future__ import annotations

import torch
from torch import nn

from dsv4.model.packed import pack_columns


def in_out_layout(w: torch.Tensor) -> torch.Tensor:
    """`w` [out, in] with its storage laid out [in, out] (same shape and values)."""
    return w.t().contiguous().t()


def shared_input_groups(model: nn.Module):
    """(owner, name, [weights]) for every set of projections a one-token path runs on one input."""
    from dsv4.model.attention import Attention
    from dsv4.model.ffn import FeedForward
    from dsv4.model.moe import Expert, MoE

    for mod in model.modules():  # a MoE before its shared expert: the gate joins that one's w1|w3
        if isinstance(mod, Attention):
            yield mod, "x", attn_input_weights(mod)
        elif isinstance(mod, MoE) and mod.shared_experts is not None:
            sh = mod.shared_experts
            yield mod, "gate_w13", [mod.gate.weight, sh.w1.weight, sh.w3.weight]
        elif isinstance(mod, (FeedForward, Expert)):
            yield mod, "w13", [mod.w1.weight, mod.w3.weight]


def attn_input_weights(attn) -> list:
    """The weights an attention layer applies to its input x, in packing order (None: absent):
    query (wq_a or wq), wkv (or wk, wv), compressor wkv, wgate, indexer compressor wkv, wgate,
    indexer weights_proj."""
    def w(mod, name):
        lin = getattr(mod, name, None) if mod is not None else None
        return lin.weight if lin is not None else None

    comp, idx = attn.compressor, attn.indexer
    icomp = idx.compressor if idx is not None else None
    return [w(attn, "wq_a") if attn.cfg.q_lora_rank else w(attn, "wq"), w(attn, "wkv"), w(attn, "wk"),
            w(attn, "wv"), w(comp, "wkv"), w(comp, "wgate"), w(icomp, "wkv"), w(icomp, "wgate"),
            w(idx, "weights_proj")]


@torch.no_grad()
def prepack_weights(model: nn.Module) -> int:
    """Store the matmul weights of `model` (every `weight` of nn.Linear, the routed experts
    and the MoE gates, the mHC `phi` maps) as [in, out], projections of one input packed side
    by side (`pack_columns`); returns how many were re-laid (one already laid out so, e.g. by
    an earlier engine, is skipped)."""
    from dsv4.model.mhc import HyperConnection, HyperHead
    from dsv4.model.moe import ExpertWeight, Gate

    n, seen = 0, set()
    for owner, name, params in shared_input_groups(model):
        if pack_columns(owner, name, params):
            real = [p for p in params if p is not None]
            n += len(real)
            seen.update(id(p) for p in real)
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
