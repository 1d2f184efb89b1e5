"""Attention layer time on CPU (bf16 autocast): V4 window / HCA / CSA vs dense causal attention.

One Attention module per variant, same width (dim, heads, head_dim); forward and
forward+backward time of a [1, T, dim] input, median of a few repeats, ratio to the dense
baseline measured in the same run. Writes benchmarks/results/attention_speed.json.

    PYTHONPATH=src python benchmarks/attention_speed.py [--seq 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dsv4.config import make_config
from dsv4.model.attention import Attention
from dsv4.model.rope import rope_frequencies
from dsv4.model.transformer import ForwardContext

WIDTH = dict(dim=256, n_heads=4, head_dim=64, rope_head_dim=16)
V4 = dict(shared_kv=True, q_lora_rank=128, o_groups=2, o_lora_rank=64, attn_sink=True, window_size=128,
          index_n_heads=4, index_head_dim=32)
VARIANTS = {
    "dense": {},
    "window": dict(V4, compress_ratios=[0]),
    "hca_r128": dict(V4, compress_ratios=[128]),
    "csa_r4_top64": dict(V4, compress_ratios=[4], index_topk=64),
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step(attn: Attention, x: torch.Tensor, freqs: torch.Tensor, grad: bool) -> None:
    T = x.shape[1]
    ctx = ForwardContext(ids=torch.zeros(1, T, dtype=torch.long), freqs=freqs)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
        out = attn(x, ctx)
        if grad:  # output loss plus the indexer KL of CSA layers, as in training
            loss = out.float().square().mean() + sum(ctx.aux_losses.values(), torch.zeros(()))
            loss.backward()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T = args.seq
    results = {}
    for name, over in VARIANTS.items():
        cfg = make_config("baseline", **WIDTH, **over, n_layers=1, max_seq_len=T)
        torch.manual_seed(0)
        attn = Attention(cfg, 0).train()
        x = torch.randn(1, T, cfg.dim, requires_grad=True)
        freqs = rope_frequencies(cfg, T)
        results[name] = dict(forward_s=timed(lambda a=attn, x=x, f=freqs: step(a, x, f, False), args.repeats),
                             fwd_bwd_s=timed(lambda a=attn, x=x, f=freqs: step(a, x, f, True), args.repeats))
        print(name, results[name], flush=True)
    for r in results.values():
        r["forward_vs_dense"] = r["forward_s"] / results["dense"]["forward_s"]
        r["fwd_bwd_vs_dense"] = r["fwd_bwd_s"] / results["dense"]["fwd_bwd_s"]
    report = dict(seq_len=T, threads=args.threads, width=WIDTH, v4=V4, torch=torch.__version__,
                  note="Attention layer only, bf16 autocast, CPU; dense = baseline SDPA causal MHA.",
                  results=results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
