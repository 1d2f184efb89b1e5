"""Which layout a checkpoint directory holds, and loading any of them into our model.

    dsv4      ours: config.json (ModelConfig keys) + model.safetensors (train / convert --from-hf)
    hf        transformers DeepseekV4: config.json with model_type deepseek_v4, weights under
              `model.` (save_pretrained) -- loaded directly, no conversion step needed
    deepseek  DeepSeek's released layout: native names (`layers.0.attn.wq_a.weight`), FP8/FP4
              with `.scale` companions; config.json in transformers style (the HF repos) or
              with inference/ ModelArgs keys (`dim`, `n_layers`, `dtype: fp8`, ...)

`dsv4.model.load_model` calls `detect_layout` first, so the engine, `dsv4 serve`,
`generate` and distillation's teacher accept all three.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from dsv4.config import ModelConfig


def _config(directory: Path) -> dict | None:
    try:
        d = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def detect_layout(directory: str | Path) -> str:
    """ "dsv4", "hf" or "deepseek" (unreadable or unknown configs count as ours, whose
    loader then reports what is wrong with the files)."""
    directory = Path(directory)
    d = _config(directory)
    if d is None or set(d) <= {f.name for f in dataclasses.fields(ModelConfig)}:
        return "dsv4"
    if d.get("model_type") == "deepseek_v4" or "hidden_size" in d:
        from dsv4.interop.st_io import TensorSource

        keys = TensorSource(directory).keys()
        return "hf" if any(k.startswith("model.") for k in keys) else "deepseek"
    return "deepseek" if "dim" in d else "dsv4"


def external_config(directory: str | Path) -> ModelConfig:
    """Our config for a transformers or DeepSeek directory (MTP kept when its weights exist)."""
    from dsv4.interop.deepseek import config_from_deepseek, read_config
    from dsv4.interop.st_io import TensorSource

    directory = Path(directory)
    keys = TensorSource(directory).keys()
    has_mtp = any(k.startswith(("mtp.", "model.mtp.")) for k in keys)
    return config_from_deepseek(read_config(directory), has_mtp=has_mtp)


def load_external(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """(model, LoadReport) for a transformers or DeepSeek directory, streamed shard by shard."""
    from dsv4.interop.deepseek import load_foreign

    layout = detect_layout(directory)
    return load_foreign(directory, external_config(directory), device, dtype, layout=layout)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, report) for any checkpoint; report is None for our own layout."""
    from dsv4.model.load import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    if detect_layout(ckpt) == "dsv4":
        model = load_model(ckpt, device=device)
        return (model if dtype == torch.float32 else model.to(dtype)), None
    return load_external(ckpt, device, dtype)
