"""Atomic, resumable training checkpoints.

Layout of a run directory:

    DIR/step-000030/model.safetensors   weights (tied tensors stored once)
    DIR/step-000030/config.json         model config (what `load_model` needs)
    DIR/step-000030/train_state.pt      optimizer states, data position, RNG states, step,
                                        train config, tokenizer fingerprint
    DIR/step-000030/dcp/                (distributed runs) sharded model + optimizer states
    DIR/latest                          the name of the newest complete checkpoint

A checkpoint is written into a fresh temporary directory, every file is fsynced, the
directory is renamed to its final name, and only then is `latest` replaced (write a temp
file, fsync, os.replace). A crash at any point leaves `latest` naming the previous,
complete checkpoint; leftover `.tmp-*` directories are ignored and cleaned up later.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from dsv4.errors import UserError
from dsv4.model.load import CONFIG, LATEST, WEIGHTS, resolve_checkpoint, unique_state_dict

TRAIN_STATE = "train_state.pt"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None if it has none."""
    out = Path(out_dir)
    if not (out / LATEST).exists():
        return None
    return resolve_checkpoint(out)


# ---- RNG state -------------------------------------------------------------------------------


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # numpy's state as tensors/ints so that train_state loads with weights_only=True
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- low-level atomic file helpers -----------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            _fsync_path(Path(dirpath) / f)
        _fsync_path(Path(dirpath))


def write_pointer(out_dir: Path, name: str) -> None:
    """Atomically make `out_dir/latest` name `name`."""
    tmp = out_dir / f".{LATEST}.tmp"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / LATEST)
    _fsync_path(out_dir)


def new_temp_dir(out_dir: Path, step: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{step_dir_name(step)}-", dir=out_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary shared artifact
    return tmp


def commit_temp_dir(out_dir: Path, tmp: Path, step: int, keep: int) -> Path:
    """fsync `tmp`, rename it to the step's final name, point `latest` at it, prune old ones."""
    _fsync_tree(tmp)
    final = out_dir / step_dir_name(step)
    if final.exists():  # the same step saved again (e.g. a resumed session ending where it began)
        stale = out_dir / f".old-{final.name}-{os.getpid()}"
        os.rename(final, stale)
        os.rename(tmp, final)
        write_pointer(out_dir, final.name)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.rename(tmp, final)
        _fsync_path(out_dir)
        write_pointer(out_dir, final.name)
    prune(out_dir, keep)
    return final


def prune(out_dir: Path, keep: int) -> None:
    """Delete step directories beyond the newest `keep`, and leftovers of crashed saves."""
    current = (out_dir / LATEST).read_text().strip() if (out_dir / LATEST).exists() else None
    steps = sorted(p for p in out_dir.glob("step-*") if p.is_dir())
    for p in steps[:-keep]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)
    # Saves of one run are serialised, so any other temp dir is the leftover of a dead process.
    for p in out_dir.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)


# ---- single-process checkpoints -----------------------------------------------------------------


def write_model_files(
    dirpath: Path,
    model_config_json: str,
    weights: dict[str, torch.Tensor],
    extra_files: dict[str, str] | None = None,
) -> None:
    """Weights, config and small text files (the tokenizer) that inference needs."""
    from safetensors.torch import save_file

    save_file(unique_state_dict(weights), str(dirpath / WEIGHTS), metadata={"format": "pt"})
    (dirpath / CONFIG).write_text(model_config_json)
    for name, text in (extra_files or {}).items():
        (dirpath / name).write_text(text, encoding="utf-8")


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizers: list,
    train_state: dict,
    keep: int = 2,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write weights + config + train state (optimizers, RNG, ...) atomically; returns the dir."""
    out = Path(out_dir)
    tmp = new_temp_dir(out, step)
    try:
        write_model_files(tmp, model.config.to_json(), model.state_dict(), extra_files)
        state = dict(
            train_state, step=step, rng=rng_state(), optimizers=[opt.state_dict() for opt in optimizers]
        )
        torch.save(state, tmp / TRAIN_STATE)
        return commit_temp_dir(out, tmp, step, keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_train_state(ckpt: Path) -> dict:
    path = ckpt / TRAIN_STATE
    if not path.exists():
        raise UserError(
            f"checkpoint file {path} is missing; it cannot be resumed (but `dsv4 generate` can use it)"
        )
    try:
        # mmap: huge row-wise Engram optimizer state is paged in as it is copied, not read whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for a truncated or garbled file
        raise UserError(
            f"checkpoint file {path} is corrupt ({type(e).__name__}); "
            f"restore it or resume from an older step directory"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"checkpoint file {path} is corrupt (no step recorded)")
    return state


def load_optimizers(optimizers: list, states: list, source: Path) -> None:
    if len(states) != len(optimizers):
        raise UserError(
            f"checkpoint file {source} holds {len(states)} optimizer states for "
            f"{len(optimizers)} optimizers; was it written by another model version?"
        )
    for opt, st in zip(optimizers, states, strict=True):
        try:
            opt.load_state_dict(st)
        except (ValueError, KeyError) as e:
            raise UserError(
                f"checkpoint file {source} does not match this model's optimizers ({e})"
            ) from None


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2))
