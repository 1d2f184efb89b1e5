"""mHC overhead: training-step time with hc_mult=4 over hc_mult=1, same model otherwise.

One training step = bf16-autocast forward + loss + backward + AdamW step (the shape of
`dsv4 train pretrain`). The two models are timed in interleaved order (A B A B ...) so
that load from other processes on a shared machine hits both alike; the ratio of the
median step times is reported. The paper reports 1.067 with fused GPU kernels; unfused
public ports run ~1.5x. By default the fused stream path is on (`dsv4.model.mhc.set_compile`:
mhc_fused.py's autograd Functions over compiled loops for the mHC passes and Sinkhorn, and
Engram's per-stream gate and conv and MTP's hnorm + h_proj, which both models use; ~2-3 min
of compiling on a cold inductor cache; both models otherwise
eager, the baseline's residual is a bare add); `--no-compile-hc` measures the eager
hand-written autograd path; `--compile` wraps both whole models in torch.compile (very slow
to compile here).
Under bf16 autocast the mHC streams are bf16 between layers (mhc.py), the baseline's
residual is fp32 (the embedding's dtype) as before.

On a shared machine wall-clock time is dominated by other processes, so the headline
ratio uses the process CPU time of each step (single-threaded by default, where CPU time
is compute time); the wall-clock ratio is reported too.

    python benchmarks/mhc_overhead.py [--preset flagship] [--batch 16] [--steps 6] [--no-compile-hc]
Writes benchmarks/results/mhc_overhead[_compiled_hc|_compiled].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dsv4.model import build_model
from dsv4.model.mhc import set_compile


def make_step(model, ids, use_compile: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fn = torch.compile(model.loss) if use_compile else model.loss

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = fn(ids[:, :-1], ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="flagship")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=0, help="0 -> the preset's max_seq_len")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per model (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="torch.compile both whole models")
    ap.add_argument("--compile-hc", action=argparse.BooleanOptionalAction, default=True,
                    help="the fused mHC stream passes and Engram's per-stream gate and conv "
                         "(mhc_fused.py, compiled loops; mhc.set_compile; default on)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_start = os.getloadavg()[0]
    args.compile_hc = args.compile_hc and not args.compile  # --compile already covers the mixing
    if args.compile_hc:
        set_compile(True)
    models = {}
    for n in (4, 1):
        torch.manual_seed(0)
        models[n] = build_model(args.preset, hc_mult=n)
    T = args.seq_len or models[1].config.max_seq_len
    ids = torch.randint(0, models[1].config.vocab_size, (args.batch, T + 1))
    steps = {n: make_step(m, ids, args.compile) for n, m in models.items()}
    wall: dict[int, list[float]] = {4: [], 1: []}
    cpu: dict[int, list[float]] = {4: [], 1: []}
    first: dict[int, float] = {}
    for i in range(args.warmup + args.steps):
        for n in (4, 1) if i % 2 == 0 else (1, 4):
            w, c = steps[n]()
            first.setdefault(n, w)
            if i >= args.warmup:
                wall[n].append(w)
                cpu[n].append(c)
            print(f"step {i} hc_mult={n}: wall {w:.3f}s cpu {c:.3f}s", flush=True)
    med = {n: statistics.median(t) for n, t in cpu.items()}
    med_wall = {n: statistics.median(t) for n, t in wall.items()}
    result = {
        "benchmark": "mhc_overhead",
        "preset": args.preset,
        "batch": args.batch,
        "seq_len": T,
        "compile": args.compile,
        "compile_hc": args.compile_hc,
        "first_step_wall_s_hc4": first[4],
        "first_step_wall_s_hc1": first[1],
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "load_avg_1min_start": load_start,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "step_cpu_s_hc4": cpu[4],
        "step_cpu_s_hc1": cpu[1],
        "step_wall_s_hc4": wall[4],
        "step_wall_s_hc1": wall[1],
        "median_cpu_s_hc4": med[4],
        "median_cpu_s_hc1": med[1],
        "ratio_hc4_over_hc1": med[4] / med[1],
        "ratio_wall_hc4_over_hc1": med_wall[4] / med_wall[1],
        "target": 1.07,
        "params_hc4": sum(p.numel() for p in models[4].parameters()),
        "params_hc1": sum(p.numel() for p in models[1].parameters()),
    }
    suffix = "_compiled" if args.compile else "_compiled_hc" if args.compile_hc else ""
    out = Path(args.out or f"benchmarks/results/mhc_overhead{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("step_")}, indent=2))


if __name__ == "__main__":
    main()
