"""Bad input to `dsv4 train pretrain` / `dsv4 generate`: one line on stderr, exit code 2."""

from __future__ import annotations

import shutil

import pytest

from dsv4.cli import main
from dsv4.train.pretrain import pretrain
from helpers_train import build_small_data, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_small_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    pretrain(tiny_config(out, data_dir, max_steps=2, save_every=0, eval_every=0, seq_len=32))
    return out


def run_cli(capsys, *argv) -> str:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("dsv4: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def train_args(out, data, *extra):
    return [
        "train",
        "pretrain",
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--data",
        str(data),
        "--max-steps",
        "2",
        "--seq-len",
        "64",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def test_unknown_preset(capsys, tmp_path, data_dir):
    err = run_cli(capsys, "train", "pretrain", "--preset", "huge", "--out", str(tmp_path), "--max-steps", "1")
    assert "unknown preset 'huge'" in err and "tiny" in err


def test_unknown_set_key(capsys, tmp_path, data_dir):
    assert "'depth'" in run_cli(capsys, *train_args(tmp_path / "o", data_dir, "--set", "depth=3"))


def test_ill_typed_set_value(capsys, tmp_path, data_dir):
    assert "expects int" in run_cli(capsys, *train_args(tmp_path / "o", data_dir, "--set", "n_layers=two"))


def test_invalid_set_combination(capsys, tmp_path, data_dir):
    assert "n_kv_heads" in run_cli(capsys, *train_args(tmp_path / "o", data_dir, "--set", "n_kv_heads=3"))


def test_no_step_or_time_budget(capsys, tmp_path, data_dir):
    err = run_cli(
        capsys, "train", "pretrain", "--preset", "tiny", "--out", str(tmp_path), "--data", str(data_dir)
    )
    assert "--max-steps or --time-budget" in err


def test_resume_without_checkpoint(capsys, tmp_path, data_dir):
    assert "no checkpoint" in run_cli(capsys, *train_args(tmp_path / "empty", data_dir, "--resume"))


def test_fresh_run_into_a_used_out_dir(capsys, run_dir, data_dir):
    assert "--resume" in run_cli(capsys, *train_args(run_dir, data_dir))


def test_missing_data_dir_contents(capsys, tmp_path, data_dir):
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    (broken / "train.bin").unlink()
    assert "train.bin" in run_cli(capsys, *train_args(tmp_path / "o", broken))


def test_empty_corpus(capsys, tmp_path):
    """A corpus too small for a single batch is refused with the reason, not a crash."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    data = build_small_data(tmp_path / "data", vocab_size=300, files=[str(src)])
    assert "too few" in run_cli(capsys, *train_args(tmp_path / "o", data))


def test_resume_with_data_of_another_tokenizer(capsys, tmp_path, run_dir, data_dir):
    other = build_small_data(tmp_path / "other", vocab_size=400)
    resumed = tmp_path / "run"
    shutil.copytree(run_dir, resumed)
    err = run_cli(capsys, *train_args(resumed, other, "--resume", "--max-steps", "6"))
    assert "tokenizer" in err


@pytest.mark.parametrize("damage", ["weights", "config", "train_state", "pointer"])
def test_corrupt_checkpoint(capsys, tmp_path, run_dir, data_dir, damage):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    ckpt = out / (out / "latest").read_text().strip()
    target = {
        "weights": ckpt / "model.safetensors",
        "config": ckpt / "config.json",
        "train_state": ckpt / "train_state.pt",
        "pointer": out / "latest",
    }[damage]
    if damage == "pointer":
        target.write_text("step-999999\n")
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])  # a truncated file
    err = run_cli(capsys, *train_args(out, data_dir, "--resume", "--max-steps", "6"))
    assert target.name in err or "step-999999" in err
    if damage != "train_state":  # generate needs no train state
        err = run_cli(capsys, "generate", "--ckpt", str(out), "--prompt", "x")
        assert target.name in err or "step-999999" in err


def test_generate_missing_checkpoint(capsys, tmp_path):
    assert "does not exist" in run_cli(capsys, "generate", "--ckpt", str(tmp_path / "nope"), "--prompt", "x")
    assert "no checkpoint" in run_cli(capsys, "generate", "--ckpt", str(tmp_path), "--prompt", "x")


def test_generate_bad_sampling_values(capsys, run_dir):
    assert "--top-p" in run_cli(capsys, "generate", "--ckpt", str(run_dir), "--prompt", "x", "--top-p", "0")
    assert "--temperature" in run_cli(
        capsys, "generate", "--ckpt", str(run_dir), "--prompt", "x", "--temperature", "-1"
    )
