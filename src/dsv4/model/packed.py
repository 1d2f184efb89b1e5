"""Projections that read one input, packed side by side as one [in, sum(out)] buffer.

The packing itself is an inference concern (`dsv4.infer.prepack` decides what to pack and
when), but the model's own one-token paths (MoE's experts, the attention input GEMV) read the
packed buffer, so the two primitives live here, beside the model code, and the model does not
import the inference package: `pack_columns` re-lays the parameters as column views of one
buffer, and `packed_outputs` multiplies the whole buffer in ONE GEMV and splits the result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACK_ATTR = "_packed_columns"  # module attribute: {group name: (buffer, its parameters)}


def pack_columns(owner: nn.Module, name: str, params: list) -> bool:
    """Re-lay `params` ([out_i, in] each, one shared `in`; None entries: absent projections) as
    column slices of one [in, sum out_i] buffer, kept on `owner` under `name` for
    `packed_outputs`. False (nothing changed) unless there are two or more, each a plain
    contiguous 2-D tensor of one dtype and device."""
    real = [p for p in params if p is not None]
    ok = (len(real) > 1 and len({id(p) for p in real}) == len(real)
          and all(p.dim() == 2 and p.is_contiguous() for p in real)
          and len({(p.shape[1], p.dtype, p.device) for p in real}) == 1)
    if not ok:
        return False
    with torch.no_grad():
        buf = torch.cat([p.data.t() for p in real], dim=1).contiguous()
    start = 0
    for p in real:
        p.data = buf[:, start:start + p.shape[0]].t()
        start += p.shape[0]
    where, i = [], 0  # position of each requested output among the split's parts
    for p in params:
        where.append(None if p is None else i)
        i += p is not None
    groups = owner.__dict__.setdefault(PACK_ATTR, {})
    groups[name] = (buf, real, [p.shape[0] for p in real], where, [p.data_ptr() for p in real])
    return True


def packed_outputs(owner: nn.Module, name: str, x: torch.Tensor) -> list | None:
    """x @ [every weight of group `name`] in ONE GEMV, split into views: one output per entry
    given to `pack_columns` (None where it was None); None when `owner` has no such group, grad
    is enabled, or its parameters no longer view the buffer (re-assigned `.data`, `model.to(...)`,
    a copy)."""
    group = owner.__dict__.get(PACK_ATTR, {}).get(name)
    if group is None or torch.is_grad_enabled():  # autograd must see the parameters themselves
        return None
    buf, params, sizes, where, ptrs = group
    # every parameter still a view of the buffer where it was put (to(), a new `.data` move it)
    if [p.data_ptr() for p in params] != ptrs or params[0].dtype != buf.dtype:
        return None
    parts = F.linear(x, buf.t()).split(sizes, dim=-1)
    return [None if i is None else parts[i] for i in where]
