"""The model: embeddings -> L blocks -> final norm -> LM head, assembled from one module per concept.

    ids -> embed -> [expand to n streams] -> blocks -> [hc_head collapse] -> RMSNorm -> head
    block l: residual(attn(norm(.))), then residual(ffn(norm(.)))
    residual = x + f(x) (hc_mult = 1) or an mHC hyper-connection (hc_mult > 1, mhc.py)

This is the skeleton into which the V4 components slot behind config switches (mHC
residual streams, Engram, hybrid attention, MoE, MTP); with every switch off it is the
plain baseline transformer.

Public contract (used by training, inference, tests):
  - `build_model(preset, **overrides)` -> `Transformer` with `.config`
  - `model(ids[B,T])` -> logits [B, T, V]
  - `model.loss(ids, targets)` -> (scalar loss for backward, dict of float stats);
    `stats["lm_loss"]` is the plain next-token cross-entropy (nats/token); with MTP
    `stats["mtp_loss"]`, with mHC `stats["mhc_amax_fwd"/"mhc_amax_bwd"]`.
  - `model.set_training_progress(frac)`: schedules (MTP loss weight), called per step.
  - `model.mtp_draft(ids)`: greedy next token and MTP draft of the one after.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig, make_config
from dsv4.model.attention import Attention
from dsv4.model.diagnostics import amax_gain_stats
from dsv4.model.engram import Engram, set_engram_tokenizer
from dsv4.model.ffn import FeedForward
from dsv4.model.mhc import HyperHead, PlainResidual, expand_streams, make_residual
from dsv4.model.moe import MoE
from dsv4.model.mtp import MTPBlock, mtp_weight
from dsv4.model.norm import RMSNorm
from dsv4.model.rope import rope_frequencies

__all__ = ["Block", "ForwardContext", "PlainResidual", "Transformer", "build_model"]


@dataclass
class ForwardContext:
    """What every sublayer may need beyond its input, passed down one forward pass.

    Sublayers take `(h, ctx)` so that a new need (token ids for Engram hashing and
    hash routing, a cache, a diagnostic) adds a field here instead of changing every
    signature. `aux_losses` are added to the training loss by `Transformer.loss`;
    `stats` are detached 0-dim tensors (no host sync per layer during the forward),
    turned into the floats the training loop logs by `Transformer.loss`.
    """

    ids: torch.Tensor
    freqs: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    # mHC diagnostics: when a list, every HyperConnection appends its comb (first sequence).
    hc_record: list | None = None
    # attention (attn helper): RoPE table of CSA/HCA layers for the same positions as
    # `freqs` (None -> computed on first use for positions 0..T-1), and masks shared by
    # all layers of one forward pass
    freqs_compress: torch.Tensor | None = None
    attn_cache: dict = field(default_factory=dict)
    # [serve] incremental decoding (dsv4.infer.cache): `cache[layer_id]` is that layer's
    # attention cache, `cache.engram[layer_id]` its Engram state; `positions` [B, T] are the
    # absolute positions of the tokens (rows may differ: ragged batches), and then `freqs` /
    # `freqs_compress` are per token [B, T, rope_dim/2].
    cache: object | None = None
    positions: torch.Tensor | None = None


class Block(nn.Module):
    """[Engram] -> residual(attention) -> residual(FFN or MoE)."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.engram = Engram(cfg, layer_id) if layer_id in cfg.engram_layer_ids else None
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = (MoE(cfg, layer_id) if cfg.n_routed_experts
                    else FeedForward(cfg.dim, cfg.ffn_dim, cfg.swiglu_limit))
        self.attn_residual = make_residual(cfg)
        self.ffn_residual = make_residual(cfg)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if self.engram is not None:
            x = self.engram(x, ctx)  # H <- H + Y, before attention (Engram sec. 2.3)
        x = self.attn_residual(x, lambda h: self.attn(self.attn_norm(h), ctx), ctx)
        x = self.ffn_residual(x, lambda h: self.ffn(self.ffn_norm(h), ctx), ctx)
        return x


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.hc_head = HyperHead(cfg) if cfg.hc_mult > 1 else None
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # MTP block: layer_id n_layers; shares embed and head (passed at call time).
        self.mtp = MTPBlock(cfg, Block(cfg, cfg.n_layers)) if cfg.n_mtp_layers else None
        self.mtp_weight = mtp_weight(cfg, 0.0)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.register_buffer("freqs", rope_frequencies(cfg, cfg.max_seq_len), persistent=False)
        self.reset_parameters()

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` casts complex buffers too, dropping the imaginary part of
        # the RoPE angles (a silently wrong model): keep them complex64, only follow the device.
        freqs = self.freqs
        out = super()._apply(fn, recurse)
        if self.freqs.dtype != freqs.dtype:
            self.freqs = freqs.to(self.freqs.device)
        return out

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-style init: N(0, init_std), output projections scaled by 1/sqrt(2L)."""
        if self.embed.weight.is_meta:  # built for parameter counting: nothing to initialise
            return
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            if name.endswith(("wo.weight", "wo_b.weight", "w2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def _context(self, ids: torch.Tensor) -> ForwardContext:
        T = ids.shape[1]
        if T > self.freqs.shape[0]:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.freqs.shape[0]}")
        return ForwardContext(ids=ids, freqs=self.freqs[:T])

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states [B, T, D]."""
        return self._hidden(ids, self._context(ids))

    def _streams(self, ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Residual streams after the last block: [B, T, D], or [B, T, n, D] with mHC."""
        x = self.embed(ids)
        if self.config.hc_mult > 1:
            x = expand_streams(x, self.config.hc_mult)
        for layer in self.layers:
            x = layer(x, ctx)
        return x

    def _final(self, streams: torch.Tensor) -> torch.Tensor:
        """Collapse the streams (hc_head) and apply the final norm."""
        return self.norm(self.hc_head(streams) if self.hc_head is not None else streams)

    def _hidden(self, ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self._final(self._streams(ids, ctx))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(ids))

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss: next-token cross-entropy, the sublayers' auxiliary losses and the
        MTP loss at its scheduled weight. mHC diagnostics come with the stats."""
        ctx = self._context(ids)
        if self.config.hc_mult > 1:
            ctx.hc_record = []
        streams = self._streams(ids, ctx)
        logits = self.head(self._final(streams))
        lm = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        total = lm
        stats = {"lm_loss": lm.detach()}
        if self.mtp is not None:
            mtp_ctx = dataclasses.replace(ctx, hc_record=None)
            mtp = self.mtp.loss(streams, targets, self.embed, self.head, mtp_ctx)
            total = total + self.mtp_weight * mtp
            stats["mtp_loss"] = mtp.detach()
            stats["mtp_weight"] = self.mtp_weight
        stats.update(ctx.stats)
        for name, value in ctx.aux_losses.items():
            total = total + value
            stats[f"{name}_loss"] = value.detach()
        # floats only now, after the whole forward: no host sync between its parts
        stats = {k: float(v) for k, v in stats.items()}
        if ctx.hc_record:
            stats.update(amax_gain_stats(ctx.hc_record))
        return total, stats

    def set_training_progress(self, frac: float) -> None:
        """Called by the training loop each step with the fraction of training done."""
        self.mtp_weight = mtp_weight(self.config, float(frac))

    @torch.no_grad()
    def mtp_draft(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy self-speculative step: (next [B], draft [B]) where `next` is the main
        head's argmax after `ids` and `draft` the MTP head's guess of the token after it.
        Full recompute, no cache (the inference engine can add one around the same math)."""
        if self.mtp is None:
            raise ValueError("this model has no MTP block (n_mtp_layers = 0)")
        ctx = self._context(ids)
        streams = self._streams(ids, ctx)
        nxt = self.head(self._final(streams[:, -1:])).argmax(-1)  # [B, 1]
        next_ids = torch.cat([ids[:, 1:], nxt], dim=1)  # x_{t+1} for every position t
        mtp_ctx = dataclasses.replace(ctx, ids=next_ids, hc_record=None)
        draft = self.head(self.mtp(streams, next_ids, self.embed, mtp_ctx)[:, -1]).argmax(-1)
        return nxt[:, 0], draft

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

    def set_engram_tokenizer(self, tokenizer) -> int:
        """Build the Engram compression map from `tokenizer` (`.decode(ids)`, `.vocab_size`) into
        every Engram layer's `compress` buffer (identity until called; saved in checkpoints).
        Call once after building a model that is trained from scratch. Returns #canonical ids."""
        return set_engram_tokenizer(self, tokenizer)

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
