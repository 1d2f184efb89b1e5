"""The model: embeddings -> L blocks -> final norm -> LM head, assembled from one module per concept.

    ids -> embed -> blocks -> RMSNorm -> head -> logits [B, T, V]
    block l: x + attn(norm(x)), then x + ffn(norm(x))         (pre-norm residual)

This is the skeleton into which the V4 components slot behind config switches (mHC
residual streams, Engram, hybrid attention, MoE, MTP); with every switch off it is the
plain baseline transformer.

Public contract (used by training, inference, tests):
  - `build_model(preset, **overrides)` -> `Transformer` with `.config`
  - `model(ids[B,T])` -> logits [B, T, V]
  - `model.loss(ids, targets)` -> (scalar loss for backward, dict of float stats);
    `stats["lm_loss"]` is the plain next-token cross-entropy (nats/token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig, make_config
from dsv4.model.attention import Attention
from dsv4.model.ffn import FeedForward
from dsv4.model.norm import RMSNorm
from dsv4.model.rope import rope_frequencies


@dataclass
class ForwardContext:
    """What every sublayer may need beyond its input, passed down one forward pass.

    Sublayers take `(h, ctx)` so that a new need (token ids for Engram hashing and
    hash routing, a cache, a diagnostic) adds a field here instead of changing every
    signature. `aux_losses` are added to the training loss by `Transformer.loss`;
    `stats` are floats logged by the training loop.
    """

    ids: torch.Tensor
    freqs: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    # [serve] incremental decoding (dsv4.infer): a cache object whose `[layer_id]` is that
    # layer's cache, and the absolute position of every token [B, T] (rows may differ:
    # ragged batches). With a cache, `freqs` is per token: [B, T, rope_dim/2].
    cache: object | None = None
    positions: torch.Tensor | None = None


class PlainResidual(nn.Module):
    """x + f(x): the residual connection of the baseline (mHC with n = 1)."""

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        return x + sublayer(x)


class Block(nn.Module):
    """[Engram] -> residual(attention) -> residual(FFN or MoE)."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim, cfg.swiglu_limit)
        self.attn_residual = PlainResidual()
        self.ffn_residual = PlainResidual()

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.attn_residual(x, lambda h: self.attn(self.attn_norm(h), ctx))
        x = self.ffn_residual(x, lambda h: self.ffn(self.ffn_norm(h), ctx))
        return x


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.register_buffer("freqs", rope_frequencies(cfg, cfg.max_seq_len), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-style init: N(0, init_std), output projections scaled by 1/sqrt(2L)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states [B, T, D]."""
        T = ids.shape[1]
        if T > self.freqs.shape[0]:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.freqs.shape[0]}")
        return self._hidden(ids, ForwardContext(ids=ids, freqs=self.freqs[:T]))

    def _hidden(self, ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, ctx)
        return self.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(ids))

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss: next-token cross-entropy plus the sublayers' auxiliary losses."""
        T = ids.shape[1]
        if T > self.freqs.shape[0]:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.freqs.shape[0]}")
        ctx = ForwardContext(ids=ids, freqs=self.freqs[:T])
        logits = self.head(self._hidden(ids, ctx))
        lm = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        total = lm
        stats = {"lm_loss": lm.item(), **ctx.stats}
        for name, value in ctx.aux_losses.items():
            total = total + value
            stats[f"{name}_loss"] = value.item()
        return total, stats

    def optim_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Parameters by optimiser (SPEC 1.5): Muon for 2-D hidden matrices, AdamW for
        embeddings, head, norms, biases and scalars, Adam x5 lr without decay for Engram
        tables (any parameter whose name contains `engram` and `table`)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"muon": [], "adamw": [], "engram": []}
        seen: set[int] = set()
        for name, p in self.named_parameters():
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if "engram" in name and "table" in name:
                groups["engram"].append((name, p))
            elif p.dim() == 2 and name.startswith(("layers.", "mtp.")):
                groups["muon"].append((name, p))
            else:
                groups["adamw"].append((name, p))
        return groups

    def after_optimizer_step(self) -> None:
        """Let sublayers update non-gradient state after each step (MoE bias balancing)."""
        for m in self.modules():
            if m is not self and hasattr(m, "after_optimizer_step"):
                m.after_optimizer_step()


def build_model(preset: str | ModelConfig = "tiny", **overrides) -> Transformer:
    """Build a model from a preset name (with validated overrides) or a ModelConfig."""
    cfg = preset if isinstance(preset, ModelConfig) else make_config(preset, **overrides)
    if isinstance(preset, ModelConfig) and overrides:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides})
    return Transformer(cfg)
