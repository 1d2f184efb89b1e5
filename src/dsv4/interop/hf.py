"""Hugging Face transformers `DeepseekV4` <-> our checkpoints: config and weights, both ways.

    convert_from_hf(hf_dir, out_ckpt)   config.json + safetensors (sharded or not) -> ours
    convert_to_hf(ckpt, out_dir)        ours -> config.json + safetensors (+ index when sharded)

Like torchtitan's state-dict adapters, the model code stays ours and only names and
layouts move (tables in names.py): transformers stacks each layer's routed experts into
`gate_up_proj` [E, 2I, D] = cat(w1, w3) and `down_proj` [E, D, I]; everything else is a
rename. Tensors are copied with their dtype and bits unchanged, so `--to-hf` then
`--from-hf` is bit-exact. Both directions stream (st_io.py): one tensor, or one layer's
experts, in memory at a time.

Config: transformers' keys (hidden_size, layer_types + compress_rates, mlp_layer_types,
rope_parameters {main, compress}, ...) and the legacy DeepSeek spellings its config still
accepts (compress_ratios, num_hash_layers, qk_rope_head_dim). We also store our whole
config under "dsv4_config"; `--from-hf` uses it verbatim when it agrees with the
transformers fields (training-only fields such as the MTP loss schedule survive the trip)
and otherwise takes the transformers fields. transformers' DeepseekV4 has no Engram and
no MTP block, always uses mHC, MoE in every layer, one shared expert, grouped low-rank
output, sinks and a clamped SwiGLU; `hf_compatibility` names what a config lacks.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from dsv4.config import ModelConfig
from dsv4.errors import UserError
from dsv4.interop import names as N
from dsv4.interop.deepseek import write_native
from dsv4.interop.st_io import Planned, TensorSource, write_sharded

CSA, HCA, SLIDING = "compressed_sparse_attention", "heavily_compressed_attention", "sliding_attention"
TOKENIZER = "tokenizer.json"

# transformers' DeepseekV4Config defaults (V4-Flash), used for keys a config.json omits
HF_DEFAULTS = dict(
    vocab_size=129280,
    hidden_size=4096,
    moe_intermediate_size=2048,
    num_hidden_layers=43,
    num_attention_heads=64,
    head_dim=512,
    q_lora_rank=1024,
    num_experts_per_tok=6,
    n_routed_experts=256,
    n_shared_experts=1,
    scoring_func="sqrtsoftplus",
    routed_scaling_factor=1.5,
    max_position_embeddings=1048576,
    rope_theta=10000.0,
    compress_rope_theta=160000.0,
    hc_mult=4,
    hc_sinkhorn_iters=20,
    hc_eps=1e-6,
    swiglu_limit=10.0,
    sliding_window=128,
    o_groups=8,
    o_lora_rank=1024,
    index_n_heads=64,
    index_head_dim=128,
    index_topk=512,
    initializer_range=0.02,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    norm_topk_prob=True,
)


# ---- config ---------------------------------------------------------------------------------


def hf_compatibility(cfg: ModelConfig) -> list[str]:
    """What keeps `cfg` from being a transformers DeepseekV4 model (empty: compatible)."""
    why = []
    if cfg.engram_layer_ids:
        why.append("Engram")
    if cfg.n_mtp_layers:
        why.append("MTP")
    checks = [
        (cfg.hc_mult > 1 and not cfg.hc_unconstrained, "mHC with hc_mult > 1"),
        (cfg.shared_kv and cfg.kv_heads in (1, cfg.n_heads) and cfg.n_kv_heads in (0, 1), "shared_kv (MQA)"),
        (cfg.q_lora_rank > 0, "q_lora_rank > 0"),
        (cfg.o_groups > 0, "o_groups > 0"),
        (cfg.attn_sink, "attn_sink"),
        (cfg.window_size > 0, "window_size > 0"),
        (cfg.n_routed_experts > 0, "MoE in every layer (n_routed_experts > 0)"),
        (cfg.n_shared_experts == 1, "exactly one shared expert"),
        (cfg.swiglu_limit > 0, "a SwiGLU clamp (swiglu_limit > 0)"),
        (cfg.score_func in ("sqrtsoftplus", "sigmoid"), "score_func sqrtsoftplus or sigmoid"),
        (len({r for r in cfg.compress_ratios if r not in (0, 4)}) <= 1, "one HCA compression ratio"),
        (
            any(r > 0 for r in cfg.compress_ratios) or cfg.original_seq_len == 0,
            "no YaRN on a model without compressed layers",
        ),
    ]
    why += [f"needs {what}" for ok, what in checks if not ok]
    return why


def _rope_parameters(cfg: ModelConfig) -> dict:
    factor = cfg.rope_dim / cfg.head_dim
    main = {"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": factor}
    compress = {
        "rope_type": "default",
        "rope_theta": cfg.compress_rope_theta or cfg.rope_theta,
        "partial_rotary_factor": factor,
    }
    if cfg.original_seq_len > 0:  # V4: YaRN on the compressed layers' table, no mscale
        compress.update(
            rope_type="yarn",
            factor=cfg.rope_factor,
            beta_fast=cfg.beta_fast,
            beta_slow=cfg.beta_slow,
            original_max_position_embeddings=cfg.original_seq_len,
            attention_factor=1.0,
        )
    return {"main": main, "compress": compress}


def config_to_hf(cfg: ModelConfig) -> dict:
    """transformers config.json for `cfg` (which must be compatible) + our config under dsv4_config."""
    why = hf_compatibility(cfg)
    if why:
        raise UserError(f"this model cannot be a transformers DeepseekV4: {', '.join(why)}")
    ratios = cfg.compress_ratios or [0] * cfg.n_layers
    hca = next((r for r in ratios if r not in (0, 4)), 128)
    layer_types = [SLIDING if r == 0 else CSA if r == 4 else HCA for r in ratios]
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": 1,
        "head_dim": cfg.head_dim,
        "q_lora_rank": cfg.q_lora_rank,
        "o_groups": cfg.o_groups,
        "o_lora_rank": cfg.o_lora_rank,
        "partial_rotary_factor": cfg.rope_dim / cfg.head_dim,
        "sliding_window": cfg.window_size,
        "layer_types": layer_types,
        "compress_rates": {CSA: 4, HCA: hca},
        "index_n_heads": cfg.index_n_heads,
        "index_head_dim": cfg.index_head_dim,
        "index_topk": cfg.index_topk,
        "moe_intermediate_size": cfg.moe_inter_dim or cfg.ffn_dim,
        "n_routed_experts": cfg.n_routed_experts,
        "n_shared_experts": 1,
        "num_experts_per_tok": cfg.n_activated_experts,
        "mlp_layer_types": ["hash_moe" if i < cfg.n_hash_layers else "moe" for i in range(cfg.n_layers)],
        "scoring_func": cfg.score_func,
        "norm_topk_prob": True,
        "routed_scaling_factor": cfg.route_scale,
        "swiglu_limit": cfg.swiglu_limit,
        "hidden_act": "silu",
        "hc_mult": cfg.hc_mult,
        "hc_sinkhorn_iters": cfg.hc_sinkhorn_iters,
        "hc_eps": cfg.hc_eps,
        "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "compress_rope_theta": cfg.compress_rope_theta or cfg.rope_theta,
        "rope_parameters": _rope_parameters(cfg),
        "num_nextn_predict_layers": 0,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "dsv4_config": cfg.to_dict(),
    }


def _hf_layer_ratios(hf: dict, n: int) -> list[int]:
    rates = {CSA: 4, HCA: 128, **(hf.get("compress_rates") or {})}
    if hf.get("compress_rate_csa") is not None:
        rates[CSA] = hf["compress_rate_csa"]
    if hf.get("compress_rate_hca") is not None:
        rates[HCA] = hf["compress_rate_hca"]
    if rates[CSA] != 4:
        raise UserError(f"compressed_sparse_attention rate {rates[CSA]} is not supported (V4 uses 4)")
    types = hf.get("layer_types")
    if types is None and hf.get("compress_ratios") is not None:
        return [int(r) for r in hf["compress_ratios"][:n]]
    if types is None:  # transformers' default: 2 HCA layers, then CSA / HCA interleaved
        types = [HCA] * min(n, 2) + [CSA if i % 2 else HCA for i in range(max(n - 2, 0))]
    rate = {SLIDING: 0, CSA: 4, HCA: rates[HCA]}
    bad = [t for t in types if t not in rate]
    if bad:
        raise UserError(f"unknown DeepseekV4 layer type {bad[0]!r}")
    return [rate[t] for t in types[:n]]


def _hf_hash_layers(hf: dict, n: int) -> int:
    types = hf.get("mlp_layer_types")
    if types is None:
        return min(n, hf.get("num_hash_layers", 3))
    k = sum(1 for t in types[:n] if t == "hash_moe")
    if list(types[:k]) != ["hash_moe"] * k:
        raise UserError("hash_moe layers must come first (our n_hash_layers routes the first layers by hash)")
    return k


def _hf_rope(hf: dict) -> tuple[dict, dict]:
    rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if isinstance(rp.get("main"), dict) and isinstance(rp.get("compress"), dict):
        return rp["main"], rp["compress"]
    main = {"rope_type": "default", "rope_theta": hf.get("rope_theta", HF_DEFAULTS["rope_theta"])}
    compress = {k: v for k, v in rp.items() if k not in ("main", "compress")}
    compress.setdefault("rope_theta", hf.get("compress_rope_theta", HF_DEFAULTS["compress_rope_theta"]))
    compress["rope_type"] = compress.get("rope_type", compress.get("type", "default"))
    return main, compress


def config_from_hf(hf: dict) -> ModelConfig:
    """Our config for a transformers DeepseekV4 config.json (modern or legacy keys)."""
    g = {**HF_DEFAULTS, **{k: v for k, v in hf.items() if v is not None}}
    if hf.get("model_type", "deepseek_v4") != "deepseek_v4":
        raise UserError(f"not a DeepseekV4 config (model_type {hf.get('model_type')!r})")
    if g.get("num_key_value_heads", 1) != 1 or g["n_shared_experts"] != 1 or not g["norm_topk_prob"]:
        raise UserError("DeepseekV4 config must have one KV head, one shared expert and norm_topk_prob")
    if g.get("hidden_act", "silu") != "silu" or g.get("attention_bias") or g.get("mlp_bias"):
        raise UserError("DeepseekV4 config must use silu and no attention/MLP biases")
    n = int(g["num_hidden_layers"])
    ratios = _hf_layer_ratios(hf, n)
    main, compress = _hf_rope(hf)
    if main.get("rope_type", "default") != "default":
        raise UserError(
            "a YaRN-scaled main (sliding-window) RoPE is not supported; V4 scales only 'compress'"
        )
    if "partial_rotary_factor" in hf and hf["partial_rotary_factor"] is not None:
        rope_dim = round(g["head_dim"] * hf["partial_rotary_factor"])
    elif hf.get("qk_rope_head_dim"):
        rope_dim = int(hf["qk_rope_head_dim"])
    else:
        rope_dim = g["head_dim"] // 8  # transformers' default factor 64 / 512
    yarn = compress["rope_type"] == "yarn" and any(r > 0 for r in ratios)
    if yarn and compress.get("attention_factor", 1.0) != 1.0:
        raise UserError("V4 applies no YaRN attention factor (attention_factor must be 1.0)")
    derived = dict(
        vocab_size=g["vocab_size"],
        dim=g["hidden_size"],
        n_layers=n,
        n_heads=g["num_attention_heads"],
        head_dim=g["head_dim"],
        n_kv_heads=1,
        shared_kv=True,
        max_seq_len=g["max_position_embeddings"],
        norm_eps=g["rms_norm_eps"],
        rope_theta=float(main.get("rope_theta", g["rope_theta"])),
        rope_head_dim=rope_dim,
        tie_embeddings=bool(g["tie_word_embeddings"]),
        init_std=g["initializer_range"],
        rope_factor=float(compress.get("factor", 1.0)) if yarn else 1.0,
        original_seq_len=int(compress.get("original_max_position_embeddings", 0)) if yarn else 0,
        beta_fast=int(compress.get("beta_fast", 32)),
        beta_slow=int(compress.get("beta_slow", 1)),
        q_lora_rank=g["q_lora_rank"],
        o_groups=g["o_groups"],
        o_lora_rank=g["o_lora_rank"],
        attn_sink=True,
        window_size=g["sliding_window"],
        compress_ratios=ratios,
        index_n_heads=g["index_n_heads"],
        index_head_dim=g["index_head_dim"],
        index_topk=g["index_topk"],
        compress_rope_theta=float(compress.get("rope_theta", g["compress_rope_theta"])),
        hc_mult=g["hc_mult"],
        hc_sinkhorn_iters=g["hc_sinkhorn_iters"],
        hc_eps=g["hc_eps"],
        n_routed_experts=g["n_routed_experts"],
        n_shared_experts=1,
        n_activated_experts=g["num_experts_per_tok"],
        moe_inter_dim=g["moe_intermediate_size"],
        n_hash_layers=_hf_hash_layers(hf, n),
        score_func=g["scoring_func"],
        route_scale=float(g["routed_scaling_factor"]),
        swiglu_limit=float(g["swiglu_limit"]),
        n_mtp_layers=0,
        engram_layer_ids=[],
    )
    stash = hf.get("dsv4_config")
    base = ModelConfig().to_dict()
    if isinstance(stash, dict):
        try:
            stashed = ModelConfig.from_dict(stash)
        except UserError:
            stashed = None
        if stashed is not None:
            base = stashed.to_dict()
            # the stash is authoritative when it describes the same transformers model
            if not hf_compatibility(stashed) and _same_hf(config_to_hf(stashed), hf):
                return stashed
    return ModelConfig.from_dict({**base, **derived})


_HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "head_dim",
    "q_lora_rank",
    "o_groups",
    "o_lora_rank",
    "partial_rotary_factor",
    "sliding_window",
    "layer_types",
    "compress_rates",
    "index_n_heads",
    "index_head_dim",
    "index_topk",
    "moe_intermediate_size",
    "n_routed_experts",
    "num_experts_per_tok",
    "mlp_layer_types",
    "scoring_func",
    "routed_scaling_factor",
    "swiglu_limit",
    "hc_mult",
    "hc_sinkhorn_iters",
    "hc_eps",
    "rms_norm_eps",
    "max_position_embeddings",
    "rope_parameters",
    "tie_word_embeddings",
)


def _same_hf(ours: dict, theirs: dict) -> bool:
    return all(ours.get(k) == theirs.get(k) for k in _HF_FIELDS)


# ---- weights ----------------------------------------------------------------------------------


def _expected_state(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of our state dict (tied tensors once), built on the meta device."""
    from dsv4.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = (tuple(t.shape), t.dtype)
    if cfg.tie_embeddings:
        out.pop("head.weight", None)
    return out


def _check_shape(name: str, got: tuple, want: tuple, source: str) -> None:
    if tuple(got) != tuple(want):
        raise UserError(f"{source}: {name} has shape {tuple(got)}, the config implies {tuple(want)}")


def _out_dtype(src_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and src_dtype.is_floating_point else src_dtype


def foreign_plan(src: TensorSource, cfg: ModelConfig, dtype: torch.dtype | None) -> list[Planned]:
    """Plan our checkpoint's tensors from a V4 directory in any dialect (names.foreign_to_ours),
    validated against the shapes cfg implies; FP8/FP4 weights are dequantised (to bf16
    unless `dtype` says otherwise), other tensors keep their dtype and bits."""
    from dsv4.interop.deepseek import index_source, read_ref

    want = _expected_state(cfg)
    refs, skipped = index_source(src, cfg)
    unexpected = [k for k in skipped if not k.startswith(("mtp.", "model.mtp."))]
    unexpected += [
        refs[k].name for k in refs if k not in want and not (cfg.tie_embeddings and k == "head.weight")
    ]
    if unexpected:
        raise UserError(
            f"{src.dir}: unexpected tensor {unexpected[0]} (not part of a DeepseekV4 of this config)"
        )
    plan = []
    for name, (shape, _) in want.items():
        ref = refs.get(name)
        if ref is None:
            layer = N.split_layer(name)
            if name.endswith("ffn.gate.bias") and layer and layer[0] < cfg.n_hash_layers:
                plan.append(Planned(name, shape, torch.float32, lambda s=shape: torch.zeros(s)))
                continue  # hash-routed layers have no selection bias outside our model
            raise UserError(f"{src.dir}: no tensor for {name}")
        sdt = src.dtype(ref.name)
        if ref.scale is not None:
            sdt = torch.bfloat16
        if ref.expert is None:
            got = src.shape(ref.name)
            if ref.scale is None:
                _check_shape(ref.name, got, shape, str(src.dir))
        out_dt = torch.long if name.endswith("tid2eid") else _out_dtype(sdt, dtype)
        plan.append(Planned(name, shape, out_dt, lambda r=ref, d=out_dt: read_ref(src, r).to(d)))
    return plan


def _prepare_out(out: Path, src: Path) -> None:
    if out.resolve() == src.resolve():
        raise UserError(f"--out {out} is the source directory; choose another")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)


def convert_from_hf(
    hf_dir: str | Path, out: str | Path, dtype: torch.dtype | None = None, tokenizer: str | Path | None = None
) -> ModelConfig:
    """A transformers DeepseekV4 directory -> our checkpoint (config.json + model.safetensors)."""
    src_dir, out = Path(hf_dir), Path(out)
    if not src_dir.is_dir():
        raise UserError(f"--from-hf {src_dir} is not a directory")
    from dsv4.interop.formats import external_config

    cfg = external_config(src_dir)  # transformers or DeepSeek config; keeps MTP if the weights have it
    src = TensorSource(src_dir)
    plan = foreign_plan(src, cfg, dtype)
    _prepare_out(out, src_dir)
    write_sharded(out, plan)
    src.close()
    (out / "config.json").write_text(cfg.to_json())
    tok = Path(tokenizer) if tokenizer else src_dir / TOKENIZER
    if tokenizer and not tok.exists():
        raise UserError(f"--tokenizer {tok} does not exist")
    if tok.exists():
        shutil.copyfile(tok, out / TOKENIZER)
    return cfg


DROPPABLE = ("engram", "mtp")


def drop_components(cfg: ModelConfig, drop: list[str]) -> ModelConfig:
    """cfg without the named components (Engram layers, the MTP block)."""
    bad = [d for d in drop if d not in DROPPABLE]
    if bad:
        raise UserError(f"--drop accepts {', '.join(DROPPABLE)}; got {bad[0]!r}")
    changes = {}
    if "engram" in drop:
        changes["engram_layer_ids"] = []
    if "mtp" in drop:
        changes["n_mtp_layers"] = 0
    return dataclasses.replace(cfg, **changes)


def convert_to_hf(
    ckpt: str | Path,
    out: str | Path,
    drop: list[str] | None = None,
    max_shard_bytes: int = 0,
    dtype: torch.dtype | None = None,
) -> dict:
    """Our checkpoint -> a transformers DeepseekV4 directory; returns the HF config written."""
    from dsv4.model.load import load_config, resolve_checkpoint

    ckpt_dir, out = resolve_checkpoint(ckpt), Path(out)
    full = load_config(ckpt_dir)
    lacking = [c for c, on in (("Engram", full.engram_layer_ids), ("MTP", full.n_mtp_layers)) if on]
    drop = list(drop or [])
    cfg = drop_components(full, drop)
    still = [c for c in lacking if c.lower() not in drop]
    if still:
        raise UserError(
            f"transformers' DeepseekV4 has no {' and no '.join(still)}: this model uses "
            f"{', '.join(still)}; pass --drop {','.join(c.lower() for c in lacking)} to convert "
            f"without {'them' if len(still) > 1 else 'it'}"
        )
    hf_cfg = config_to_hf(cfg)
    src = TensorSource(ckpt_dir)
    want = _expected_state(cfg)
    missing = [n for n in want if n not in src]
    if missing:
        raise UserError(f"{ckpt_dir}: tensor {missing[0]} is missing")
    for n in want:
        _check_shape(n, src.shape(n), want[n][0], str(ckpt_dir))
    _prepare_out(out, ckpt_dir)
    # transformers loads DeepSeek's released names directly (its conversion mapping), so the
    # directory is DeepSeek's layout, unquantised, with a transformers config.json
    write_native(
        src,
        cfg,
        out,
        quantize=False,
        max_shard_bytes=max_shard_bytes,
        dtype=dtype,
        skip=lambda n: n not in want,
    )
    src.close()
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    if (ckpt_dir / TOKENIZER).exists():
        shutil.copyfile(ckpt_dir / TOKENIZER, out / TOKENIZER)
    return hf_cfg
