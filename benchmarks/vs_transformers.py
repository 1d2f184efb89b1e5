"""Ours vs transformers' DeepseekV4ForCausalLM on the same V4 models (issue 9), results as JSON.

For each config (no Engram, no MTP -- transformers has neither) one random model is built
in our code, written as our checkpoint, converted with `convert_to_hf` and loaded by
transformers, so both sides run the same weights (the logits are checked to agree first).

1. Training step: forward + backward + AdamW step on a [batch, seq] batch, bf16 autocast
   on both sides (our CPU recipe). Ours includes its indexer KL loss (the DSA training
   signal transformers does not compute). Target: ours >= 1.3x faster.
2. Greedy decode with caches: our inference engine (window ring buffer, compressed
   entries + compressor state, indexer keys) against `generate(use_cache=True)` with
   transformers' V4 cache layers, batch 1, same prompt, same number of new tokens, bf16
   on both (fp32 by default; --decode-bf16 for autocast). Target: ours >= 2x the tokens/s.
   Measured at each of --decode-threads (default 1 and 2), both sides at the same count (batch-1
   decode of these small models is faster single-threaded on both), with our engine prepacked
   as `load_engine` builds it on the CPU (--no-prepack: the module's own weight layout).

fp32_logits_max_abs_diff: with the models' init-scale weights many lightning-indexer scores
are exactly 0 (ReLU), and top-k ties among them are broken differently by the two
implementations (both valid); with index_topk >= the number of blocks the diff is ~2e-7.

    PYTHONPATH=src python benchmarks/vs_transformers.py [--threads 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dsv4.config import make_config
from dsv4.infer.engine import Engine
from dsv4.infer.sampling import SamplingParams
from dsv4.interop.hf import convert_to_hf
from dsv4.model.transformer import Transformer
from dsv4.train.checkpoint import write_model_files

CONFIGS = {
    # tiny: seconds per step, every layer type
    "tiny": ("tiny", dict(engram_layer_ids=[], n_mtp_layers=0, max_seq_len=512)),
    # flagship-sized: our flagship preset's dims (6 layers, dim 256, 8 experts), V4 layout
    "flagship": ("flagship", dict(engram_layer_ids=[], n_mtp_layers=0, max_seq_len=512)),
}


def build_pair(name: str, tmp: Path):
    from transformers import DeepseekV4ForCausalLM

    preset, overrides = CONFIGS[name]
    cfg = make_config(preset, **overrides)
    torch.manual_seed(0)
    ours = Transformer(cfg)
    ck = tmp / f"{name}-ours"
    ck.mkdir()
    write_model_files(ck, cfg.to_json(), ours.state_dict())
    convert_to_hf(ck, tmp / f"{name}-hf")
    hf = DeepseekV4ForCausalLM.from_pretrained(tmp / f"{name}-hf", attn_implementation="eager")
    ids = torch.randint(0, cfg.vocab_size, (1, 64))
    with torch.no_grad():
        diff = (hf.eval()(ids).logits - ours.eval()(ids)).abs().max().item()
    return cfg, ours, hf, diff


def paired_times(a, b, n: int, warmup: int = 1, clock=time.perf_counter) -> tuple[float, float]:
    """Median seconds of a() and b() by `clock`, run alternately so that load changes on a
    shared machine hit both sides alike."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(n):
        for fn, out in ((a, ta), (b, tb)):
            t = clock()
            fn()
            out.append(clock() - t)
    return statistics.median(ta), statistics.median(tb)


def recorded(fn, out: list, clock=time.perf_counter):
    """fn, also appending each call's seconds by `clock` to `out` (a second clock for the same
    runs: wall-clock next to process time, or the reverse)."""
    def run():
        t = clock()
        r = fn()
        out.append(clock() - t)
        return r
    return run


def train_step_times(cfg, ours, hf, batch: int, seq: int, n: int) -> dict:
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    amp = dict(device_type="cpu", dtype=torch.bfloat16)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_h = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    ours.train()
    hf.train()

    def step_ours():
        with torch.autocast(**amp):
            loss, _ = ours.loss(x, y)
        loss.backward()
        opt_o.step()
        opt_o.zero_grad(set_to_none=True)

    def step_hf():
        with torch.autocast(**amp):
            loss = hf(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss  # transformers shifts labels itself
        loss.backward()
        opt_h.step()
        opt_h.zero_grad(set_to_none=True)

    wall_o, wall_h = [], []
    # process CPU time: single-threaded it is the compute time, while wall-clock time on the
    # shared benchmark machine mostly measures the other processes (mhc_overhead.py does the same)
    t_o, t_h = paired_times(recorded(step_ours, wall_o), recorded(step_hf, wall_h), n,
                            clock=time.process_time)
    w_o, w_h = statistics.median(wall_o[1:]), statistics.median(wall_h[1:])  # [0]: warm-up
    return {"batch": batch, "seq": seq, "ours_s": t_o, "transformers_s": t_h, "speedup": t_h / t_o,
            "clock": "process_time", "ours_wall_s": w_o, "transformers_wall_s": w_h,
            "speedup_wall": w_h / w_o}


def decode_rates(cfg, ours, hf, prompt_len: int, new: int, repeat: int, autocast: bool,
                 compile: bool = False, prepack: bool = False) -> dict:
    prompt = torch.randint(0, cfg.vocab_size, (prompt_len,)).tolist()
    # a copy: prepacking re-lays the parameters, and the training comparison wants them untouched
    eng = Engine(copy.deepcopy(ours).eval(), None, max_batch=1, autocast=autocast, compile=compile,
                 prepack=prepack)
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)

    def run_ours():
        return eng.generate([prompt], params)[0].token_ids

    hf.eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0

    def run_hf():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                use_cache=True,
            )
        return out[0, prompt_len:].tolist()

    t_warm = time.perf_counter()
    run_ours()  # with compile: compiling happens here
    t_warm = time.perf_counter() - t_warm
    cpu_o, cpu_h = [], []  # process CPU time of the same runs: at 1 thread the compute itself
    t_o, t_h = paired_times(recorded(run_ours, cpu_o, time.process_time),
                            recorded(run_hf, cpu_h, time.process_time), repeat)
    c_o, c_h = statistics.median(cpu_o[1:]), statistics.median(cpu_h[1:])  # [0]: warm-up
    a, b = run_ours(), run_hf()
    same = sum(1 for i, j in zip(a, b, strict=False) if i == j)
    return {
        "prompt": prompt_len,
        "new_tokens": new,
        "ours_tok_s": new / t_o,
        "transformers_tok_s": new / t_h,
        "speedup": t_h / t_o,
        "speedup_cpu": c_h / c_o,  # process time: on a loaded machine the steadier clock at 1 thread
        "same_greedy_prefix": next((i for i, (p, q) in enumerate(zip(a, b, strict=False)) if p != q), new),
        "same_tokens": same,
        "autocast_bf16": autocast,
        "compile": compile,
        "prepack": prepack,
        "ours_first_run_s": t_warm,
        "note": "end-to-end generate (prefill included) on both sides",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="tiny,flagship")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--decode-bf16",
        action="store_true",
        help="bf16 autocast for decode too (default fp32: "
        "batch-1 decode of these small models is overhead-bound and casts only add cost)",
    )
    ap.add_argument("--parts", default="decode,train", help="which comparisons to run")
    ap.add_argument("--compile", action="store_true", help="our engine with compile=True (decode)")
    ap.add_argument("--prepack", action=argparse.BooleanOptionalAction, default=True,
                    help="our engine with prepack=True (matmul weights stored [in, out], projections "
                    "of one input packed; decode), as load_engine does on the CPU")
    ap.add_argument("--decode-threads", default="1,2",
                    help="thread counts the decode comparison runs at (both sides at each)")
    ap.add_argument("--decode-repeat", type=int, default=5,
                    help="alternating generate pairs per decode point")
    ap.add_argument("--out", default="benchmarks/results/vs_transformers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    results = {
        "machine": platform.processor() or platform.machine(),
        "load_avg_1min_start": os.getloadavg()[0],
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "configs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            cfg, ours, hf, diff = build_pair(name, Path(tmp))
            r = {"params": sum(p.numel() for p in ours.parameters()), "fp32_logits_max_abs_diff": diff}
            # decode first: the training steps change the weights (differently on each side)
            if "decode" in args.parts:
                r["decode"] = []
                for threads in [int(t) for t in args.decode_threads.split(",")]:
                    torch.set_num_threads(threads)
                    d = decode_rates(cfg, ours, hf, prompt_len=64, new=64, repeat=args.decode_repeat,
                                     autocast=args.decode_bf16, compile=args.compile, prepack=args.prepack)
                    r["decode"].append({"threads": threads, **d, "load_avg_1min": os.getloadavg()[0]})
                    print(name, "decode", r["decode"][-1], flush=True)
                torch.set_num_threads(args.threads)
            if "train" in args.parts:
                r["train_step"] = train_step_times(cfg, ours, hf, batch=4, seq=256, n=args.steps)
                print(name, "train", r["train_step"], flush=True)
            results["configs"][name] = r
    results["load_avg_1min_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
