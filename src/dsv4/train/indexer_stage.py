"""DSA indexer training schedule (DeepSeek-V3.2 sparse attention, SPEC 1.3).

Stage 1, dense warm-up (the first `indexer_warmup_steps` steps): the main attention reads
every complete compressed entry, and only the lightning indexer learns, from its KL loss
to the attention distribution; every other parameter is frozen. Stage 2, sparse: top-k
selection on, everything learns; the indexer's input is detached inside the attention, so
it still learns only from its KL loss. The stage is a pure function of the step, so a
resumed run lands in the same stage with the same frozen set. Stage 1 runs at its own
constant lr (V3.2: 1e-3), not the main schedule's warm-up ramp; the main schedule then
continues from the global step.
"""

from __future__ import annotations

from torch import nn

from dsv4.errors import UserError
from dsv4.model.attention import set_indexer_stage


def indexer_parameter(name: str) -> bool:
    return ".indexer." in name


class IndexerSchedule:
    def __init__(self, model: nn.Module, warmup_steps: int, warmup_lr: float = 1e-3, base_lr: float = 1.0):
        self.model, self.warmup_steps = model, warmup_steps
        self.warmup_multiplier = warmup_lr / base_lr  # groups' peak lrs are relative to base_lr
        self.stage: str | None = None
        if warmup_steps and not any(indexer_parameter(n) for n, _ in model.named_parameters()):
            raise UserError(
                "--indexer-warmup-steps needs CSA layers (compress ratio 4) with a lightning indexer; "
                "this model has none"
            )

    def update(self, step: int) -> str:
        """Set the stage for the optimizer step about to run (0-based `step`); returns it.

        Without a warm-up the model is left exactly as built (sparse, nothing frozen): re-setting
        the flags of FSDP2-sharded parameters every step made 2 of 6 two-rank torchrun runs abort
        at exit (0 of 12 without)."""
        stage = "dense" if step < self.warmup_steps else "sparse"
        if not self.warmup_steps or stage == self.stage:
            return stage
        set_indexer_stage(self.model, stage)
        for name, p in self.model.named_parameters():
            trainable = stage == "sparse" or indexer_parameter(name)
            if p.requires_grad != trainable:
                p.requires_grad_(trainable)
        self.stage = stage
        return stage

    def lr_multiplier(self, stage: str, scheduled: float) -> float:
        """The multiplier of every group's peak lr for a step in `stage`."""
        return self.warmup_multiplier if self.warmup_steps and stage == "dense" else scheduled
