"""Checkpoints survive crashes: an interrupted save never costs the last good checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import dsv4.train.checkpoint as ck
from dsv4.model import load_model
from dsv4.train.pretrain import pretrain
from helpers_train import build_small_data, subprocess_env, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_small_data(tmp_path_factory.mktemp("data"))


class Boom(Exception):
    pass


def _raise(*a, **k):
    raise Boom


@pytest.mark.parametrize("where", ["weights", "train_state", "rename", "pointer"])
def test_crash_inside_save_keeps_previous_checkpoint(tmp_path, data_dir, monkeypatch, where):
    out = tmp_path / "run"
    small = dict(max_steps=4, save_every=2, eval_every=0, seq_len=32)
    pretrain(tiny_config(out, data_dir, stop_at=2, **small))
    before = load_model(out).state_dict()
    if where == "weights":  # die while the safetensors file is being written
        import safetensors.torch

        monkeypatch.setattr(safetensors.torch, "save_file", _raise)
    elif where == "train_state":
        monkeypatch.setattr(ck.torch, "save", _raise)
    elif where == "rename":  # everything written, the directory not yet in place
        monkeypatch.setattr(ck.os, "rename", _raise)
    else:  # directory in place, pointer not yet switched
        monkeypatch.setattr(ck, "write_pointer", _raise)
    with pytest.raises(Boom):
        pretrain(tiny_config(out, data_dir, resume=True, **small))
    monkeypatch.undo()
    assert (out / "latest").read_text().strip() == "step-000002"
    after = load_model(out).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and the run goes on from there
    s = pretrain(tiny_config(out, data_dir, resume=True, **small))
    assert s["step"] == 4 and (out / "latest").read_text().strip() == "step-000004"
    assert not list(out.glob(".tmp-*"))  # leftovers of the crashed save are cleaned up


def test_sigkill_during_training_and_saving_leaves_a_loadable_checkpoint(tmp_path, data_dir):
    """Kill -9 a run that saves every step, at whatever moment it is in: the checkpoint that
    `latest` names is complete, and the run resumes from it."""
    out = tmp_path / "run"
    script = (
        "from helpers_train import tiny_config\n"
        "from dsv4.train.pretrain import pretrain\n"
        f"pretrain(tiny_config({str(out)!r}, {str(data_dir)!r}, max_steps=10000, save_every=1, "
        "eval_every=0, keep_checkpoints=1))\n"
    )
    env = subprocess_env()
    env["PYTHONPATH"] = os.path.dirname(__file__) + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "latest").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        time.sleep(1.3)  # a few more saves: the kill lands somewhere inside the step/save cycle
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    name = (out / "latest").read_text().strip()
    model = load_model(out)
    assert model.config.vocab_size == 512
    step = int(name.split("-")[1])
    s = pretrain(tiny_config(out, data_dir, max_steps=step + 2, eval_every=0, resume=True))
    assert s["step"] == step + 2
