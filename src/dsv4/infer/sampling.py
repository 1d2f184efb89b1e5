"""Sampling parameters and the next-token sampler.

One uniform draw per generated token from the request's own seeded generator, and a
row-independent computation, so that a request's tokens do not depend on what else is in the
batch, and speculative decoding (which samples the verified positions one by one with the
same generator) reproduces plain decoding exactly.

Temperature 0 is greedy. Top-k and top-p (nucleus) filter the temperature-scaled
distribution; the token is the inverse CDF of the uniform over the kept tokens, sorted by
probability. Logprobs are the model's raw log-softmax (before temperature and filtering),
as the OpenAI API reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dsv4.errors import UserError


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    stop_token_ids: list[int] = field(default_factory=list)  # besides the tokenizer's eos
    ignore_eos: bool = False
    logprobs: int | None = None  # None = off; n = chosen token's logprob + the top n

    def validate(self) -> SamplingParams:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UserError(msg)

        need(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be an integer >= 1")
        need(0.0 <= self.temperature <= 100.0, "temperature must be in [0, 100]")
        need(0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]")
        need(isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0")
        need(self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in 0..20")
        need(all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings")
        return self


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float):
    """(probabilities sorted descending [V], their token ids [V]) after temperature, top-k, top-p."""
    probs, ids = torch.sort(torch.softmax(logits.float() / temperature, dim=-1), descending=True)
    if top_k and top_k < probs.shape[-1]:
        probs[top_k:] = 0.0
    if top_p < 1.0:
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
        probs = torch.where(before < top_p, probs, torch.zeros_like(probs))  # keeps at least the top one
    return probs / probs.sum(), ids


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next token from one row of logits [V]."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    probs, ids = filtered_probs(logits, params.temperature, params.top_k, params.top_p)
    u = torch.rand((), generator=generator)
    cdf = torch.cumsum(probs, dim=-1)
    i = int(torch.searchsorted(cdf, u.unsqueeze(0) * cdf[-1]).clamp(max=probs.shape[-1] - 1))
    return int(ids[i])


def token_logprobs(logits: torch.Tensor, token: int, top_n: int) -> dict:
    """{"token": id, "logprob": float, "top": [(id, logprob), ...]} under the raw model."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    out = {"token": token, "logprob": float(lp[token]), "top": []}
    if top_n:
        vals, idx = torch.topk(lp, top_n)
        out["top"] = [(int(i), float(v)) for i, v in zip(idx, vals, strict=True)]
    return out
