"""Numerical parity of our V4 attention with transformers' DeepseekV4Attention (when installed).

Builds a small config with one window-only, one CSA and one HCA layer, YaRN on the
compressed layers, copies random weights across (name map below — the one a full
checkpoint converter needs for attention), and compares layer outputs in fp32 on a
sequence that fills several compressed blocks. transformers is NOT a project dependency:
this is a one-off check for issue 9, not a test. Writes benchmarks/results/attention_parity_hf.json.

    PYTHONPATH=src python benchmarks/attention_parity_hf.py [SEQ_LEN]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dsv4.config import make_config
from dsv4.model.attention import Attention
from dsv4.model.rope import rope_frequencies
from dsv4.model.transformer import ForwardContext

# ours -> transformers (inside DeepseekV4Attention); the indexer sits under the compressor there
NAME_MAP = {
    "wq_a.weight": "q_a_proj.weight", "q_norm.weight": "q_a_norm.weight", "wq_b.weight": "q_b_proj.weight",
    "wkv.weight": "kv_proj.weight", "kv_norm.weight": "kv_norm.weight", "wo_a.weight": "o_a_proj.weight",
    "wo_b.weight": "o_b_proj.weight", "attn_sink": "sinks",
    "compressor.wkv.weight": "compressor.kv_proj.weight",
    "compressor.wgate.weight": "compressor.gate_proj.weight",
    "compressor.ape": "compressor.position_bias", "compressor.norm.weight": "compressor.kv_norm.weight",
    "indexer.wq_b.weight": "compressor.indexer.q_b_proj.weight",
    "indexer.weights_proj.weight": "compressor.indexer.scorer.weights_proj.weight",
    "indexer.compressor.wkv.weight": "compressor.indexer.kv_proj.weight",
    "indexer.compressor.wgate.weight": "compressor.indexer.gate_proj.weight",
    "indexer.compressor.ape": "compressor.indexer.position_bias",
    "indexer.compressor.norm.weight": "compressor.indexer.kv_norm.weight",
}

OURS = dict(dim=64, n_layers=3, n_heads=4, head_dim=32, rope_head_dim=16, q_lora_rank=48, shared_kv=True,
            attn_sink=True, o_groups=2, o_lora_rank=24, window_size=8, compress_ratios=[0, 4, 16],
            index_n_heads=8, index_head_dim=24, index_topk=5, rope_theta=10000.0,
            compress_rope_theta=160000.0, rope_factor=4.0, original_seq_len=128, max_seq_len=512,
            vocab_size=256)


def main() -> None:
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import (
        DeepseekV4Attention,
        DeepseekV4RotaryEmbedding,
    )

    cfg = make_config("baseline", **OURS)
    hf_cfg = DeepseekV4Config(
        vocab_size=256, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, head_dim=32,
        q_lora_rank=48, o_groups=2, o_lora_rank=24, sliding_window=8, index_n_heads=8, index_head_dim=24,
        index_topk=5, partial_rotary_factor=16 / 32, rope_theta=10000.0, compress_rope_theta=160000.0,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 16},
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                         "beta_fast": 32, "beta_slow": 1},
        max_position_embeddings=512, rms_norm_eps=1e-6, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32)
    hf_cfg._attn_implementation = "eager"
    B, T = 2, int(sys.argv[1]) if len(sys.argv) > 1 else 300  # 300: several query chunks
    torch.manual_seed(0)
    x = torch.randn(B, T, 64)
    pos = torch.arange(T).unsqueeze(0).expand(B, -1)
    rot = DeepseekV4RotaryEmbedding(hf_cfg)
    pe = {k: rot(x, position_ids=pos, layer_type=k) for k in ("main", "compress")}
    i, j = torch.arange(T).view(-1, 1), torch.arange(T).view(1, -1)
    allowed = (j <= i) & (i - j < 8)
    mask = torch.zeros(B, 1, T, T).masked_fill(~allowed, float("-inf"))
    ctx = ForwardContext(ids=torch.zeros(B, T, dtype=torch.long), freqs=rope_frequencies(cfg, T))
    report = {}
    for layer, name in enumerate(["window", "csa", "hca"]):
        ours = Attention(cfg, layer).eval()
        theirs = DeepseekV4Attention(hf_cfg, layer).eval()
        with torch.no_grad():
            for p in ours.parameters():
                p.normal_(0, 0.3) if p.dim() >= 2 else p.uniform_(0.5, 1.5)
            hf_params = dict(theirs.named_parameters())
            assert set(NAME_MAP[n] for n, _ in ours.named_parameters()) == set(hf_params), name
            for n, p in ours.named_parameters():
                hf_params[NAME_MAP[n]].copy_(p)
            mine = ours(x, ctx)
            ref = theirs(x, pe, pos, mask)[0]
        err = (mine - ref).abs().max().item()
        report[name] = dict(max_abs_err=err, max_abs_ref=ref.abs().max().item())
        print(name, report[name])
    out = Path(__file__).parent / "results" / "attention_parity_hf.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(seq_len=T, config=OURS, results=report), indent=2))


if __name__ == "__main__":
    main()
