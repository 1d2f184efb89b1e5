"""Training throughput: tokens/s and MFU of the real train step, per preset, eager vs compiled.

MFU = model FLOPs per token (see dsv4.train.metrics: 6 * N_active + attention) * tokens/s
      / bf16 matmul peak measured in this same run with the same threads.
Random token ids: throughput does not depend on the data. The machine may be shared and
its load drifts, so each timed step is paired with a short timed bf16 matmul burst right
after it, and `mfu` is the median over steps of (step FLOP/s / paired peak). For
reference, `mfu_vs_run_peak` divides by the best of two longer peak measurements taken
before and after all presets. The glibc allocator settings that `dsv4 train pretrain` applies
(`dsv4.train.malloc_tune`) are applied here too, so the step is the one training runs;
`--no-malloc-tune` measures without them.

    python benchmarks/train_throughput.py [--presets tiny,flagship] [--compile both|on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from dsv4.model import build_model
from dsv4.train.config import TrainConfig
from dsv4.train.malloc_tune import tune_allocator
from dsv4.train.metrics import _cpu_name, flops_per_token, measure_peak_flops
from dsv4.train.optim import build_optimizers
from dsv4.train.pretrain import train_step

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"


def bench(preset: str, compile_: bool, steps: int, warmup: int, batch_size: int, peak: float) -> dict:
    torch.manual_seed(0)
    model = build_model(preset)
    cfg = model.config
    seq = cfg.max_seq_len
    opts = build_optimizers(model, TrainConfig(preset=preset, max_steps=1))
    fpt = flops_per_token(model, seq)
    t_compile = 0.0
    if compile_:
        for block in model.layers:
            block.compile()
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    t0 = time.perf_counter()
    for _ in range(warmup):
        train_step(model, opts, x, y, grad_clip=1.0, autocast=True)
    t_compile = time.perf_counter() - t0
    # Pair every timed step with a short timed matmul burst right after it: the load of a
    # shared machine drifts, and a peak measured minutes away would not match the step.
    times, peaks = [], []
    for _ in range(steps):
        t = time.perf_counter()
        train_step(model, opts, x, y, grad_clip=1.0, autocast=True)
        times.append(time.perf_counter() - t)
        peaks.append(measure_peak_flops("cpu", seconds=0.3))
    mfus = sorted(fpt * batch_size * seq / (t * p) for t, p in zip(times, peaks, strict=True))
    times.sort()
    median = times[len(times) // 2]
    tok_s = batch_size * seq / median
    return {
        "preset": preset,
        "compile": compile_,
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": batch_size,
        "seq_len": seq,
        "flops_per_token": fpt,
        "step_ms_median": 1e3 * median,
        "step_ms_best": 1e3 * times[0],
        "tokens_per_s": tok_s,
        "mfu": mfus[len(mfus) // 2],  # median of per-step MFU against the paired peak
        "mfu_vs_run_peak": fpt * tok_s / peak,
        "paired_peak_median": sorted(peaks)[len(peaks) // 2],
        "warmup_s": t_compile,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,flagship")
    ap.add_argument("--compile", choices=["both", "on", "off"], default="both")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--label", default="default",
                    help="name of this measurement; results of other labels in --out are kept")
    ap.add_argument("--malloc-tune", action=argparse.BooleanOptionalAction, default=True,
                    help="apply dsv4.train.malloc_tune as `dsv4 train pretrain` does (default on)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tuned = tune_allocator() if args.malloc_tune else False
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]

    peak_before = measure_peak_flops("cpu", seconds=2.0)
    rows = []
    for preset in args.presets.split(","):
        for c in modes:
            rows.append(bench(preset, c, args.steps, args.warmup, args.batch_size, peak_before))
    peak_after = measure_peak_flops("cpu", seconds=2.0)
    peak = max(peak_before, peak_after)
    for r in rows:
        r["mfu_vs_run_peak"] = r["flops_per_token"] * r["tokens_per_s"] / peak
        print(f"{r['preset']:>9} compile={str(r['compile']):5} {r['params'] / 1e6:6.2f}M params  "
              f"{r['tokens_per_s']:9.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  (warm-up {r['warmup_s']:.1f}s)")
    print(f"bf16 matmul peak: {peak / 1e12:.3f} TFLOP/s ({args.threads} threads)")
    print("\n| preset | params | compile | tokens/s | MFU | step (ms) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {'yes' if r['compile'] else 'no'} | "
              f"{r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% | {r['step_ms_median']:.0f} |")
    run = {
        "machine": {"cpu": _cpu_name(), "threads": args.threads, "torch": torch.__version__},
        "malloc_tune": tuned,
        "load_avg_1min": os.getloadavg()[0],
        "peak_flops_bf16": peak,
        "peak_flops_before_after": [peak_before, peak_after],
        "rows": rows,
    }
    out = Path(args.out)
    result = {"benchmark": "train_throughput", "runs": {}}
    if out.exists():
        result = json.loads(out.read_text())
    result["note"] = "shared machine: numbers are noisy, reported as measured"
    result["runs"][args.label] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
