"""Interleaved A/B of `lite` single-stream decode between two source trees (issue 5), as JSON.

On a shared machine the load changes from minute to minute, so "before" and "after" runs
minutes apart compare the load, not the code. Here each round runs, one process after the
other, `decode.py`'s single-stream measurement (256-token prompt, 128 new tokens, bf16
prefill + fp32 decode, 1 thread) with the BEFORE tree's package, then with the AFTER tree's
(eager and, with --compile, `Engine(compile=True)`); the median over rounds is reported.

    python benchmarks/decode_ab.py --before /work/main --after . [--rounds 4] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# Runs in the child with the tree's src/ and benchmarks/ on the path: one measurement.
CHILD = """
import json, os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from decode import single_stream
kw = {"compile": True} if sys.argv[2] == "1" else {}
r = single_stream("lite", 256, 128, "prefill", **kw)
print(json.dumps({"cpu": r["decode_tok_per_cpu_s"], "wall": r["decode_tok_s"], "load": os.getloadavg()[0]}))
"""


def measure(tree: Path, compile: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree / "benchmarks"), "1" if compile else "0"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="a checkout whose src/ is the baseline")
    ap.add_argument("--after", default=".", help="the checkout under test")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="also the AFTER tree with compile=True")
    ap.add_argument("--out", default="benchmarks/results/decode_lite_ab.json")
    args = ap.parse_args()
    arms = {"before": (Path(args.before).resolve(), False), "after": (Path(args.after).resolve(), False)}
    if args.compile:
        arms["after_compiled"] = (Path(args.after).resolve(), True)
    runs: dict[str, list[dict]] = {k: [] for k in arms}
    for _ in range(args.rounds):
        for name, (tree, comp) in arms.items():
            runs[name].append(measure(tree, comp))
            print(name, runs[name][-1], flush=True)
    summary = {name: {"decode_tok_s_median": statistics.median(r["wall"] for r in rs),
                      "decode_tok_per_cpu_s_median": statistics.median(r["cpu"] for r in rs)}
               for name, rs in runs.items()}
    base = summary["before"]["decode_tok_s_median"]
    for s in summary.values():
        s["speedup_vs_before"] = s["decode_tok_s_median"] / base
    res = {"preset": "lite", "prompt_tokens": 256, "new_tokens": 128, "bf16_autocast": "prefill",
           "threads": 1, "before": str(arms["before"][0]), "summary": summary, "runs": runs}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
