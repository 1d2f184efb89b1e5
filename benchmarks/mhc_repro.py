"""Small mHC reproduction: baseline vs unconstrained HC vs mHC at equal steps on the code corpus.

Same model, data order, optimiser and steps; only the residual differs:
  baseline : hc_mult = 1 (plain residual)
  hc       : hc_mult = 4, hc_unconstrained = true (H_res used raw, no Sinkhorn)
  mhc      : hc_mult = 4 (H_res = Sinkhorn-Knopp, 20 iterations), bias init 0 (J/n)
  mhc_id   : the same with H_res's bias initialised near the identity (hc_res_init = 4)
Reports the final validation loss and the composite Amax gain (peak over start layers of
the token-averaged max |row sum| / |column sum| of the product of H_res, mHC paper Fig. 3/7;
paper at 27B: ~3000 for HC, ~1.6 for mHC). Tokens come from a built data directory
(`dsv4 data build`: meta.json + train.bin/val.bin, read here as raw memmaps).

    python benchmarks/mhc_repro.py --data runs/data [--steps 150] [--batch 8] [--seq-len 128]
Writes benchmarks/results/mhc_repro.json and mhc_repro.png (left: training loss,
right: forward Amax gain, log scale; blue baseline, orange HC, green mHC, red mHC-id).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from dsv4.model import build_model

VARIANTS = {
    "baseline": dict(hc_mult=1),
    "hc": dict(hc_mult=4, hc_unconstrained=True),
    "mhc": dict(hc_mult=4),
    "mhc_id": dict(hc_mult=4, hc_res_init=4.0),  # H_res init near the identity (diag 0.95)
}
MODEL = dict(vocab_size=8192, dim=128, n_layers=8, n_heads=4, head_dim=32, max_seq_len=128)


def open_tokens(data: Path) -> tuple[np.ndarray, np.ndarray, int]:
    meta = json.loads((data / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(data / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(data / "val.bin", dtype=dtype, mode="r")
    return train, val, int(meta["vocab_size"])


def batch(tokens: np.ndarray, rng: np.random.Generator, b: int, t: int) -> torch.Tensor:
    starts = rng.integers(0, len(tokens) - t - 1, size=b)
    return torch.from_numpy(np.stack([tokens[s:s + t + 1].astype(np.int64) for s in starts]))


def run(name: str, args, train, val, vocab) -> dict:
    torch.manual_seed(args.seed)
    model = build_model("baseline", **{**MODEL, "vocab_size": vocab, "max_seq_len": args.seq_len},
                        **VARIANTS[name])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(args.seed)  # same data order for every variant
    log = []
    t0 = time.process_time()
    for step in range(args.steps):
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        lr = args.lr * min(1.0, (step + 1) / 20) * cosine
        for g in opt.param_groups:
            g["lr"] = lr
        ids = batch(train, rng, args.batch, args.seq_len)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, stats = model.loss(ids[:, :-1], ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        log.append({"step": step, "loss": stats["lm_loss"], "grad_norm": gnorm,
                    "amax_fwd": stats.get("mhc_amax_fwd", 1.0), "amax_bwd": stats.get("mhc_amax_bwd", 1.0)})
        if step % 25 == 0 or step == args.steps - 1:
            print(f"{name} step {step}: loss {stats['lm_loss']:.3f} amax {log[-1]['amax_fwd']:.3g}/"
                  f"{log[-1]['amax_bwd']:.3g}", flush=True)
    cpu_s = time.process_time() - t0
    model.eval()
    vrng = np.random.default_rng(1234)  # the same validation batches for every variant
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [model.loss(v[:, :-1], v[:, 1:])[0].item()
                  for v in (batch(val, vrng, args.batch, args.seq_len) for _ in range(args.val_batches))]
    return {"val_loss": float(np.mean(losses)),
            "final_train_loss": float(np.mean([r["loss"] for r in log[-10:]])),
            "amax_fwd_final": log[-1]["amax_fwd"], "amax_bwd_final": log[-1]["amax_bwd"],
            "amax_fwd_peak": max(r["amax_fwd"] for r in log),
            "amax_bwd_peak": max(r["amax_bwd"] for r in log),
            "train_cpu_s": cpu_s, "params": sum(p.numel() for p in model.parameters()), "log": log}


def plot(path: Path, logs: dict[str, list[dict]]) -> None:
    """Training loss (left) and forward composite Amax gain on a log scale (right), per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_gain) = plt.subplots(1, 2, figsize=(11, 4))
    for name, log in logs.items():
        steps = [r["step"] for r in log]
        ax_loss.plot(steps, [r["loss"] for r in log], label=name)
        ax_gain.plot(steps, [r["amax_fwd"] for r in log], label=name)
    ax_loss.set(xlabel="step", ylabel="training loss (nats/token)", title="loss")
    ax_gain.set(xlabel="step", ylabel="composite Amax gain (forward)", title="mHC gain", yscale="log")
    ax_loss.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/data")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--val-batches", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="benchmarks/results/mhc_repro.json")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the saved JSON")
    args = ap.parse_args()
    if args.plot_only:
        out = Path(args.out)
        plot(out.with_suffix(".png"), json.loads(out.read_text())["logs"])
        return
    torch.set_num_threads(args.threads)
    train, val, vocab = open_tokens(Path(args.data))
    results = {name: run(name, args, train, val, vocab) for name in args.variants.split(",")}
    summary = {k: {m: v for m, v in r.items() if m != "log"} for k, r in results.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "mhc_repro", "model": MODEL, "args": vars(args),
                               "load_avg_1min": os.getloadavg()[0], "summary": summary,
                               "logs": {k: r["log"] for k, r in results.items()}}, indent=1))
    plot(out.with_suffix(".png"), {k: r["log"] for k, r in results.items()})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
