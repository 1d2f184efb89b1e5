"""Open a checkpoint for inference: the model (`dsv4.model.load_model`) plus its tokenizer.

Training writes `tokenizer.json` next to the weights, so a checkpoint directory (or a run
directory whose `latest` names one) is all that `dsv4 generate/chat/serve` need.
"""

from __future__ import annotations

from pathlib import Path

from dsv4.errors import UserError


def load_tokenizer(ckpt_dir: str | Path):
    from dsv4.data.tokenizer import Tokenizer
    from dsv4.model.load import resolve_checkpoint

    path = resolve_checkpoint(ckpt_dir) / "tokenizer.json"
    if not path.exists():
        raise UserError(f"checkpoint {path.parent} has no tokenizer.json; it cannot generate text")
    return Tokenizer.load(path)


def load_engine(ckpt_dir: str | Path, device: str = "cpu", **engine_kwargs):
    """An `Engine` over the checkpoint's model and tokenizer. The engine owns this model, so on
    the CPU its matmul weights are stored [in, out] for faster decode GEMVs (`prepack`,
    infer/prepack.py) unless the caller says otherwise."""
    from dsv4.infer.engine import Engine
    from dsv4.model.load import load_model

    tokenizer = load_tokenizer(ckpt_dir)
    model = load_model(ckpt_dir, device=device)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise UserError(f"checkpoint {ckpt_dir}: the model's vocab_size {model.config.vocab_size} is smaller "
                        f"than its tokenizer's {tokenizer.vocab_size}")
    engine_kwargs.setdefault("prepack", device == "cpu")
    return Engine(model, tokenizer, **engine_kwargs)
