"""Load a trained model from a checkpoint directory: `config.json` + `model.safetensors`.

`load_model(path)` accepts either a checkpoint directory (holding those two files) or a
training run directory, whose `latest` file names its newest complete checkpoint (the
trainer writes that pointer last, atomically, so it never names a half-written one).
Everything that can be wrong with the files on disk becomes a `UserError` naming the
file, because it is the user's input. This module imports nothing from `dsv4.train`:
inference and serving load models without the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dsv4.config import ModelConfig
from dsv4.errors import UserError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
LATEST = "latest"


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory that `path` denotes (itself, or what its `latest` names)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist; train one with `dsv4 train pretrain --out {p}`")
    if (p / WEIGHTS).exists() or (p / CONFIG).exists():
        return p
    pointer = p / LATEST
    if pointer.exists():
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read checkpoint pointer {pointer}: {e}") from None
        target = p / name
        if not name or "/" in name or not target.is_dir():
            raise UserError(
                f"checkpoint pointer {pointer} names {name!r}, which is not a checkpoint directory"
            )
        return target
    raise UserError(f"no checkpoint in {p}: expected {WEIGHTS} + {CONFIG} or a `{LATEST}` pointer file")


def load_config(ckpt_dir: str | Path) -> ModelConfig:
    path = Path(ckpt_dir) / CONFIG
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint file {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint file {path} is corrupt ({e}); re-train or restore it") from None
    if not isinstance(data, dict):
        raise UserError(f"checkpoint file {path} is corrupt (not a JSON object)")
    return ModelConfig.from_dict(data)


def read_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(ckpt_dir) / WEIGHTS
    if not path.exists():
        raise UserError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint file {path} is corrupt ({e}); re-train or restore it") from None


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy `weights` into `model`. Tied parameters are stored once (safetensors refuses
    aliases), so a key may be absent when another key of the same tensor was loaded."""
    own = model.state_dict()
    unexpected = sorted(set(weights) - set(own))
    if unexpected:
        raise UserError(f"checkpoint file {source} does not match its config: unexpected {unexpected[0]}")
    by_storage: dict[int, list[str]] = {}
    for name, t in own.items():
        by_storage.setdefault(t.data_ptr(), []).append(name)
    for names in by_storage.values():
        if not any(n in weights for n in names):
            raise UserError(f"checkpoint file {source} does not match its config: missing {names[0]}")
    for name, t in weights.items():
        if own[name].shape != t.shape:
            raise UserError(
                f"checkpoint file {source} does not match its config: {name} has shape "
                f"{tuple(t.shape)}, expected {tuple(own[name].shape)}"
            )
    model.load_state_dict(weights, strict=False)


def unique_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop later aliases of a tensor already in `state` (tied embeddings), contiguous on CPU."""
    out, seen = {}, set()
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else name
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def load_model(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model stored at `ckpt_dir` (a checkpoint or a run directory), in eval mode."""
    from dsv4.model.transformer import Transformer

    ckpt = resolve_checkpoint(ckpt_dir)
    cfg = load_config(ckpt)
    model = Transformer(cfg)
    load_weights_into(model, read_weights(ckpt), str(ckpt / WEIGHTS))
    return model.to(device).eval()
