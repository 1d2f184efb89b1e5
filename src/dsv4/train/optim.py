"""Optimizers by parameter role (SPEC 1.5), using PyTorch's own implementations.

- `torch.optim.Muon` (Newton-Schulz orthogonalised momentum) for the 2-D hidden matrices
  of `model.optim_groups()["muon"]`; Muon accepts only 2-D parameters, which that
  grouping guarantees (it also works on FSDP2's DTensor shards).
- AdamW for embeddings, the LM head, norms, biases and scalars; weight decay (if any)
  only on matrices, never on norms and scalars.
- Adam (no weight decay) at `engram_lr_mult` x lr for Engram embedding tables, which
  see sparse, rare updates and want a larger step.

Each param group carries `name` and `peak_lr`, which the schedule scales every step.
"""

from __future__ import annotations

import torch

from dsv4.errors import UserError
from dsv4.train.config import TrainConfig
from dsv4.train.engram_optim import sparse_engram_optimizer


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    groups = model.optim_groups()
    opts: list[torch.optim.Optimizer] = []
    muon = [p for _, p in groups.get("muon", [])]
    if muon:
        bad = [n for n, p in groups["muon"] if p.dim() != 2]
        if bad:
            raise UserError(f"Muon takes only 2-D parameters; the model put {bad[0]} in its muon group")
        opts.append(
            torch.optim.Muon(
                [dict(params=muon, name="muon", peak_lr=cfg.muon_lr)],
                lr=cfg.muon_lr,
                weight_decay=cfg.muon_weight_decay,
                momentum=0.95,
                nesterov=True,
            )
        )
    adamw = groups.get("adamw", [])
    if adamw:
        decay = [p for _, p in adamw if p.dim() >= 2]
        no_decay = [p for _, p in adamw if p.dim() < 2]
        param_groups = [
            dict(params=ps, name=name, peak_lr=cfg.lr, weight_decay=wd)
            for ps, name, wd in ((decay, "adamw", cfg.weight_decay), (no_decay, "adamw_nodecay", 0.0))
            if ps
        ]
        opts.append(torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8))
    engram = [p for _, p in groups.get("engram", [])]
    if engram:
        lr = cfg.lr * cfg.engram_lr_mult
        opts.append(
            torch.optim.Adam(
                [dict(params=engram, name="engram", peak_lr=lr)],
                lr=lr,
                betas=tuple(cfg.betas),
                eps=1e-8,
                weight_decay=0.0,
            )
        )
    # Host/mmap Engram tables are not parameters: row-wise Adam outside the dense optimizers (issue 8).
    sparse = sparse_engram_optimizer(model, cfg.lr * cfg.engram_lr_mult, tuple(cfg.betas))
    if sparse is not None:
        opts.append(sparse)
    return opts
