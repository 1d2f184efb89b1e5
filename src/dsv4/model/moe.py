"""DeepSeekMoE: shared expert(s) + top-k routed SwiGLU experts with aux-loss-free balancing (SPEC 1.4).

    y = sum_{e in topk} w_e * Expert_e(x) + Shared(x)

Routing (DeepSeek-V3 sec. 2.1.2, V4 Gate):
  - scores s = score_func(x W_g): sqrt(softplus(.)) (V4), sigmoid (V3) or softmax;
  - a per-expert bias b is added for the top-k *selection* only; the weights are the unbiased
    scores of the chosen experts, renormalised to sum to 1 (not for softmax, as DeepSeek does),
    times route_scale;
  - aux-loss-free balancing: the load of each expert is counted over the training forwards of
    a step, and after the optimiser step b_e moves by +-bias_update_speed toward equal load
    (`after_optimizer_step`, called by `Transformer.after_optimizer_step`);
  - the first n_hash_layers route by a fixed random token-id -> experts table `tid2eid`
    (deterministic from the layer id), so those layers need `ctx.ids`.

Experts are computed grouped by expert, never per token: the (token, slot) pairs are sorted by
expert, and each expert runs once on its contiguous slice. On CUDA that is one `F.grouped_mm`
per projection over the stacked weights; on CPU grouped_mm is itself a loop of matmuls plus
weight-stacking copies, and the plain per-expert loop measured 0.90x its time (16 experts of
width 256, dim 256) and 1.0x (64 experts of width 64) (benchmarks/moe_grouped.py), so the
CPU path is the loop.

Parameter names follow DeepSeek's released checkpoints, so a converter is a rename:
`gate.weight` [E, D], `gate.bias` (buffer) [E], `gate.tid2eid` (buffer) [V, k],
`experts.{e}.w1|w2|w3.weight`, `shared_experts.w1|w2|w3.weight`. transformers' DeepseekV4
uses `gate.e_score_correction_bias`, `experts.gate_up_proj` = stack(cat(w1, w3)) and
`experts.down_proj` = stack(w2). Per-expert 2-D matrices also let Muon orthogonalise each
expert on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsv4.config import ModelConfig
from dsv4.model.ffn import FeedForward, swiglu
from dsv4.model.packed import packed_outputs

HASH_ROUTING_SEED = 0x5EED_4A5B  # tid2eid tables are a pure function of (this, layer id, sizes)


def _building_on_meta() -> bool:
    """True inside `with torch.device("meta")` (parameter counting): skip filling buffers."""
    return torch.empty(0).device.type == "meta"


def hash_routing_table(vocab_size: int, n_experts: int, k: int, layer_id: int) -> torch.Tensor:
    """Fixed token-id -> k distinct experts [vocab_size, k], deterministic from the layer id.

    Each row is a uniformly random k-subset (top-k of iid uniforms), so every expert gets
    ~vocab_size * k / n_experts token ids."""
    gen = torch.Generator().manual_seed(HASH_ROUTING_SEED + 1_000_003 * layer_id)
    table = torch.empty(vocab_size, k, dtype=torch.long)
    for start in range(0, vocab_size, 8192):  # chunked: V4 sizes (129k x 384) stay small in memory
        n = min(8192, vocab_size - start)
        table[start:start + n] = torch.rand(n, n_experts, generator=gen).topk(k, dim=-1).indices
    return table


class Gate(nn.Module):
    """Scores, biased top-k selection (or hash lookup), routing weights and load counting."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.n_experts, self.topk = cfg.n_routed_experts, cfg.n_activated_experts
        self.score_func, self.route_scale = cfg.score_func, cfg.route_scale
        self.update_speed = cfg.bias_update_speed
        self.is_hash = layer_id < cfg.n_hash_layers
        self.weight = nn.Parameter(torch.empty(self.n_experts, cfg.dim))
        # Selection bias (aux-loss-free balancing): persistent, so resume continues balancing.
        self.register_buffer("bias", torch.zeros(self.n_experts))
        # Tokens routed to each expert by this step's training forwards (reset after each step).
        self.register_buffer("load", torch.zeros(self.n_experts), persistent=False)
        if self.is_hash:
            table = torch.empty(cfg.vocab_size, self.topk, dtype=torch.long)
            if not _building_on_meta():
                table = hash_routing_table(cfg.vocab_size, self.n_experts, self.topk, layer_id)
            self.register_buffer("tid2eid", table)
        if not _building_on_meta():
            nn.init.normal_(self.weight, 0.0, cfg.init_std)

    def scores(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Routing scores of x [N, D]; logits: x W_g^T (fp32) made already (a packed GEMV)."""
        if logits is None:
            with torch.autocast(x.device.type, enabled=False):  # routing in fp32, as DeepSeek does
                logits = F.linear(x.float(), self.weight.float())
        if self.score_func == "softmax":
            return logits.softmax(dim=-1)
        if self.score_func == "sigmoid":
            return logits.sigmoid()
        return F.softplus(logits).sqrt()  # V4: sqrt(softplus)

    def route_one(self, x: torch.Tensor, ids: torch.Tensor | None,
                  logits: torch.Tensor | None = None) -> tuple[list[float], list[int]]:
        """`forward` for one token x [1, D] at inference, as host lists (weights, experts): the
        scores and the biased selection values in fp32 as the tensor path has them, the
        top-k (ties: earliest expert) and the renormalisation on the host, ~10 ops fewer.
        logits: x's fp32 gate logits [1, E] if already made (`MoE._one_token`'s packed GEMV)."""
        scores = self.scores(x, logits)[0]
        if self.is_hash:
            if ids is None:
                raise ValueError("hash-routed MoE layers need the token ids (ctx.ids)")
            experts = self.tid2eid[int(ids.reshape(-1)[0])].tolist()
        else:
            biased = (scores + self.bias).tolist()
            experts = sorted(range(self.n_experts), key=lambda e: -biased[e])[:self.topk]
        s = scores.tolist()
        w = [s[e] for e in experts]
        if self.score_func != "softmax":
            total = max(sum(w), 1e-20)
            w = [v / total for v in w]
        return [v * self.route_scale for v in w], experts

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] (ids [N] for hash layers) -> (weights [N, k] fp32, experts [N, k] long)."""
        scores = self.scores(x)
        if self.is_hash:
            if ids is None:
                raise ValueError("hash-routed MoE layers need the token ids (ctx.ids)")
            idx = self.tid2eid[ids.reshape(-1)]
        else:
            idx = (scores + self.bias).topk(self.topk, dim=-1).indices  # bias: selection only
        weights = scores.gather(1, idx)
        if self.score_func != "softmax":
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        if self.training:
            self.load += torch.bincount(idx.flatten(), minlength=self.n_experts).to(self.load.dtype)
        return weights * self.route_scale, idx

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """b_e += gamma * sign(mean load - load_e): underloaded experts up, overloaded down."""
        if self.is_hash or self.update_speed <= 0:
            self.load.zero_()
            return
        load = self.load
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # balance the global load under FSDP/DP
        if load.sum() > 0:
            self.bias += self.update_speed * torch.sign(load.mean() - load)
        load.zero_()


def load_max_over_mean(idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Max expert load divided by the mean load (1.0 = perfectly balanced), a 0-dim tensor
    (no host sync in the forward; `Transformer.loss` turns the stats into floats)."""
    counts = torch.bincount(idx.flatten(), minlength=n_experts).float()
    return counts.max() / counts.mean().clamp_min(1e-9)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class ExpertWeight(nn.Module):
    """A bare [out, in] weight named like nn.Linear's (`w1.weight`) with no init of its own:
    V4-Pro has 23k experts, and nn.Linear's per-module init made building it on the meta
    device (parameter counting) ~8x slower. MoE / Transformer.reset_parameters initialise."""

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))


def swiglu_hidden(ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """swiglu(w1 x, w3 x) of an Expert or FeedForward `ff`: one GEMV when w1|w3 are packed
    side by side (model/packed.py, made by infer/prepack.py; the same values), else two."""
    both = packed_outputs(ff, "w13", x)
    if both is None:
        both = F.linear(x, ff.w1.weight), F.linear(x, ff.w3.weight)
    return swiglu(both[0], both[1], ff.swiglu_limit)


class Expert(nn.Module):
    """One routed SwiGLU expert: w2(swiglu(w1 x, w3 x)), DeepSeek's w1/w2/w3 naming."""

    def __init__(self, dim: int, hidden: int, swiglu_limit: float):
        super().__init__()
        self.w1 = ExpertWeight(hidden, dim)  # gate
        self.w3 = ExpertWeight(hidden, dim)  # up
        self.w2 = ExpertWeight(dim, hidden)  # down
        self.swiglu_limit = swiglu_limit

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """swiglu(w1 x, w3 x): the input of the down projection."""
        return swiglu_hidden(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.hidden(x), self.w2.weight)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_experts, self.topk = cfg.n_routed_experts, cfg.n_activated_experts
        self.hidden = cfg.moe_inter_dim or cfg.ffn_dim
        self.swiglu_limit = cfg.swiglu_limit
        self.gate = Gate(cfg, layer_id)
        self.experts = nn.ModuleList(
            Expert(cfg.dim, self.hidden, cfg.swiglu_limit) for _ in range(self.n_experts))
        if not _building_on_meta():
            for p in self.experts.parameters():
                nn.init.normal_(p, 0.0, cfg.init_std)
        # n shared experts of width `hidden` are one SwiGLU of width n * hidden (identical math).
        self.shared_experts = (FeedForward(cfg.dim, self.hidden * cfg.n_shared_experts, cfg.swiglu_limit)
                               if cfg.n_shared_experts > 0 else None)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        ids = getattr(ctx, "ids", None) if ctx is not None else None
        if flat.shape[0] == 1 and flat.device.type == "cpu" and not self.training:  # decode
            return self._one_token(flat, ids).view(shape)
        weights, idx = self.gate(flat, ids)
        out = self.routed(flat, weights, idx)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        if ctx is not None and self.training and not torch.compiler.is_compiling():
            ratio = load_max_over_mean(idx, self.n_experts)
            ctx.stats[f"moe_load_max_over_mean_l{self.layer_id}"] = ratio
            if not self.gate.is_hash:  # the learned-routing layers' worst imbalance (hash load is fixed)
                ctx.stats["moe_load_max_over_mean"] = torch.maximum(
                    ctx.stats.get("moe_load_max_over_mean", ratio), ratio)
        return out.view(shape)

    def routed(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """sum_j weights[:, j] * Expert_{idx[:, j]}(x), computed grouped by expert."""
        N, D = x.shape
        flat_e = idx.flatten()
        order = flat_e.argsort(stable=True)  # (token, slot) pairs sorted by expert
        tok = order // self.topk
        counts = torch.bincount(flat_e, minlength=self.n_experts)
        dtype = _autocast_dtype(x)
        xs = x.index_select(0, tok).to(dtype)
        if self._grouped_mm_ok(x, dtype):
            ys = self._grouped(xs, counts, dtype)
        else:
            ys = self._looped(xs, counts.tolist())
        ys = ys * weights.flatten()[order].unsqueeze(1).to(ys.dtype)
        return torch.zeros(N, D, dtype=ys.dtype, device=x.device).index_add_(0, tok, ys)

    def _one_token(self, x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """`forward` of one token x [1, D] (routed by `Gate.route_one`): its experts one after
        another (the grouping costs ~10 ops), each down projection accumulated with its routing
        weight in one addmm, the shared expert's output as the base; each SwiGLU's w1|w3 one GEMV
        when prepacked (`swiglu_hidden`), in fp32 the gate's logits and the shared expert's w1|w3
        one GEMV (`gate_w13`: the gate stays fp32 under autocast, so only without it)."""
        xs = x.to(_autocast_dtype(x))
        shared = self.shared_experts
        pre = None
        if shared is not None and x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
            pre = packed_outputs(self, "gate_w13", x)
        if pre is not None:
            weights, experts = self.gate.route_one(x, ids, logits=pre[0])
            out = self._one_swiglu(pre, xs, weights, experts)
            if out is not None:
                return out
            out = F.linear(swiglu(pre[1], pre[2], shared.swiglu_limit), shared.w2.weight)
        else:
            weights, experts = self.gate.route_one(x, ids)
            out = F.linear(swiglu_hidden(shared, xs), shared.w2.weight) if shared is not None else None
        for w, e in zip(weights, experts, strict=True):
            ex = self.experts[e]
            h = ex.hidden(xs)
            if out is None:
                out = F.linear(h, ex.w2.weight).mul_(w)
            else:
                out = out.addmm_(h, ex.w2.weight.t().to(h.dtype), alpha=w)
        return out

    def _one_swiglu(self, pre: list, xs: torch.Tensor, weights: list, experts: list) -> torch.Tensor | None:
        """`_one_token`'s output (fp32, prepacked) with ONE SwiGLU over the shared expert and the
        routed ones side by side (gate halves concatenated, up halves concatenated: 4 elementwise
        ops instead of 4 per expert), the down projections as before. None where it does not
        apply: an expert without its packed w1|w3, another clamp limit, or a width that is not a
        whole number of 64 elements (the elementwise kernels finish a ragged tail with scalar
        code whose silu differs in the last bit from the vector one: only whole vectors make
        the concatenated values equal the separate ones)."""
        # the static conditions first, so a model they rule out (e.g. tiny widths) does not
        # make the experts' GEMVs here and again on the per-expert path
        if self.swiglu_limit != self.shared_experts.swiglu_limit or pre[1].shape[-1] % 64 or self.hidden % 64:
            return None
        parts = [pre[1:]]
        for e in experts:
            both = packed_outputs(self.experts[e], "w13", xs)
            if both is None:
                return None
            parts.append(both)
        h = swiglu(torch.cat([g for g, _ in parts], dim=-1), torch.cat([u for _, u in parts], dim=-1),
                   self.swiglu_limit).split([g.shape[-1] for g, _ in parts], dim=-1)
        out = F.linear(h[0], self.shared_experts.w2.weight)
        for w, e, he in zip(weights, experts, h[1:], strict=True):
            out = out.addmm_(he, self.experts[e].w2.weight.t(), alpha=w)
        return out

    def _grouped_mm_ok(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        # A real grouped kernel only on CUDA (bf16, SM >= 80, 16-byte aligned strides); on CPU
        # grouped_mm falls back to per-group matmuls and the stacking copies make it slower.
        aligned = (x.shape[-1] * dtype.itemsize) % 16 == 0 and (self.hidden * dtype.itemsize) % 16 == 0
        return hasattr(F, "grouped_mm") and aligned and x.device.type == "cuda" and dtype == torch.bfloat16

    def _grouped(self, xs: torch.Tensor, counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        offs = counts.cumsum(0).to(torch.int32)

        def stacked(name: str) -> torch.Tensor:  # [E, out, in] -> grouped_mm's [E, in, out]
            return torch.stack([getattr(e, name).weight.to(dtype) for e in self.experts]).transpose(1, 2)

        h = swiglu(F.grouped_mm(xs, stacked("w1"), offs=offs), F.grouped_mm(xs, stacked("w3"), offs=offs),
                   self.swiglu_limit)
        return F.grouped_mm(h, stacked("w2"), offs=offs)

    def _looped(self, xs: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Fallback: one Python iteration per expert (never per token)."""
        outs = [self.experts[e](chunk) for e, chunk in enumerate(xs.split(counts)) if chunk.shape[0]]
        return torch.cat(outs) if outs else xs.new_zeros(0, xs.shape[-1])
