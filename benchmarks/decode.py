"""Decode benchmarks of the inference engine (issue 5), results as JSON.

1. Cached vs recompute decode at 1k context: tokens/s of the engine's cached decode against
   re-running the whole sequence for every new token (what a cacheless sampler does), for
   `flagship` (every V4 component) and `baseline` (plain transformer).
2. Single stream: decode tokens/s and time to first token (TTFT) for a 256-token prompt, for
   `lite` (V4) and a plain transformer of lite's dims (the architecture's per-token cost).
3. MTP self-speculative vs plain decode on `lite` (tokens/s, acceptance). Random weights
   accept almost nothing: pass `--ckpt` for a trained model to measure real acceptance.
4. Batched decode throughput (aggregate tokens/s at batch 1, 4, 8).
5. KV-cache bytes per token at 128k for `flagship` vs a bf16 dense GQA-8 baseline of the same
   dims (layers, head_dim), from the cache layout (`dsv4.infer.cache.cache_bytes`).
6. Our engine vs Hugging Face `transformers` `generate` (if installed) on a LlamaForCausalLM of
   the `baseline` dims and parameter count (random init, greedy, KV cache on): tokens/s ratios
   in matched pairs, fp32 vs fp32 and bf16 weights vs bf16 weights (and our generic path).
7. `--long`: prefill time of `flagship` at 16k, 32k and 64k tokens (chunked prefill), the ratio
   64k / 16k for 4x the tokens (a quadratic-attention model would be ~16x; linear is 4x);
   with `--compile`, Engine(compile=True) (compiled index scores) after an untimed warm-up.

    PYTHONPATH=src python benchmarks/decode.py [--threads 2] [--long] [--compile] [--only S1,S2] [--out F]

Models are randomly initialised (speed does not depend on the weights); greedy decoding with
`ignore_eos` so every run decodes the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from dsv4.config import make_config
from dsv4.infer.cache import cache_bytes
from dsv4.infer.engine import Engine
from dsv4.infer.sampling import SamplingParams
from dsv4.infer.speculative import MTPDrafter
from dsv4.model.transformer import build_model


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


LITE_PLAIN = dict(vocab_size=8192, dim=128, n_layers=3, n_heads=4, head_dim=32)  # lite dims, switches off
# Diagnostic: `lite` with unconstrained hyper-connections (no Sinkhorn, same ops otherwise): an upper
# bound of what a free Sinkhorn would give (not a model to serve: H_res is not doubly stochastic).
LITE_NO_SINKHORN = dict(hc_unconstrained=True)


def make(preset: str, max_len: int):
    torch.manual_seed(0)
    if preset == "lite-plain":
        return build_model("baseline", max_seq_len=max_len, **LITE_PLAIN).eval()
    if preset == "lite-nosinkhorn":
        return build_model("lite", max_seq_len=max_len, **LITE_NO_SINKHORN).eval()
    return build_model(preset, max_seq_len=max_len).eval()


def cached_vs_recompute(preset: str, context: int, new_tokens: int, autocast: bool) -> dict:
    model = make(preset, context + new_tokens + 8)
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


def single_stream(preset: str, prompt_len: int, new_tokens: int, autocast: bool,
                  compile: bool = False) -> dict:
    model = make(preset, prompt_len + new_tokens + 8)
    prompt = torch.randint(0, model.config.vocab_size, (prompt_len,)).tolist()
    eng = Engine(model, None, max_batch=1, autocast=autocast, prefill_chunk=prompt_len, compile=compile)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    t_warm = time.perf_counter()
    eng.generate(prompt, params)  # warm-up (with compile: includes compiling)
    t_warm = time.perf_counter() - t_warm
    ttfts, rates, cpu_ttfts, cpu_rates = [], [], [], []
    for _ in range(3):
        # wall clock, and this process's CPU time: on a shared, oversubscribed machine the
        # latter estimates what one dedicated core would give (1 torch thread)
        t0, c0 = time.perf_counter(), time.process_time()
        seq = eng.submit(prompt, params)
        while not seq.generated:
            eng.step()
        t1, c1 = time.perf_counter(), time.process_time()
        while not seq.finished:
            eng.step()
        t2, c2 = time.perf_counter(), time.process_time()
        ttfts.append(t1 - t0)
        cpu_ttfts.append(c1 - c0)
        rates.append((len(seq.generated) - 1) / (t2 - t1))
        cpu_rates.append((len(seq.generated) - 1) / max(c2 - c1, 1e-9))
    return {"preset": preset, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
            "bf16_autocast": autocast, "ttft_ms": 1000 * min(ttfts), "decode_tok_s": max(rates),
            "ttft_cpu_ms": 1000 * min(cpu_ttfts), "decode_tok_per_cpu_s": max(cpu_rates),
            "compile": compile, "warmup_s": t_warm}


def speculative(model, prompt: list[int], new_tokens: int, autocast: bool) -> dict:
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    plain = Engine(model, None, max_batch=1, autocast=autocast)
    spec = Engine(model, None, max_batch=1, autocast=autocast, draft_fn=MTPDrafter(), num_draft=1)
    plain.generate(prompt, params)
    t_plain = timed(lambda: plain.generate(prompt, params), repeat=2)
    spec.generate(prompt, params)
    spec.spec_stats.update(drafted=0, accepted=0, steps=0)
    t_spec = timed(lambda: spec.generate(prompt, params), repeat=2)
    st = spec.spec_stats
    return {"bf16_autocast": autocast, "plain_tok_s": new_tokens / t_plain, "spec_tok_s": new_tokens / t_spec,
            "speedup": t_plain / t_spec, "acceptance": st["accepted"] / max(st["drafted"], 1)}


def kv_bytes_per_token(preset: str, context: int) -> dict:
    cfg = make_config(preset)
    ours = cache_bytes(cfg, context)["total"] / context
    gqa8 = cfg.n_layers * 2 * 8 * cfg.head_dim * 2  # K and V, 8 KV heads, bf16, every token
    return {"preset": preset, "context": context, "bytes_per_token": ours, "gqa8_bf16_bytes_per_token": gqa8,
            "ratio": ours / gqa8}


def batched_throughput(preset: str, batch: int, new_tokens: int, autocast: bool) -> dict:
    model = make(preset, 512)
    prompts = [torch.randint(0, model.config.vocab_size, (16 + 7 * i,)).tolist() for i in range(batch)]
    eng = Engine(model, None, max_batch=batch, autocast=autocast)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    eng.generate(prompts, params)
    t = timed(lambda: eng.generate(prompts, params), repeat=2)
    return {"preset": preset, "batch": batch, "bf16_autocast": autocast, "tok_s": batch * new_tokens / t}


def vs_transformers(prompt_len: int, new_tokens: int, compile: bool = False) -> dict | None:
    """Our engine on `baseline` vs HF `generate` on the same-dims Llama (greedy), in matched pairs:
    fp32 weights on both sides, and bf16 weights on both sides (ours: `weight_dtype=bf16` for the
    decode GEMVs with an fp32 stream/cache and bf16-autocast prefill; HF: `model.to(bf16)`).
    Also our generic cached path (`fast_decode=False`, the engine before plain_decode.py)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    import copy

    ours = make("baseline", prompt_len + new_tokens + 8)
    c = ours.config
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim,
                         num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                         num_key_value_heads=c.n_heads, head_dim=c.head_dim, rms_norm_eps=c.norm_eps,
                         rope_theta=c.rope_theta, max_position_embeddings=prompt_len + new_tokens + 8,
                         tie_word_embeddings=c.tie_embeddings, pad_token_id=0, eos_token_id=None)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_cfg).eval()
    hf16 = copy.deepcopy(hf).to(torch.bfloat16)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    prompt = torch.randint(0, c.vocab_size, (prompt_len,)).tolist()
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    ids = torch.tensor([prompt])

    def engine_run(**kw):
        eng = Engine(ours, None, max_batch=1, prefill_chunk=prompt_len, compile=compile, **kw)
        return lambda: eng.generate(prompt, params)

    def hf_run(model):
        def run():
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, use_cache=True)
            assert out.shape[1] == prompt_len + new_tokens
        return run

    runs = {"ours_fp32": engine_run(autocast=False), "hf_fp32": hf_run(hf),
            "ours_bf16": engine_run(autocast="prefill", weight_dtype=torch.bfloat16), "hf_bf16": hf_run(hf16),
            "ours_generic_fp32": engine_run(autocast=False, fast_decode=False)}
    best = dict.fromkeys(runs, float("inf"))
    best_cpu = dict.fromkeys(runs, float("inf"))
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(5):  # interleaved: every variant sees the same machine load
        for name, fn in runs.items():
            t, cpu = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
            best_cpu[name] = min(best_cpu[name], time.process_time() - cpu)
    import transformers
    tok_s = {f"{k}_tok_s": new_tokens / v for k, v in best.items()}
    return {"preset": "baseline", "params_ours": n_ours, "params_hf_llama": n_hf,
            "transformers": transformers.__version__, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
            **tok_s, "ratio": best["hf_fp32"] / best["ours_fp32"],
            "ratio_bf16": best["hf_bf16"] / best["ours_bf16"],
            "ratio_cpu": best_cpu["hf_fp32"] / best_cpu["ours_fp32"],
            "ratio_bf16_cpu": best_cpu["hf_bf16"] / best_cpu["ours_bf16"],
            "ratio_generic": best["hf_fp32"] / best["ours_generic_fp32"],
            "ratios_note": "tokens/s of generate() including the 256-token prefill; ratio = fp32 vs fp32, "
                           "ratio_bf16 = bf16 weights vs bf16 weights, ratio_generic = our generic path "
                           "(fast_decode=False) vs HF fp32; *_cpu from process CPU time",
            "compile": compile, "load_avg_after": os.getloadavg()}


def long_prefill(preset: str, lengths: tuple[int, ...], chunk: int, compile: bool = False) -> dict:
    """Chunked-prefill seconds at each length (one run each: they are long). With `compile`
    (Engine(compile=True): the CSA index scores through inductor) one untimed 8k prefill first
    compiles the kernel, so that no length's time includes compiling."""
    model = make(preset, max(lengths) + 8)
    secs, cpu, load = {}, {}, {}
    if compile:
        t_warm = time.perf_counter()
        Engine(model, None, max_batch=1, prefill_chunk=chunk, compile=True).generate(
            torch.randint(0, model.config.vocab_size, (8192,)).tolist(),
            SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
        t_warm = time.perf_counter() - t_warm
    for n in lengths:
        prompt = torch.randint(0, model.config.vocab_size, (n,)).tolist()
        eng = Engine(model, None, max_batch=1, prefill_chunk=chunk, compile=compile)
        t, c = time.perf_counter(), time.process_time()
        eng.generate(prompt, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
        secs[n], cpu[n] = time.perf_counter() - t, time.process_time() - c
        load[n] = os.getloadavg()  # at the end of this length's run
        print(f"prefill {n} tokens: {secs[n]:.1f} s", flush=True)
        del eng  # free this length's caches before the next
    lo, hi = min(lengths), max(lengths)
    return {"preset": preset, "prefill_chunk": chunk, "seconds": secs, "cpu_seconds": cpu,
            "tokens_ratio": hi / lo, "time_ratio": secs[hi] / secs[lo], "cpu_time_ratio": cpu[hi] / cpu[lo],
            "load_avg_after": load, "compile": compile, **({"warmup_s": t_warm} if compile else {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    ap.add_argument("--quick", action="store_true", help="fewer tokens (a smoke run)")
    ap.add_argument("--ckpt", default=None, help="a trained checkpoint for the speculative run")
    ap.add_argument("--long", action="store_true", help="also the 16k -> 64k prefill (minutes)")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    ap.add_argument("--compile", action="store_true",
                    help="single_stream / vs_transformers / long_prefill with Engine(compile=True) "
                         "(process-wide: run it apart from the eager numbers); warmup_s includes compiling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 16 if args.quick else 64
    machine = {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__,
               "compile": args.compile,
               "load_avg_at_start": os.getloadavg()}  # a shared machine makes the numbers noisy
    res = {"machine": machine,
           "cached_vs_recompute": [], "single_stream": [], "speculative": [], "batched": [], "kv_cache": [],
           "vs_transformers": [], "long_prefill": []}

    def log(key, item):
        res[key].append(item)
        print(key, json.dumps(item), flush=True)

    def want(section: str) -> bool:
        return not args.only or section in args.only.split(",")

    for preset in ("flagship", "baseline") if want("cached_vs_recompute") else ():
        log("cached_vs_recompute", cached_vs_recompute(preset, 1024, n // 2, False))
    for preset in ("lite", "lite-plain") if want("single_stream") else ():
        for ac in (False, True, "prefill"):  # fp32, bf16 everywhere, bf16 prefill + fp32 decode
            log("single_stream", single_stream(preset, 256, 2 * n, ac, args.compile))
    if want("single_stream"):
        log("single_stream", single_stream("lite-nosinkhorn", 256, 2 * n, "prefill", args.compile))
    if not want("speculative"):
        pass
    elif args.ckpt:
        from dsv4.model.load import load_model
        model = load_model(args.ckpt)
    else:
        model = make("lite", 512)
    if want("speculative"):
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, model.config.vocab_size, (64,), generator=gen).tolist()
        log("speculative", dict(speculative(model, prompt, 2 * n, False), ckpt=args.ckpt or "random lite"))
    for b in (1, 4, 8) if want("batched") else ():
        log("batched", batched_throughput("lite", b, n, False))
    for preset in ("flagship", "v4-flash") if want("kv_cache") else ():
        log("kv_cache", kv_bytes_per_token(preset, 128 * 1024))
    hf = vs_transformers(256, 2 * n, args.compile) if want("vs_transformers") else None
    if hf is not None:
        log("vs_transformers", hf)
    if args.long and want("long_prefill"):
        log("long_prefill", long_prefill("flagship", (16 * 1024, 32 * 1024, 64 * 1024), 2048, args.compile))
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
