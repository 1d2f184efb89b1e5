"""A simple sampler: full-context recompute per token, temperature / top-k / top-p, a seed.

This is the reference path that the fast engine (KV caches, batching, MTP speculative
decoding) must agree with; it trades speed for obviously-correct code. Text is streamed
through an incremental UTF-8 decoder because one byte-level BPE token may carry only
part of a character.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dsv4.errors import UserError


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0 -> greedy
    top_p: float = 0.95  # nucleus: smallest set of tokens with this much mass (1 = off)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    seed: int | None = None
    stop_at_eos: bool = True

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise UserError(f"--max-new-tokens must be >= 0 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (got {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (got {self.top_k})")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf ([V] float)."""
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop a token if the mass before it already reaches top_p (the top token always stays)
        drop = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        logits[order[drop]] = float("-inf")
    return logits


def next_token(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    logits = logits.float()
    if params.temperature == 0:
        return int(logits.argmax())
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))


@torch.no_grad()
def generate_ids(
    model,
    prompt_ids: list[int],
    params: SamplingParams,
    eos_id: int | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[int]:
    """Yield new token ids one at a time (the prompt is truncated to the model's context)."""
    params.validate()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(params.seed if params.seed is not None else torch.seed())
    ctx_len = model.config.max_seq_len
    ids = list(prompt_ids) or ([eos_id] if eos_id is not None else [0])  # an empty prompt starts a document
    for _ in range(params.max_new_tokens):
        window = torch.tensor([ids[-ctx_len:]], dtype=torch.long, device=device)
        logits = model(window)[0, -1].cpu()
        tok = next_token(logits, params, gen)
        if params.stop_at_eos and eos_id is not None and tok == eos_id:
            return
        ids.append(tok)
        yield tok


def stream_text(tokenizer, token_ids: Iterator[int]) -> Iterator[str]:
    """Decode a stream of ids to text pieces, holding back incomplete UTF-8 sequences."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for tok in token_ids:
        piece = decoder.decode(tokenizer.id_to_bytes(tok))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def load_tokenizer(ckpt_dir: str | Path):
    """The tokenizer saved with a checkpoint (`tokenizer.json` next to the weights)."""
    from dsv4.data.tokenizer import Tokenizer

    path = Path(ckpt_dir) / "tokenizer.json"
    if not path.exists():
        raise UserError(f"checkpoint file {path} is missing: this checkpoint has no tokenizer")
    try:
        return Tokenizer.load(path)
    except UserError:
        raise
    except Exception as e:  # the tokenizers library raises its own exception types
        raise UserError(f"checkpoint file {path} is corrupt ({e})") from None


def generate_text(ckpt_dir: str | Path, prompt: str, params: SamplingParams) -> Iterator[str]:
    """Load a checkpoint and stream the completion of `prompt` as text pieces."""
    from dsv4.model.load import load_model, resolve_checkpoint

    params.validate()
    ckpt = resolve_checkpoint(ckpt_dir)
    model = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    ids = generate_ids(model, tok.encode(prompt), params, eos_id=tok.eos_id)
    yield from stream_text(tok, ids)
