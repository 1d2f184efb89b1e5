"""Learning-rate schedule: linear warmup, then cosine or linear decay to a floor.

One multiplier in [min_lr_frac, 1] scales every optimizer's peak lr (Muon, AdamW and the
Engram Adam keep their own peaks). Progress is measured in steps when the run has a
step budget, else in elapsed wall-clock time against the time budget, so that a
`--time-budget` run still anneals to the floor when its time is up.
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, progress: float, warmup_steps: int, decay: str, min_frac: float) -> float:
    """Multiplier for optimizer step `step` (0-based) at run progress `progress` in [0, 1]."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    p = min(max(progress, 0.0), 1.0)
    if decay == "constant":
        return 1.0
    if decay == "linear":
        shape = 1.0 - p
    else:  # cosine
        shape = 0.5 * (1.0 + math.cos(math.pi * p))
    return min_frac + (1.0 - min_frac) * shape


def run_progress(step: int, max_steps: int, elapsed_s: float, time_budget_min: float) -> float:
    """Fraction of the run done: the larger of the step and the time fractions in use."""
    fracs = []
    if max_steps > 0:
        fracs.append(step / max_steps)
    if time_budget_min > 0:
        fracs.append(elapsed_s / (60.0 * time_budget_min))
    return min(max(fracs, default=0.0), 1.0)


def set_lr(optimizers: list, multiplier: float) -> dict[str, float]:
    """Set every param group's lr to its `peak_lr` times `multiplier`; returns lr by group name."""
    lrs: dict[str, float] = {}
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
            lrs[group["name"]] = group["lr"]
    return lrs
