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


def test_warmup_runs_at_its_own_constant_lr_in_the_loop(tmp_path, data_dir):
    """Stage 1 runs at --indexer-warmup-lr (Muon scaled alike), not the main warm-up ramp;
    stage 2 follows the main schedule from the global step."""
    from dsv4.train.metrics import read_metrics
    from dsv4.train.pretrain import pretrain
    from helpers_train import tiny_config

    cfg = tiny_config(tmp_path, data_dir, max_steps=4, eval_every=0, save_every=0, seq_len=32, lr=1e-2,
                      muon_lr=0.02, warmup_steps=4, indexer_warmup_steps=2, indexer_warmup_lr=3e-3)
    pretrain(cfg)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["lr"] for r in rows[:2]] == pytest.approx([3e-3, 3e-3])
    assert [r["lr_muon"] for r in rows[:2]] == pytest.approx([6e-3, 6e-3])
    assert [r["lr"] for r in rows[2:]] == pytest.approx([1e-2 * 3 / 4, 1e-2])  # the main ramp, steps 3-4
