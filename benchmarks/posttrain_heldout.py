"""Held-out pass@1 of post-training checkpoints in the quickstart's eval protocol, as JSON.

    PYTHONPATH=src python benchmarks/posttrain_heldout.py --ckpt sft=runs/qs/sft rl=runs/qs/rl \\
        --note "RL stage rerun from the quickstart's SFT checkpoint"

For iterating on the RL stage alone (from a finished quickstart's SFT checkpoint) without
rerunning the whole recipe: each NAME=CKPT is evaluated on the balanced held-out set of the
starter families (`heldout_per_family` per family) with the quickstart's settings, sampled
pass@1 (mean of `heldout_samples` samples at temperature 0.6 / top-p 0.95) and greedy
pass@1 side by side, with per-family counts, eval seconds and the machine load. Results are
merged by NAME into --out, so checkpoints can be added as their runs finish.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main() -> None:
    from dsv4.eval.tasks import heldout_pass_at_1
    from dsv4.quickstart import HELDOUT_BATCH, QuickstartConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", nargs="+", required=True, metavar="NAME=CKPT")
    ap.add_argument("--out", default="benchmarks/results/posttrain_heldout.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="", help="how the checkpoints were made")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cfg = QuickstartConfig()
    p = Path(args.out)
    result = json.loads(p.read_text()) if p.exists() else {"checkpoints": {}}
    result.update(protocol=f"{cfg.heldout_per_family} held-out tasks per starter family; pass@1 = mean of "
                  f"{cfg.heldout_samples} samples at temperature 0.6, top-p 0.95; greedy beside it",
                  note=args.note or result.get("note", ""),
                  machine={"platform": platform.platform(), "cpus": os.cpu_count()})
    for item in args.ckpt:
        name, ckpt = item.split("=", 1)
        t0 = time.perf_counter()
        s = heldout_pass_at_1(ckpt, think=cfg.think, max_new_tokens=cfg.eval_new_tokens,
                              difficulty=tuple(cfg.difficulty), families=list(cfg.families),
                              per_family=cfg.heldout_per_family, samples=cfg.heldout_samples,
                              batch=HELDOUT_BATCH)
        result["checkpoints"][name] = {
            "ckpt": ckpt, "pass@1": s["pass@1"], "pass@1_greedy": s["pass@1_greedy"], "n": s["n"],
            "by_family": s["by_family"], "by_family_greedy": s["by_family_greedy"],
            "eval_s": time.perf_counter() - t0, "load_avg": os.getloadavg()[0]}
        print(name, json.dumps({k: v for k, v in result["checkpoints"][name].items() if "family" not in k}))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
