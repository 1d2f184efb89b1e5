"""Training-time diagnostics of the mHC residual streams.

Composite "Amax gain magnitude" (mHC paper 3.1, Fig. 3/7): the residual path from layer
l to the top is the product of the residual mappings H_res (paper orientation: the
stream update is x <- H_res x, i.e. H_res = comb^T in our code). Of that composite
P_l = H_res[L-1] ... H_res[l] the paper reports

    forward gain  = max_i |sum_j P_l[i, j]|   (largest absolute row sum: signal growth)
    backward gain = max_j |sum_i P_l[i, j]|   (largest absolute column sum: gradient growth)

averaged over the tokens of one sequence, per starting layer l (attention and FFN count
as separate layers). We log the peak over l, which is what the paper quotes: ~1.6 with
mHC (Sinkhorn is approximate after 20 iterations) vs ~3000 with unconstrained HC.
Exactly doubly stochastic mappings give 1.

The HyperConnections append comb of the first sequence ([T, n, n]) to `ctx.hc_record`
when it is a list, so the cost is 2L tiny batched n x n products per step.
"""

from __future__ import annotations

import torch


def amax_gain_profile(combs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-averaged forward and backward gains of the composite from each layer l to the top.

    `combs`: per residual layer (bottom to top) the comb matrices [T, n, n] as applied
    (out_k = sum_j comb[j, k] x_j). Returns two tensors [n_layers] (index l = start layer).
    """
    h_res = torch.stack([c.float() for c in combs]).transpose(-1, -2)  # [L, T, n, n], paper H_res
    n_layers = h_res.shape[0]
    composite = torch.eye(h_res.shape[-1], device=h_res.device).expand_as(h_res[0])
    fwd = torch.empty(n_layers, device=h_res.device)  # on the combs' device: no sync per layer
    bwd = torch.empty(n_layers, device=h_res.device)
    with torch.autocast(device_type=h_res.device.type, enabled=False):  # fp32 products
        for layer in reversed(range(n_layers)):
            composite = composite @ h_res[layer]  # H[L-1] ... H[layer]
            fwd[layer] = composite.sum(-1).abs().amax(-1).mean()
            bwd[layer] = composite.sum(-2).abs().amax(-1).mean()
    return fwd, bwd


def amax_gain_stats(combs: list[torch.Tensor]) -> dict[str, float]:
    """{"mhc_amax_fwd", "mhc_amax_bwd"}: peak over start layers of the composite gains."""
    if not combs:
        return {}
    with torch.no_grad():
        fwd, bwd = amax_gain_profile(combs)
    return {"mhc_amax_fwd": float(fwd.max()), "mhc_amax_bwd": float(bwd.max())}
