"""Grouped (F.grouped_mm over stacked expert weights) vs per-expert loop: MoE fwd+bwd time on CPU.

    PYTHONPATH=src python benchmarks/moe_grouped.py [--experts 16 --inter 256 --tokens 4096]

Runs both paths of `dsv4.model.moe.MoE.routed` on the same weights and inputs under bf16
autocast and prints milliseconds per forward+backward and the ratio.
"""

import argparse
import json
import time

import torch

from dsv4.config import make_config
from dsv4.model.moe import MoE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--inter", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    cfg = make_config("baseline", dim=args.dim, n_routed_experts=args.experts,
                      n_activated_experts=args.topk, moe_inter_dim=args.inter)
    torch.manual_seed(0)
    moe = MoE(cfg, layer_id=1)
    x = torch.randn(1, args.tokens, args.dim, requires_grad=True)
    paths = {"grouped_mm": True, "expert_loop": False}
    best = {name: float("inf") for name in paths}
    # Interleaved rounds, best-of: the machine is shared, so a slow round says little.
    for _ in range(args.rounds):
        for name, grouped in paths.items():
            moe._grouped_mm_ok = (lambda *a, g=grouped: g)
            for i in range(args.reps + 1):
                t0 = time.perf_counter()
                with torch.autocast("cpu", torch.bfloat16):
                    y = moe(x)
                y.float().square().mean().backward()
                if i:  # the first call of a round warms caches
                    best[name] = min(best[name], time.perf_counter() - t0)
    out = {name: round(t * 1000, 2) for name, t in best.items()}
    out["loop_over_grouped"] = round(out["expert_loop"] / out["grouped_mm"], 3)
    print(json.dumps({"config": vars(args), "ms_fwd_bwd": out, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
