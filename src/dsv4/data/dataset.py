"""`DataDir`: a built data directory, validated and memory-mapped.

Training code never trusts a directory blindly: `DataDir.open` checks that it is complete
(meta.json is written last by `build_data`), that the shards have the sizes the meta
promises, and that tokenizer.json is the tokenizer the shards were encoded with (its
fingerprint). A model trained with one tokenizer must not be fed ids from another, so a
caller can also pass the fingerprint it expects (e.g. from a checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsv4.data.tokenizer import Tokenizer
from dsv4.errors import UserError

REQUIRED = ("vocab_size", "dtype", "n_train_tokens", "n_val_tokens", "val_bytes", "tokenizer_fingerprint")


def _load_shard(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"data dir is incomplete: {path} is missing; rebuild with `dsv4 data build`")
    expected = n * dtype.itemsize
    if path.stat().st_size != expected:
        raise UserError(
            f"{path} has {path.stat().st_size} bytes but meta.json promises {expected}; "
            "the directory is corrupt, rebuild with `dsv4 data build`"
        )
    if n == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


@dataclass
class DataDir:
    path: Path
    meta: dict
    tokenizer: Tokenizer
    train: np.ndarray  # 1-D read-only memmap of token ids
    val: np.ndarray

    @classmethod
    def open(cls, path: str | Path, expected_fingerprint: str | None = None) -> DataDir:
        path = Path(path)
        hint = f"build it with `dsv4 data build --out {path}`"
        if not path.is_dir():
            raise UserError(f"data dir {path} not found; {hint}")
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"data dir {path} is incomplete (no meta.json); {hint}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{meta_path} is unreadable ({e}); {hint}") from None
        missing = [k for k in REQUIRED if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise UserError(f"{meta_path} lacks {', '.join(missing)}; {hint}")
        tok = Tokenizer.load(path / "tokenizer.json")
        if tok.fingerprint != meta["tokenizer_fingerprint"]:
            raise UserError(
                f"{path}: tokenizer.json (fingerprint {tok.fingerprint}) is not the tokenizer the "
                f"shards were built with ({meta['tokenizer_fingerprint']}); {hint}"
            )
        if expected_fingerprint is not None and tok.fingerprint != expected_fingerprint:
            raise UserError(
                f"{path} was built with tokenizer {tok.fingerprint}, but {expected_fingerprint} is "
                "expected (e.g. by the checkpoint); use the matching data dir or rebuild"
            )
        if tok.vocab_size != meta["vocab_size"]:
            raise UserError(f"{meta_path}: vocab_size {meta['vocab_size']} != tokenizer's {tok.vocab_size}")
        try:
            dtype = np.dtype(meta["dtype"])
        except TypeError:
            raise UserError(f"{meta_path}: unknown dtype {meta['dtype']!r}; {hint}") from None
        train = _load_shard(path / "train.bin", dtype, int(meta["n_train_tokens"]))
        val = _load_shard(path / "val.bin", dtype, int(meta["n_val_tokens"]))
        return cls(path, meta, tok, train, val)

    @property
    def fingerprint(self) -> str:
        return self.tokenizer.fingerprint
