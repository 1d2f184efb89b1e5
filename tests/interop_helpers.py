"""Tiny V4 configs, randomisers and checkpoint writers shared by the interop tests
(transformers is a dev dependency)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dsv4.interop.deepseek import deepseek_config, write_native
from dsv4.interop.st_io import TensorSource
from dsv4.model.transformer import build_model
from dsv4.train.checkpoint import write_model_files

# every layer type (sliding, CSA, HCA), a hash-routed and routed MoE layers, hc_mult 4, YaRN
HF_TINY = dict(
    vocab_size=256,
    hidden_size=64,
    moe_intermediate_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    head_dim=32,
    q_lora_rank=32,
    num_experts_per_tok=2,
    n_routed_experts=4,
    max_position_embeddings=256,
    layer_types=[
        "sliding_attention",
        "compressed_sparse_attention",
        "heavily_compressed_attention",
        "compressed_sparse_attention",
    ],
    compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
    mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
    sliding_window=16,
    o_groups=2,
    o_lora_rank=16,
    index_n_heads=8,
    index_head_dim=16,
    index_topk=4,
    partial_rotary_factor=0.5,
    hc_mult=4,
    rope_parameters={
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "beta_fast": 32,
        "beta_slow": 1,
    },
    num_nextn_predict_layers=0,
)

# the same model in our config names (plus an MTP block where a test wants one)
OURS_TINY = dict(
    vocab_size=256,
    dim=64,
    n_layers=4,
    n_heads=4,
    head_dim=32,
    n_kv_heads=1,
    shared_kv=True,
    max_seq_len=256,
    rope_head_dim=16,
    q_lora_rank=32,
    o_groups=2,
    o_lora_rank=16,
    attn_sink=True,
    window_size=16,
    compress_ratios=[0, 4, 8, 4],
    index_n_heads=8,
    index_head_dim=16,
    index_topk=4,
    compress_rope_theta=160000.0,
    rope_factor=4.0,
    original_seq_len=64,
    hc_mult=4,
    n_routed_experts=4,
    n_shared_experts=1,
    n_activated_experts=2,
    moe_inter_dim=32,
    n_hash_layers=1,
    route_scale=1.5,
    swiglu_limit=10.0,
    engram_layer_ids=[],
    n_mtp_layers=0,
)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, matrices: bool = True) -> torch.nn.Module:
    """Every parameter and learned buffer random (not the init values), so that a swapped or
    transposed tensor anywhere changes the logits. Names of both ours and transformers'.
    matrices=False keeps the weight matrices at their init (a well-conditioned model)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not matrices:
            continue
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) * 0.08)
        elif name.endswith(("scale", "alpha")):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif "norm" in name:
            p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.8)
        else:  # biases, sinks, ape / position_bias
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    for name, b in model.named_buffers():
        if name.endswith("tid2eid"):
            b.copy_(torch.rand(b.shape[0], 4, generator=g).argsort(-1)[:, : b.shape[1]])
        elif name.endswith(("e_score_correction_bias", "gate.bias")) and "layers.0." not in name:
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model


def hf_model(seed: int = 0):
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    cfg = DeepseekV4Config(**HF_TINY)
    cfg._attn_implementation = "eager"
    return randomize(DeepseekV4ForCausalLM(cfg), seed).eval()


def our_model(seed: int = 0, matrices: bool = True, **overrides):
    torch.manual_seed(seed)
    return randomize(build_model("tiny", **{**OURS_TINY, **overrides}), seed, matrices).eval()


def save_ours(model, path: Path, extra_files: dict | None = None) -> Path:
    """`model` as our checkpoint directory (config.json + weights, plus extra_files)."""
    path.mkdir(parents=True, exist_ok=True)
    write_model_files(path, model.config.to_json(), model.state_dict(), extra_files)
    return path


def write_released(ours: Path, cfg, out: Path, **kw) -> list[str]:
    """Our checkpoint `ours` in DeepSeek's released layout (FP8 / FP4, DeepSeek's names and
    inference config.json) in `out`; kw go to write_native. Returns the shard files."""
    files = write_native(TensorSource(ours), cfg, out, quantize=True, **kw)
    (out / "config.json").write_text(json.dumps(deepseek_config(cfg)))
    return files
