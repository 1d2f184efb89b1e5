"""The quickstart's SFT and RL stages (and their held-out eval) on a finished pretrain stage,
for iterating on the post-training recipe without rerunning the whole quickstart.

    PYTHONPATH=src python benchmarks/posttrain_stages.py --base runs/quickstart --out runs/exp1 \\
        --sft-steps 195 --rl-steps 30 --rl lr=5e-4 --results benchmarks/results/posttrain_heldout_s4.json

BASE holds `data/` and `pretrain/` of a quickstart run (symlinked, read-only); the stages are
`dsv4.quickstart.run_sft` / `run_rl` with the default QuickstartConfig, a fixed step count
(the time budget's step count on an idle machine, so that a loaded machine does not shorten
them) and the given overrides; each finished stage is skipped on a rerun. The held-out eval
is benchmarks/posttrain_heldout.py's, merged into --results as NAME-sft / NAME-rl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="a quickstart run dir with data/ and pretrain/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="", help="results key prefix (default: the out dir's name)")
    ap.add_argument("--sft-steps", type=int, default=195)
    ap.add_argument("--rl-steps", type=int, default=30)
    ap.add_argument("--sft", nargs="*", default=[], metavar="KEY=VALUE", help="QuickstartConfig overrides")
    ap.add_argument("--rl", nargs="*", default=[], metavar="KEY=VALUE", help="RL config overrides")
    ap.add_argument("--results", default="benchmarks/results/posttrain_heldout_s4.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from dsv4.data.dataset import DataDir
    from dsv4.quickstart import QuickstartConfig, _done, _finish, run_rl, run_sft

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stage in ("data", "pretrain"):
        if not (out / stage).exists():
            (out / stage).symlink_to(Path(args.base, stage).resolve())
    cfg = QuickstartConfig(out_dir=str(out), progress=False, threads=args.threads)
    for kv in args.sft:
        k, v = kv.split("=", 1)
        setattr(cfg, k, _value(v))
    for kv in args.rl:
        k, v = kv.split("=", 1)
        cfg.rl[k] = _value(v)
    (out / "recipe.json").write_text(json.dumps({"sft_steps": args.sft_steps, "rl_steps": args.rl_steps,
                                                 "sft_lr": cfg.sft_lr, "sft_tasks": cfg.sft_tasks,
                                                 "rl": cfg.rl}, indent=2))
    data = DataDir.open(out / "data")
    for stage, fn in (("sft", lambda: run_sft(cfg, out, data, 0, args.sft_steps)),
                      ("rl", lambda: run_rl(cfg, out, 0, args.rl_steps))):
        if not _done(out / stage):
            t0 = time.perf_counter()
            s = _finish(out / stage, fn())
            print(f"{stage}: {s['step']} steps in {time.perf_counter() - t0:.0f}s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    name = args.name or out.name
    bench = Path(__file__).with_name("posttrain_heldout.py")
    note = f"posttrain_stages.py: {name}: " + json.dumps(json.loads((out / 'recipe.json').read_text()))
    ckpts = [f"{name}-{stage}={out / stage}" for stage in ("sft", "rl")]
    subprocess.run([sys.executable, str(bench), "--ckpt", *ckpts, "--out", args.results,
                    "--threads", str(args.threads), "--note", note], check=True)


if __name__ == "__main__":
    main()
