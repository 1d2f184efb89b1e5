"""Engram addressing: tokenizer compression, N-gram keys and multi-head hashing (SPEC 1.2).

Everything here is a pure function of token ids and fixed constants, with no learned state,
so the rows an Engram layer reads are known before the forward pass: they can be gathered
ahead of time (prefetch from host memory) and, at decode time, computed for one new token
from the last max_order-1 compressed ids (`engram_addresses(..., prefix=...)`).

Engram paper (arXiv 2601.07372) sec. 2.2:
  - compression P: token id -> canonical id, merging tokens whose text normalises alike;
  - key of order n at position t: (x'_{t-n+1}, ..., x'_t), pad id before the sequence start;
  - mix_n = XOR_{i<n} (x'_{t-i} * m_i) with fixed random odd multipliers m_i (per layer);
  - K heads per order: row = mix_n mod p_{n,k}, with distinct primes p_{n,k}.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import torch

ENGRAM_SEED = 10007  # multipliers of layer l come from a generator seeded by f(ENGRAM_SEED, l)
INT64_MAX = 2**63 - 1
_WS = re.compile(r"[ \t\r\n]+")


def normalize_token_text(text: str) -> str:
    """NFKC, NFD, strip accents, lowercase, collapse whitespace runs to one space, strip."""
    t = unicodedata.normalize("NFKC", text)
    t = unicodedata.normalize("NFD", t)
    t = "".join(c for c in t if unicodedata.category(c) != "Mn")  # strip accents (combining marks)
    return _WS.sub(" ", t.lower()).strip()


def compression_map(tokenizer, vocab_size: int) -> torch.Tensor:
    """P [vocab_size] long: token id -> canonical id (0..n_canonical-1, first-seen order).

    `tokenizer` needs `.decode(ids)` (and `.vocab_size`); ids at or above its vocabulary map
    to canonical ids of their own. Tokens that decode to U+FFFD (partial UTF-8 bytes) or to
    nothing (special tokens) keep a key of their own (their raw token string when the
    tokenizer has `id_to_token`), so distinct byte pieces never merge. A whitespace-only
    token keeps its raw text rather than collapsing to "" (the demo's sentinel maps every
    whitespace run to " "; for code, indentation depth is information worth keeping).
    """
    tok_vocab = min(int(getattr(tokenizer, "vocab_size", vocab_size)), vocab_size)
    id_to_token = getattr(tokenizer, "id_to_token", None)
    key_to_new: dict[object, int] = {}
    out = torch.empty(vocab_size, dtype=torch.long)
    for tid in range(vocab_size):
        text = tokenizer.decode([tid]) if tid < tok_vocab else None
        if text is None or text == "" or "\ufffd" in text:
            raw = id_to_token(tid) if id_to_token is not None else None
            key: object = ("raw", raw if raw is not None else tid)
        else:
            key = normalize_token_text(text) or text
        out[tid] = key_to_new.setdefault(key, len(key_to_new))
    return out


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


@functools.lru_cache(maxsize=64)
def engram_primes(layer_ids: tuple[int, ...], n_orders: int, n_heads: int, size: int) -> dict:
    """{layer: [[p_{n,k} for k in heads] for n in orders]}: each prime the next unused one >= size.

    Primes are distinct across heads, orders *and* layers (walked in `layer_ids` order), so no
    two heads anywhere share a modulus and their collisions are independent."""
    used: set[int] = set()
    out: dict[int, list[list[int]]] = {}
    candidate = max(size, 2)
    for layer in layer_ids:
        per_order = []
        for _ in range(n_orders):
            heads = []
            for _ in range(n_heads):
                while not _is_prime(candidate) or candidate in used:
                    candidate += 1
                used.add(candidate)
                heads.append(candidate)
            per_order.append(heads)
        out[layer] = per_order
    return out


def engram_multipliers(layer_id: int, max_order: int, id_bound: int) -> torch.Tensor:
    """Fixed random odd multipliers [max_order] for one layer.

    Each is < INT64_MAX / id_bound, so x' * m never overflows int64 for ids below id_bound
    (and XOR of non-negative int64s stays non-negative)."""
    half = max(1, (INT64_MAX // id_bound) // 2)
    gen = torch.Generator().manual_seed(ENGRAM_SEED * (layer_id + 1))
    return torch.randint(0, half, (max_order,), generator=gen, dtype=torch.long) * 2 + 1


def engram_addresses(
    cids: torch.Tensor,
    orders: list[int],
    multipliers: torch.Tensor,
    moduli: torch.Tensor,
    offsets: torch.Tensor,
    pad_id: int,
    prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """Table rows [B, T, n_orders * K] for compressed ids cids [B, T].

    moduli [n_orders, K] are the per-head primes, offsets [n_orders * K] the first row of each
    head in the layer's table. `prefix` [B, >= max_order-1] holds the compressed ids just
    before cids (incremental decoding); without it, positions before the start use `pad_id`.
    Position t depends only on cids[:, :t+1] (and the prefix): causal by construction.
    """
    B, T = cids.shape
    span = max(orders) - 1
    if prefix is None:
        prefix = cids.new_full((B, span), pad_id)
    ext = torch.cat([prefix[:, prefix.shape[1] - span:], cids], dim=1) if span else cids
    # shifted[i][:, t] = x'_{t-i}
    shifted = [ext[:, span - i: span - i + T] for i in range(span + 1)]
    rows = []
    for j, n in enumerate(orders):
        mix = shifted[0] * multipliers[0]
        for i in range(1, n):
            mix = torch.bitwise_xor(mix, shifted[i] * multipliers[i])
        rows.append(mix.unsqueeze(-1) % moduli[j])  # [B, T, K]
    return torch.cat(rows, dim=-1) + offsets
