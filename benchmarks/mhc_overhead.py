"""mHC overhead: training-step time with hc_mult=4 over hc_mult=1, same model otherwise.

One training step = bf16-autocast forward + loss + backward + AdamW step (the shape of
`dsv4 train pretrain`). The two models are timed alternately (processes or steps, see
"Measurement modes" below) so that load from other processes on a shared machine hits both
alike; the ratio of the median step times is reported. The paper reports 1.067 with fused GPU kernels; unfused
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

Measurement modes. By default (session 4b on; a change of measurement, not of the models)
each model is timed in its own fresh process, as in a real training run: `--rounds` rounds,
each starting one hc4 and one hc1 child process (order alternating per round), each child
timing `--warmup` + `--steps` steps of its one model; the ratio is the median over children
of their median step CPU time, hc4 over hc1. Timing both models in one process (the
earlier default, `--in-process`, steps interleaved A B B A ...) lets one model's allocator
state and compile caches shape the other's, which reads as overhead on whichever comes out
worse. Both children get identical treatment, including `dsv4.train.malloc_tune` (glibc
allocator settings a training run applies too; `--no-malloc-tune` turns it off for both).
Minor page faults per step are recorded alongside.

    python benchmarks/mhc_overhead.py [--preset flagship] [--batch 16] [--steps 6] [--rounds 3]
        [--in-process] [--no-compile-hc] [--no-malloc-tune]
Writes benchmarks/results/mhc_overhead[_compiled_hc|_compiled].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dsv4.model import build_model
from dsv4.model.mhc import set_compile
from dsv4.train.malloc_tune import tune_allocator


def make_step(model, ids, use_compile: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fn = torch.compile(model.loss) if use_compile else model.loss

    def step() -> tuple[float, float, int]:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = fn(ids[:, :-1], ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        w, c = time.perf_counter() - t0, time.process_time() - c0
        return w, c, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    return step


def build(args, ns: tuple[int, ...]) -> tuple[dict, torch.Tensor]:
    """The models for hc_mult in `ns` (same seed, same data) and the batch."""
    models = {}
    for n in ns:
        torch.manual_seed(0)
        models[n] = build_model(args.preset, hc_mult=n)
    cfg = models[ns[0]].config
    T = args.seq_len or cfg.max_seq_len
    torch.manual_seed(1)  # the batch does not depend on which models this process builds
    ids = torch.randint(0, cfg.vocab_size, (args.batch, T + 1))
    return models, ids


def time_models(args, ns: tuple[int, ...]) -> dict:
    """Warm-up + timed steps of each model in `ns`, interleaved A B B A ... when several."""
    models, ids = build(args, ns)
    steps = {n: make_step(m, ids, args.compile) for n, m in models.items()}
    rec = {n: {"wall": [], "cpu": [], "faults": []} for n in ns}
    first: dict[int, float] = {}
    for i in range(args.warmup + args.steps):
        for n in ns if i % 2 == 0 else ns[::-1]:
            w, c, f = steps[n]()
            first.setdefault(n, w)
            if i >= args.warmup:
                rec[n]["wall"].append(w)
                rec[n]["cpu"].append(c)
                rec[n]["faults"].append(f)
            print(f"step {i} hc_mult={n}: wall {w:.3f}s cpu {c:.3f}s faults {f}", file=sys.stderr, flush=True)
    for n in ns:
        rec[n]["first_step_wall_s"] = first[n]
        rec[n]["params"] = sum(p.numel() for p in models[n].parameters())
    rec["seq_len"] = ids.shape[1] - 1
    return rec


def child_argv(args, n: int) -> list[str]:
    argv = [sys.executable, __file__, "--child", str(n), "--preset", args.preset,
            "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--threads", str(args.threads)]
    argv.append("--compile-hc" if args.compile_hc else "--no-compile-hc")
    argv.append("--malloc-tune" if args.malloc_tune else "--no-malloc-tune")
    return argv + (["--compile"] if args.compile else [])


def per_process(args) -> dict:
    """Each model in its own fresh process, `rounds` rounds, order alternating per round."""
    runs = []
    for r in range(args.rounds):
        for n in (4, 1) if r % 2 == 0 else (1, 4):
            load = os.getloadavg()[0]
            out = subprocess.run(child_argv(args, n), check=True, stdout=subprocess.PIPE, text=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            runs.append({"round": r, "hc_mult": n, "load_avg_1min_start": load,
                         "median_cpu_s": statistics.median(rec[str(n)]["cpu"]),
                         "median_wall_s": statistics.median(rec[str(n)]["wall"]),
                         "median_faults": statistics.median(rec[str(n)]["faults"]), **rec})
            print(f"round {r} hc_mult={n}: median cpu {runs[-1]['median_cpu_s']:.3f}s "
                  f"faults {runs[-1]['median_faults']:.0f}", flush=True)
    med = {n: statistics.median(x["median_cpu_s"] for x in runs if x["hc_mult"] == n) for n in (4, 1)}
    med_wall = {n: statistics.median(x["median_wall_s"] for x in runs if x["hc_mult"] == n) for n in (4, 1)}
    faults = {n: statistics.median(x["median_faults"] for x in runs if x["hc_mult"] == n) for n in (4, 1)}
    one = {n: next(x for x in runs if x["hc_mult"] == n)[str(n)] for n in (4, 1)}
    return {"mode": "per_process", "rounds": args.rounds, "seq_len": runs[0]["seq_len"],
            "median_cpu_s": med, "median_wall_s": med_wall, "median_faults_per_step": faults,
            "params": {n: one[n]["params"] for n in (4, 1)}, "runs": runs}


def in_process(args) -> dict:
    rec = time_models(args, (4, 1))
    med = {n: statistics.median(rec[n]["cpu"]) for n in (4, 1)}
    med_wall = {n: statistics.median(rec[n]["wall"]) for n in (4, 1)}
    faults = {n: statistics.median(rec[n]["faults"]) for n in (4, 1)}
    return {"mode": "in_process", "seq_len": rec["seq_len"], "median_cpu_s": med,
            "median_wall_s": med_wall, "median_faults_per_step": faults,
            "params": {n: rec[n]["params"] for n in (4, 1)},
            "first_step_wall_s": {n: rec[n]["first_step_wall_s"] for n in (4, 1)},
            "step_cpu_s": {n: rec[n]["cpu"] for n in (4, 1)},
            "step_wall_s": {n: rec[n]["wall"] for n in (4, 1)},
            "step_faults": {n: rec[n]["faults"] for n in (4, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="flagship")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=0, help="0 -> the preset's max_seq_len")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per model (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="per-process mode: hc4 + hc1 processes per round")
    ap.add_argument("--in-process", action="store_true",
                    help="time both models in one process (the pre-4b measurement)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both whole models")
    ap.add_argument("--compile-hc", action=argparse.BooleanOptionalAction, default=True,
                    help="the fused mHC stream passes and Engram's per-stream gate and conv "
                         "(mhc_fused.py, compiled loops; mhc.set_compile; default on)")
    ap.add_argument("--malloc-tune", action=argparse.BooleanOptionalAction, default=True,
                    help="dsv4.train.malloc_tune in every timed process (as training does)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.compile_hc = args.compile_hc and not args.compile  # --compile already covers the mixing
    if args.child or args.in_process:  # this process times models
        if args.malloc_tune:
            tune_allocator()
        if args.compile_hc:
            set_compile(True)
    if args.child:  # one model; the JSON record is the last stdout line
        print(json.dumps(time_models(args, (args.child,))))
        return

    load_start = os.getloadavg()[0]
    res = in_process(args) if args.in_process else per_process(args)
    med, med_wall = res.pop("median_cpu_s"), res.pop("median_wall_s")
    params = res.pop("params")
    result = {
        "benchmark": "mhc_overhead",
        "mode": res.pop("mode"),
        "preset": args.preset,
        "batch": args.batch,
        "seq_len": res.pop("seq_len"),
        "compile": args.compile,
        "compile_hc": args.compile_hc,
        "malloc_tune": args.malloc_tune,
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "load_avg_1min_start": load_start,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "median_cpu_s_hc4": med[4],
        "median_cpu_s_hc1": med[1],
        "ratio_hc4_over_hc1": med[4] / med[1],
        "ratio_wall_hc4_over_hc1": med_wall[4] / med_wall[1],
        "target": 1.07,
        "params_hc4": params[4],
        "params_hc1": params[1],
        **res,
    }
    suffix = "_compiled" if args.compile else "_compiled_hc" if args.compile_hc else ""
    out = Path(args.out or f"benchmarks/results/mhc_overhead{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    brief = {k: v for k, v in result.items() if not k.startswith("step_") and k != "runs"}
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
