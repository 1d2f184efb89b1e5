"""Model configuration: one dataclass, named presets, validated overrides.

Field names follow DeepSeek's released V4 config where one exists, so that a user who
knows that config reads ours without a glossary. Every V4 component is a switch here;
with all of them off (`hc_mult=1`, `n_routed_experts=0`, `engram_layer_ids=[]`,
`compress_ratios` all 0, `n_mtp_layers=0`, ...) the model is a plain pre-norm
transformer: the `baseline` that ablations and overhead ratios compare against.

This module imports no torch, so that the CLI can validate `--set key=value` before
paying for the model stack.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from dsv4.errors import UserError


@dataclass
class ModelConfig:
    # ---- core transformer ------------------------------------------------------
    vocab_size: int = 8192
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    head_dim: int = 64
    n_kv_heads: int = 0  # 0 -> n_heads (MHA). V4 shares one KV head across all queries (MQA).
    inter_dim: int = 0  # dense SwiGLU hidden width; 0 -> 8/3 * dim rounded up to 64
    max_seq_len: int = 512
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_head_dim: int = 0  # dims of each head that get RoPE (the last ones); 0 -> all of head_dim
    tie_embeddings: bool = False
    init_std: float = 0.02
    # YaRN long-context RoPE scaling (rope_factor 1 = off)
    rope_factor: float = 1.0
    original_seq_len: int = 0
    beta_fast: int = 32
    beta_slow: int = 1

    # ---- V4 attention (SPEC 1.3) ------------------------------------------------
    q_lora_rank: int = 0  # 0 -> full-rank query projection
    o_groups: int = 0  # grouped low-rank output projection; 0 -> one plain wo
    o_lora_rank: int = 0
    attn_sink: bool = False  # learned per-head sink logit
    window_size: int = 0  # sliding window every layer attends to; 0 -> full causal
    compress_ratios: list[int] = field(default_factory=list)  # per layer: 0 window, 4 CSA, >4 HCA
    index_n_heads: int = 0
    index_head_dim: int = 0
    index_topk: int = 0
    # attn helper additions (SPEC 1.3):
    # V4 MQA: one K=V head (wkv + kv_norm), queries RMS-normed per head, inverse RoPE on the output
    shared_kv: bool = False
    # RoPE base of CSA/HCA layers (V4-Flash: 160000, with YaRN); 0 -> rope_theta
    compress_rope_theta: float = 0.0

    # ---- mHC (SPEC 1.1) ---------------------------------------------------------
    hc_mult: int = 1  # number of residual streams n; 1 = plain residual
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    # Ablation only (benchmarks/mhc_repro.py): H_res used raw, without the Sinkhorn
    # projection -- the unconstrained hyper-connections (HC) that mHC fixes.
    hc_unconstrained: bool = False
    # Diagonal logit of H_res's bias at init: 0 -> comb = J/n (DeepSeek/transformers' zero
    # init); larger -> closer to the identity (streams kept apart). Ablation knob.
    hc_res_init: float = 0.0

    # ---- DeepSeekMoE (SPEC 1.4) ------------------------------------------------
    n_routed_experts: int = 0  # 0 -> dense SwiGLU FFN
    n_shared_experts: int = 1
    n_activated_experts: int = 2
    moe_inter_dim: int = 0  # expert hidden width; 0 -> inter_dim
    n_hash_layers: int = 0  # the first layers route by a fixed token-id -> experts table
    score_func: str = "sqrtsoftplus"  # sqrtsoftplus | softmax | sigmoid
    route_scale: float = 1.0
    swiglu_limit: float = 0.0  # clamp SwiGLU activations at +-limit; 0 = no clamp
    bias_update_speed: float = 1e-3  # gamma of aux-loss-free balancing

    # ---- MTP (SPEC 1.5) ----------------------------------------------------------
    n_mtp_layers: int = 0
    mtp_loss_weight: float = 0.3  # weight early in training (DeepSeek-V3: 0.3 ...)
    mtp_loss_weight_late: float = 0.1  # ... then 0.1 for the rest
    mtp_weight_switch: float = 0.68  # fraction of training where it drops (V3: 10T of 14.8T tokens)

    # ---- Engram (SPEC 1.2) ------------------------------------------------------
    engram_layer_ids: list[int] = field(default_factory=list)  # [] = off
    engram_vocab_size: int = 0  # rows per hash head (a prime at or above it is used)
    engram_ngram_orders: list[int] = field(default_factory=lambda: [2, 3])
    engram_n_heads: int = 8
    engram_dim: int = 0  # d_mem: retrieved width per layer (split over the heads)
    engram_kernel_size: int = 4
    # engmem helper (issue 8): where the tables live. memory = an nn.Parameter (dense Adam);
    # host = a separate host tensor (pinned, async side-stream copies with CUDA); mmap = a
    # memory-mapped file per layer under engram_path (larger than RAM). host/mmap train with
    # sparse row-wise Adam (dsv4.train.engram_optim.SparseRowAdam).
    engram_store: str = "memory"
    engram_path: str = ""  # directory of the mmap tables (engram_l<layer>.table)

    # ---- derived helpers ----------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.inter_dim:
            return self.inter_dim
        return ((8 * self.dim // 3) + 63) // 64 * 64

    @property
    def rope_dim(self) -> int:
        return self.rope_head_dim or self.head_dim

    def layer_compress_ratio(self, layer: int) -> int:
        # layer == n_layers is the MTP block: window-only, as in V4's released config.
        return self.compress_ratios[layer] if self.compress_ratios and layer < self.n_layers else 0

    # ---- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown model config key(s): {', '.join(unknown)}")
        cfg = cls(**{k: _coerce(k, v) for k, v in d.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise UserError naming the first inconsistency found."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UserError(f"invalid model config: {msg}")

        for name in ("vocab_size", "dim", "n_layers", "n_heads", "head_dim", "max_seq_len"):
            need(getattr(self, name) > 0, f"{name} must be > 0 (got {getattr(self, name)})")
        need(self.n_kv_heads >= 0, "n_kv_heads must be >= 0")
        need(self.n_heads % self.kv_heads == 0,
             f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        need(0 < self.rope_dim <= self.head_dim and self.rope_dim % 2 == 0,
             f"rope_head_dim must be even and <= head_dim (got {self.rope_head_dim})")
        need(self.hc_mult >= 1, f"hc_mult must be >= 1 (got {self.hc_mult})")
        need(self.hc_sinkhorn_iters >= 1, "hc_sinkhorn_iters must be >= 1")
        need(self.hc_eps > 0, "hc_eps must be > 0")
        need(not (self.hc_unconstrained and self.hc_mult == 1), "hc_unconstrained needs hc_mult > 1")
        need(0.0 <= self.mtp_weight_switch <= 1.0, "mtp_weight_switch must be in [0, 1]")
        need(self.window_size >= 0, "window_size must be >= 0")
        if self.compress_ratios:
            need(len(self.compress_ratios) == self.n_layers,
                 f"compress_ratios has {len(self.compress_ratios)} entries for {self.n_layers} layers")
            need(all(r >= 0 for r in self.compress_ratios), "compress_ratios must be >= 0")
            if any(r == 4 for r in self.compress_ratios):
                need(self.index_n_heads > 0 and self.index_head_dim > 0 and self.index_topk > 0,
                     "CSA layers (compress ratio 4) need index_n_heads, index_head_dim, index_topk > 0")
                need(self.index_head_dim >= self.rope_dim,
                     f"index_head_dim ({self.index_head_dim}) must be >= the rope dims ({self.rope_dim})")
            if any(r > 0 for r in self.compress_ratios):
                need(self.shared_kv, "compressed attention (compress_ratios > 0) needs shared_kv=true")
        if self.shared_kv:
            need(self.n_kv_heads in (0, 1), "shared_kv means one KV head: n_kv_heads must be 0 or 1")
        if self.o_groups:
            need(self.n_heads % self.o_groups == 0, "n_heads must be a multiple of o_groups")
            need(self.o_lora_rank > 0, "o_groups needs o_lora_rank > 0")
        if self.n_routed_experts:
            need(0 < self.n_activated_experts <= self.n_routed_experts,
                 "n_activated_experts must be in 1..n_routed_experts")
            need(self.score_func in ("sqrtsoftplus", "softmax", "sigmoid"),
                 f"score_func must be sqrtsoftplus, softmax or sigmoid (got {self.score_func!r})")
        need(0 <= self.n_hash_layers <= self.n_layers, "n_hash_layers must be in 0..n_layers")
        need(self.n_mtp_layers in (0, 1), "n_mtp_layers must be 0 or 1")
        if self.engram_layer_ids:
            need(all(0 <= i < self.n_layers for i in self.engram_layer_ids),
                 f"engram_layer_ids must lie in 0..{self.n_layers - 1}")
            need(self.engram_vocab_size > 0 and self.engram_dim > 0,
                 "Engram needs engram_vocab_size and engram_dim > 0")
            need(self.engram_dim % (self.engram_n_heads * len(self.engram_ngram_orders)) == 0,
                 "engram_dim must be divisible by engram_n_heads * len(engram_ngram_orders)")
            need(all(n >= 2 for n in self.engram_ngram_orders), "engram_ngram_orders must be >= 2")
        need(self.engram_store in ("memory", "host", "mmap"),
             f"engram_store must be memory, host or mmap (got {self.engram_store!r})")
        need(self.engram_store != "mmap" or bool(self.engram_path),
             "engram_store=mmap needs engram_path (a directory for the table files)")


def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(ModelConfig)


def _coerce(key: str, value: typing.Any) -> typing.Any:
    """Convert a value (possibly a CLI string) to the declared type of `key`."""
    types = _field_types()
    if key not in types:
        raise UserError(f"unknown model config key {key!r}")
    tp = types[key]
    origin = typing.get_origin(tp)
    try:
        if origin is list:
            (item_tp,) = typing.get_args(tp)
            if isinstance(value, str):
                text = value.strip()
                if text.startswith("["):
                    value = json.loads(text)
                else:
                    value = [v for v in text.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [_scalar(item_tp, v) for v in value]
        return _scalar(tp, value)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise UserError(
            f"config key {key!r} expects {getattr(tp, '__name__', tp)}, got {value!r}"
        ) from None


def _scalar(tp: type, value: typing.Any) -> typing.Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value) if not isinstance(value, str) else int(value.strip())
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    raise TypeError(tp)


# ---------------------------------------------------------------------------------------
# Named presets. Each is a dict of overrides on the ModelConfig defaults.
# ---------------------------------------------------------------------------------------

def _v4_published(**kw) -> dict:
    """Hyperparameters shared by the released V4 configs (config.json of
    deepseek-ai/DeepSeek-V4-Flash and -Pro; transformers' DeepseekV4Config)."""
    return dict(
        vocab_size=129280, max_seq_len=1048576, norm_eps=1e-6, head_dim=512, n_kv_heads=1,
        shared_kv=True, rope_head_dim=64, rope_theta=10000.0, compress_rope_theta=160000.0,
        rope_factor=16.0, original_seq_len=65536,
        beta_fast=32, beta_slow=1, o_lora_rank=1024, attn_sink=True, window_size=128,
        index_n_heads=64, index_head_dim=128, n_shared_experts=1, n_activated_experts=6,
        n_hash_layers=3, score_func="sqrtsoftplus", swiglu_limit=10.0,
        hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6, n_mtp_layers=1, **kw,
    )


PRESETS: dict[str, dict] = {
    # Plain pre-norm transformer: every V4 switch off. The reference for ablations.
    "baseline": dict(vocab_size=8192, dim=256, n_layers=6, n_heads=4, head_dim=64, max_seq_len=256),
    # Seconds per step, for tests: EVERY component on (window, CSA and HCA layers, indexer,
    # MoE with a hash-routed layer and a shared expert, Engram at one layer, mHC, MTP).
    "tiny": dict(
        vocab_size=2048, dim=64, n_layers=3, n_heads=2, head_dim=32, n_kv_heads=1, shared_kv=True,
        max_seq_len=128,
        rope_head_dim=16, q_lora_rank=32, o_groups=2, o_lora_rank=32, attn_sink=True,
        window_size=16, compress_ratios=[0, 4, 16], index_n_heads=2, index_head_dim=16, index_topk=4,
        hc_mult=4, n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, moe_inter_dim=64,
        n_hash_layers=1, route_scale=1.5, swiglu_limit=10.0,
        engram_layer_ids=[1], engram_vocab_size=257, engram_ngram_orders=[2, 3], engram_n_heads=2,
        engram_dim=32, n_mtp_layers=1,
    ),
    # The fast model (distillation target, millisecond-level decode): small and shallow,
    # V4 layout with cheap settings; MTP kept for self-speculative decoding.
    "lite": dict(
        vocab_size=8192, dim=128, n_layers=3, n_heads=4, head_dim=32, n_kv_heads=1, shared_kv=True,
        max_seq_len=512,
        rope_head_dim=16, q_lora_rank=64, o_groups=2, o_lora_rank=64, attn_sink=True,
        window_size=64, compress_ratios=[0, 4, 32], index_n_heads=2, index_head_dim=16, index_topk=16,
        hc_mult=2, n_routed_experts=4, n_shared_experts=1, n_activated_experts=1, moe_inter_dim=256,
        n_hash_layers=1, route_scale=1.5, swiglu_limit=10.0, n_mtp_layers=1,
    ),
    # The strongest model that trains on a 2-core laptop CPU in the quickstart budget
    # (~10-20 min): every component on, ~6M parameters active (~11M total).
    "flagship": dict(
        vocab_size=8192, dim=256, n_layers=6, n_heads=4, head_dim=64, n_kv_heads=1, shared_kv=True,
        max_seq_len=256,
        rope_head_dim=32, q_lora_rank=128, o_groups=2, o_lora_rank=128, attn_sink=True,
        window_size=64, compress_ratios=[0, 4, 16, 4, 16, 4], index_n_heads=4, index_head_dim=32,
        index_topk=16, hc_mult=4, n_routed_experts=8, n_shared_experts=1, n_activated_experts=2,
        moe_inter_dim=256, n_hash_layers=1, route_scale=1.5, swiglu_limit=10.0,
        engram_layer_ids=[1], engram_vocab_size=4099, engram_ngram_orders=[2, 3], engram_n_heads=4,
        engram_dim=128, n_mtp_layers=1,
    ),
    # Published DeepSeek-V4-Flash: 284B total / 13B active. 43 layers: two window-only, then
    # CSA (4) / HCA (128) alternating, CSA last; hash routing in the first 3 MoE layers.
    "v4-flash": _v4_published(
        dim=4096, n_layers=43, n_heads=64, q_lora_rank=1024, o_groups=8,
        compress_ratios=[0, 0] + [4, 128] * 20 + [4], index_topk=512,
        n_routed_experts=256, moe_inter_dim=2048, route_scale=1.5,
    ),
    # Published DeepSeek-V4-Pro: 1.6T total / 49B active. 61 layers: two HCA, then CSA/HCA.
    "v4-pro": _v4_published(
        dim=7168, n_layers=61, n_heads=128, q_lora_rank=1536, o_groups=16,
        compress_ratios=[128, 128] + [4, 128] * 29 + [4], index_topk=1024,
        n_routed_experts=384, moe_inter_dim=3072, route_scale=2.5,
    ),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def make_config(preset: str = "tiny", **overrides: typing.Any) -> ModelConfig:
    """The named preset with `overrides` applied; every key and value is validated."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(preset_names())}")
    values = {**ModelConfig().to_dict(), **PRESETS[preset]}
    for key, value in overrides.items():
        values[key] = _coerce(key, value)
    return ModelConfig.from_dict(values)


def parse_set_args(items: list[str] | None) -> dict[str, str]:
    """Parse CLI `--set key=value` items into a dict (values stay strings; make_config coerces)."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in _field_types():
            raise UserError(f"unknown model config key {key!r} in --set (see `dsv4 model summary --help`)")
        out[key] = value
    return out
