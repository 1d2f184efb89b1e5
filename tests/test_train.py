"""Pretraining: it learns, logs what it promises, and resumes bit-exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dsv4.model import load_model
from dsv4.train.metrics import read_metrics
from dsv4.train.pretrain import pretrain
from helpers_train import build_small_data, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_small_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_dir):
    """30 steps in one go: the reference for the learning and the resume tests."""
    out = tmp_path_factory.mktemp("straight")
    summary = pretrain(tiny_config(out, data_dir))
    return out, summary


def test_tiny_preset_learns_fast(straight_run):
    _, s = straight_run
    assert s["step"] == 30
    assert s["first_loss"] - s["final_loss"] > 1.0, s  # "well over 0.5" in 30 steps
    assert s["val_bpb"] is not None and 0 < s["val_bpb"] < 8


def test_metrics_jsonl_has_every_step_and_validation(straight_run, data_dir):
    out, s = straight_run
    records = read_metrics(out / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    for r in steps:
        for key in ("loss", "lr", "tokens_per_s", "mfu", "lm_loss", "grad_norm"):
            assert isinstance(r[key], float), key
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
    assert steps[0]["lr"] < steps[4]["lr"]  # warmup
    assert steps[-1]["lr"] < steps[10]["lr"]  # decay
    evals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    # bits per byte = nats/token * tokens / (ln 2 * bytes) on the val split
    meta = json.loads((data_dir / "meta.json").read_text())
    import math

    expect = evals[-1]["val_loss"] * meta["n_val_tokens"] / (math.log(2) * meta["val_bytes"])
    assert evals[-1]["val_bpb"] == pytest.approx(expect)
    assert evals[-1]["val_bpb"] < evals[0]["val_bpb"]


def test_checkpoint_layout_and_load_model(straight_run):
    out, _ = straight_run
    assert (out / "latest").read_text().strip() == "step-000030"
    ckpt = out / "step-000030"
    for name in ("model.safetensors", "config.json", "train_state.pt", "tokenizer.json"):
        assert (ckpt / name).is_file(), name
    assert sorted(p.name for p in out.glob("step-*")) == ["step-000020", "step-000030"]  # keep 2
    model = load_model(out)  # run dir -> latest
    assert not model.training
    weights = load_file(str(ckpt / "model.safetensors"))
    for name, t in model.state_dict().items():
        assert torch.equal(t, weights[name]), name


def _assert_same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs"


def test_resume_is_bit_exact(tmp_path, straight_run, data_dir, monkeypatch):
    """Session 1 crashes in step 26 (last checkpoint: 20); `resume` replays 21..30 and ends
    with exactly the weights, optimizer moments and data position of the straight run."""
    ref, _ = straight_run
    out = tmp_path / "split"
    import dsv4.train.pretrain as P

    real = P.set_lr
    calls = {"n": 0}

    def crash_in_step_26(optimizers, mult):
        calls["n"] += 1
        if calls["n"] == 26:
            raise KeyboardInterrupt
        return real(optimizers, mult)

    monkeypatch.setattr(P, "set_lr", crash_in_step_26)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(out, data_dir))
    monkeypatch.setattr(P, "set_lr", real)
    assert (out / "latest").read_text().strip() == "step-000020"

    second = pretrain(tiny_config(out, data_dir, resume=True))
    assert second["step"] == 30
    _assert_same_weights(ref / "step-000030", out / "step-000030")
    sa = torch.load(ref / "step-000030" / "train_state.pt", weights_only=True)
    sb = torch.load(out / "step-000030" / "train_state.pt", weights_only=True)
    assert sa["loader"] == sb["loader"]
    for oa, ob in zip(sa["optimizers"], sb["optimizers"], strict=True):
        for k in oa["state"]:
            for name, v in oa["state"][k].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][k][name])), name
    # the metrics of the replayed steps equal the straight run's, and are not logged twice
    la = [r["loss"] for r in read_metrics(ref / "metrics.jsonl") if "loss" in r]
    rb = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rb] == list(range(1, 31))
    assert la == [r["loss"] for r in rb]


def test_stop_at_ends_a_session_with_a_checkpoint(tmp_path, data_dir):
    out = tmp_path / "s"
    s = pretrain(tiny_config(out, data_dir, max_steps=6, stop_at=3, save_every=0, eval_every=0))
    assert s["step"] == 3 and (out / "latest").read_text().strip() == "step-000003"
    state = torch.load(out / "step-000003" / "train_state.pt", weights_only=True)
    assert state["train_config"]["max_steps"] == 6 and state["step"] == 3


def test_model_gets_training_progress(tmp_path, data_dir, monkeypatch):
    from dsv4.model.transformer import Transformer

    seen = []
    monkeypatch.setattr(Transformer, "set_training_progress", lambda self, f: seen.append(f), raising=False)
    pretrain(tiny_config(tmp_path / "p", data_dir, max_steps=4, save_every=0, eval_every=0))
    assert seen == [0.0, 0.25, 0.5, 0.75]
