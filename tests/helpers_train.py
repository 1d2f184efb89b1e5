"""Shared helpers for the training / generation / quickstart tests: a small real corpus
(a handful of standard-library files, a 512-token BPE) and a tiny training config."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from dsv4.train.config import TrainConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS_FILES = ["argparse.py", "subprocess.py", "difflib.py", "enum.py", "pickle.py", "datetime.py"]


def corpus_sources() -> list[str]:
    return [str(STDLIB / f) for f in CORPUS_FILES if (STDLIB / f).exists()]


def build_small_data(out: Path, vocab_size: int = 512, files: list[str] | None = None) -> Path:
    from dsv4.data.build import build_data

    build_data(files or corpus_sources(), out, vocab_size=vocab_size, progress=False)
    return out


def tiny_config(out_dir: Path, data_dir: Path, **kw) -> TrainConfig:
    base = dict(
        preset="tiny",
        out_dir=str(out_dir),
        data_dir=str(data_dir),
        max_steps=30,
        batch_size=8,
        seq_len=64,
        threads=1,
        eval_every=10,
        eval_tokens=2048,
        save_every=10,
        warmup_steps=5,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def subprocess_env() -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
