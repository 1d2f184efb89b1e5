"""Training throughput: tokens/s and MFU of the real train step, per preset, eager vs compiled.

MFU = model FLOPs per token (see dsv4.train.metrics: 6 * N_active + attention) * tokens/s
      / bf16 matmul peak measured in this same run with the same threads.
Random token ids: throughput does not depend on the data. The machine may be shared, so
the peak is measured before and after the presets and the best of the two is used (a
busy neighbour lowers both our step rate and the peak; taking the best peak is the
conservative choice for MFU).

    python benchmarks/train_throughput.py [--presets tiny,flagship] [--compile both|on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from dsv4.model import build_model
from dsv4.train.config import TrainConfig
from dsv4.train.metrics import flops_per_token, measure_peak_flops
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
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        train_step(model, opts, x, y, grad_clip=1.0, autocast=True)
        times.append(time.perf_counter() - t)
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
        "mfu": fpt * tok_s / peak,
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]

    peak_before = measure_peak_flops("cpu", seconds=2.0)
    rows = []
    for preset in args.presets.split(","):
        for c in modes:
            rows.append(bench(preset, c, args.steps, args.warmup, args.batch_size, peak_before))
    peak_after = measure_peak_flops("cpu", seconds=2.0)
    peak = max(peak_before, peak_after)
    for r in rows:
        r["mfu"] = r["flops_per_token"] * r["tokens_per_s"] / peak
        print(f"{r['preset']:>9} compile={str(r['compile']):5} {r['params'] / 1e6:6.2f}M params  "
              f"{r['tokens_per_s']:9.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  (warm-up {r['warmup_s']:.1f}s)")
    print(f"bf16 matmul peak: {peak / 1e12:.3f} TFLOP/s ({args.threads} threads)")
    result = {
        "benchmark": "train_throughput",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__},
        "peak_flops_bf16": peak,
        "peak_flops_before_after": [peak_before, peak_after],
        "note": "shared machine: numbers are noisy, reported as measured",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
