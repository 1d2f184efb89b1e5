"""DSA indexer schedule in the training loop: dense warm-up trains only the indexer."""

import pytest
import torch

from dsv4.errors import UserError
from dsv4.model import build_model
from dsv4.train.config import TrainConfig
from dsv4.train.indexer_stage import IndexerSchedule, indexer_parameter
from dsv4.train.optim import build_optimizers
from dsv4.train.pretrain import train_step


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_warmup_trains_only_the_indexer_then_everything():
    torch.manual_seed(0)
    model = build_model("tiny")
    optimizers = build_optimizers(model, TrainConfig(max_steps=3))
    schedule = IndexerSchedule(model, warmup_steps=2)
    ids = torch.randint(0, model.config.vocab_size, (2, 96))
    x, y = ids[:, :-1], ids[:, 1:]

    before = _snapshot(model)
    for step in range(2):
        assert schedule.update(step) == "dense"
        _, stats, _ = train_step(model, optimizers, x, y, 1.0, autocast=False)
        assert stats["indexer_kl"] > 0
    after = _snapshot(model)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(indexer_parameter(n) for n in moved), sorted(moved)[:5]

    assert schedule.update(2) == "sparse"
    train_step(model, optimizers, x, y, 1.0, autocast=False)
    final = _snapshot(model)
    assert any(not indexer_parameter(n) and not torch.equal(after[n], final[n]) for n in final)
    assert all(p.requires_grad for p in model.parameters())


def test_warmup_needs_an_indexer():
    with pytest.raises(UserError, match="lightning indexer"):
        IndexerSchedule(build_model("baseline"), warmup_steps=5)
    IndexerSchedule(build_model("baseline"), warmup_steps=0)  # off: fine without one
