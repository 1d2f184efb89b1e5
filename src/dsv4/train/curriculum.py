"""RL task sampling weighted by learnability: draw more tasks from the families whose GRPO
groups still have reward variance.

A group of G samples whose rewards are all equal (the policy always passes, or never)
gives zero advantage: its rollouts cost as much as any other and teach nothing. After SFT
most families are solved on their train instances every time, so a uniform stream spends
most of its rollouts there. `LearnableStream` keeps, per family, an exponential moving
average of "this family's last groups had a signal" and draws the family of the next task
with probability proportional to it plus a floor (so no family is starved and one that
regains variance is found again); the families start optimistic (1.0), so each is tried
before its weight falls. This is the "sample at the frontier of learnability" idea
(tasks where the success rate p has high p(1 - p)), at the granularity of the generator's
families, which share a template and so share a success rate.

Tasks within a family come in the order of `iter_tasks(split="train")` for that family
(no repeats, held-out instances never appear); the state (per-family counts and averages)
is saved with the checkpoint, so a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import random

from dsv4.errors import UserError

EMA = 0.3  # weight of the newest group in a family's signal average
FLOOR = 0.05  # every live family keeps at least this weight


class LearnableStream:
    """Train-split tasks, families drawn by learnability; `observe` feeds back each group."""

    def __init__(self, tok, cfg, max_len: int, state: dict | None = None):
        from dsv4.tasks import FAMILIES

        self.tok, self.cfg, self.max_len = tok, cfg, max_len
        self.families = sorted(cfg.families) if cfg.families else sorted(FAMILIES)
        self.counts = {f: 0 for f in self.families}
        self.signal = {f: 1.0 for f in self.families}
        self._its = {f: self._family_iter(f) for f in self.families}
        self.live = list(self.families)
        self.draws = 0
        if state:
            self.draws = int(state["draws"])
            self.signal.update(state["signal"])
            for f, n in state["counts"].items():
                for _ in range(n):
                    self._next_of(f)
            self.live = [f for f in self.families if f in state["live"]]

    def _family_iter(self, family: str):
        from dsv4.train.rl import fitting_tasks

        return fitting_tasks(self.tok, self.cfg, self.max_len, [family])

    def _next_of(self, family: str):
        item = next(self._its[family], None)
        if item is not None:
            self.counts[family] += 1
        return item

    @property
    def consumed(self) -> int:
        return sum(self.counts.values())

    def weights(self) -> list[float]:
        return [self.signal[f] + FLOOR for f in self.live]

    def next(self):
        while self.live:
            rng = random.Random(f"dsv4-curriculum:{self.cfg.seed}:{self.draws}")
            family = rng.choices(self.live, weights=self.weights())[0]
            self.draws += 1
            item = self._next_of(family)
            if item is not None:
                return item
            self.live.remove(family)  # its train instances are used up
        raise UserError("the task stream ran out; lower the difficulty filter or the step count")

    def observe(self, family: str, has_signal: bool) -> None:
        self.signal[family] = (1 - EMA) * self.signal[family] + EMA * float(has_signal)

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "signal": dict(self.signal), "live": list(self.live),
                "draws": self.draws}
