"""The simple generation API of `dsv4 generate` and the quickstart, over the one engine.

`generate_text(ckpt, prompt, params)` streams text pieces; `generate_ids(model, ids, params)`
yields token ids. Both run the cached engine (`dsv4.infer.engine`) and its sampler
(`dsv4.infer.sampling`) — there is one sampler in the project. `SamplingParams` here
carries the CLI's defaults and flag names (`--max-new-tokens`, ...) and converts to the
engine's. A prompt longer than the context keeps its last tokens; generation stops at the
end of the context.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dsv4.errors import UserError
from dsv4.infer import sampling as S


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

    def to_engine(self, eos_id: int | None = None) -> S.SamplingParams:
        stops = [eos_id] if (self.stop_at_eos and eos_id is not None) else []
        return S.SamplingParams(max_tokens=max(1, self.max_new_tokens), temperature=self.temperature,
                                top_p=self.top_p, top_k=self.top_k, seed=self.seed, stop_token_ids=stops,
                                ignore_eos=not self.stop_at_eos)


def _fit_prompt(prompt_ids: list[int], max_len: int, eos_id: int | None) -> list[int]:
    ids = list(prompt_ids) or ([eos_id] if eos_id is not None else [0])  # empty: start a document
    return ids[-(max_len - 1):]


def generate_ids(model, prompt_ids: list[int], params: SamplingParams, eos_id: int | None = None,
                 engine=None) -> Iterator[int]:
    """Yield new token ids one at a time."""
    from dsv4.infer.engine import Engine

    params.validate()
    if params.max_new_tokens == 0:
        return
    engine = engine or Engine(model, None, max_batch=1)
    seq = engine.submit(_fit_prompt(prompt_ids, engine.max_len, eos_id), params.to_engine(eos_id))
    try:
        while not seq.finished:
            for d in engine.step():
                if d.seq is seq:
                    yield from d.token_ids
    finally:
        if not seq.finished:
            engine.cancel(seq)


def generate_text(ckpt_dir: str | Path, prompt: str, params: SamplingParams) -> Iterator[str]:
    """Load a checkpoint and stream the completion of `prompt` as text pieces."""
    from dsv4.infer.load import load_engine

    params.validate()
    engine = load_engine(ckpt_dir, max_batch=1)
    if params.max_new_tokens == 0:
        return
    tok = engine.tokenizer
    # The engine decodes each sequence's text itself (UTF-8 held back until complete).
    ids = _fit_prompt(tok.encode(prompt), engine.max_len, tok.eos_id)
    yield from engine.stream(ids, params.to_engine(tok.eos_id))
