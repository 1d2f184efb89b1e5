"""Decode benchmarks of the inference engine (issue 5), results as JSON.

1. Cached vs recompute decode at 1k context: tokens/s of the engine's cached decode against
   re-running the whole sequence for every new token (what a cacheless sampler does).
2. `lite` single stream: decode tokens/s and time to first token (TTFT) for a 256-token prompt.
3. Batched decode throughput (aggregate tokens/s at batch 1, 4, 8).

    PYTHONPATH=src python benchmarks/decode.py [--threads 2] [--out benchmarks/results/decode.json]

Models are randomly initialised (speed does not depend on the weights); greedy decoding with
`ignore_eos` so every run decodes the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dsv4.infer.engine import Engine
from dsv4.infer.sampling import SamplingParams
from dsv4.model.transformer import build_model


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cached_vs_recompute(preset: str, context: int, new_tokens: int, autocast: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(preset, max_seq_len=context + new_tokens + 8).eval()
    prompt = torch.randint(0, model.config.vocab_size, (context,)).tolist()
    eng = Engine(model, None, max_batch=1, autocast=autocast, prefill_chunk=512)
    params = SamplingParams(max_tokens=new_tokens + 1, temperature=0, ignore_eos=True)

    def cached():
        seq = eng.submit(prompt, params)
        while not seq.generated:  # prefill (not timed below)
            eng.step()
        t = time.perf_counter()
        while not seq.finished:
            eng.step()
        return time.perf_counter() - t

    cached()  # warm-up
    t_cached = min(cached() for _ in range(3))

    def recompute():
        ids = list(prompt)
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
        with torch.inference_mode(), amp:
            for _ in range(new_tokens):
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))

    t_re = timed(recompute, repeat=2)
    return {"preset": preset, "context": context, "new_tokens": new_tokens, "bf16_autocast": autocast,
            "cached_tok_s": new_tokens / t_cached, "recompute_tok_s": new_tokens / t_re,
            "speedup": t_re / t_cached}


def lite_single_stream(prompt_len: int, new_tokens: int, autocast: bool) -> dict:
    torch.manual_seed(0)
    model = build_model("lite", max_seq_len=prompt_len + new_tokens + 8).eval()
    prompt = torch.randint(0, model.config.vocab_size, (prompt_len,)).tolist()
    eng = Engine(model, None, max_batch=1, autocast=autocast, prefill_chunk=prompt_len)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    eng.generate(prompt, params)  # warm-up
    ttfts, rates = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        seq = eng.submit(prompt, params)
        while not seq.generated:
            eng.step()
        t1 = time.perf_counter()
        while not seq.finished:
            eng.step()
        t2 = time.perf_counter()
        ttfts.append(t1 - t0)
        rates.append((len(seq.generated) - 1) / (t2 - t1))
    return {"preset": "lite", "prompt_tokens": prompt_len, "new_tokens": new_tokens,
            "bf16_autocast": autocast, "ttft_ms": 1000 * min(ttfts), "decode_tok_s": max(rates)}


def batched_throughput(preset: str, batch: int, new_tokens: int, autocast: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(preset, max_seq_len=512).eval()
    prompts = [torch.randint(0, model.config.vocab_size, (16 + 7 * i,)).tolist() for i in range(batch)]
    eng = Engine(model, None, max_batch=batch, autocast=autocast)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    eng.generate(prompts, params)
    t = timed(lambda: eng.generate(prompts, params), repeat=2)
    return {"preset": preset, "batch": batch, "bf16_autocast": autocast, "tok_s": batch * new_tokens / t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    ap.add_argument("--quick", action="store_true", help="fewer tokens (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 16 if args.quick else 64
    res = {"machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__},
           "cached_vs_recompute": [], "lite_single_stream": [], "batched": []}
    for ac in (False, True):
        res["cached_vs_recompute"].append(cached_vs_recompute("flagship", 1024, n // 2, ac))
        res["lite_single_stream"].append(lite_single_stream(256, 4 * n, ac))
        print(json.dumps(res["cached_vs_recompute"][-1]), flush=True)
        print(json.dumps(res["lite_single_stream"][-1]), flush=True)
    for b in (1, 4, 8):
        res["batched"].append(batched_throughput("lite", b, n, False))
        print(json.dumps(res["batched"][-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
