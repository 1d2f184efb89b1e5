"""MoE vs MoE+Engram at equal total parameters: sweep the share of the sparse budget given to Engram.

The Engram paper (arXiv 2601.07372, sec. 3) fixes the sparse parameter budget (routed experts
+ Engram table) and the activated compute, moves a share of it from routed experts into
Engram table rows, and finds a U-shaped validation loss with its best at 20-25% to Engram.
This is a small CPU reproduction on code:

  - corpus: the Python standard library of the running interpreter (sorted files, a few MB),
    split train/val by a hash of the file path; a byte-level BPE trained on the train files
    (Hugging Face `tokenizers`), which also builds the Engram compression map;
  - model: 4 layers, dim 64, 16 routed experts (top-2, width 64) + 1 shared expert;
    share s removes round(16 s) experts per layer and gives exactly those parameters to the
    Engram table (one Engram layer, layer 1, orders 2-3, 4 heads per order, engram_dim 64);
    activated experts stay top-2, so the per-token FLOPs are the same up to Engram's small
    key/value projections (counted in the JSON);
  - training: equal steps and tokens for every point, AdamW (Adam at 5x lr, no decay, for
    the Engram table, as the optimizer groups prescribe), bf16 autocast, aux-loss-free
    balancing after each step; final validation loss on held-out files.

    PYTHONPATH=src python benchmarks/engram_sweep.py [--steps 300 --seeds 0 1]

Writes benchmarks/results/engram_sweep.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

from dsv4.model import build_model

ROOT = Path(__file__).resolve().parent
SHARES = [0.0, 0.125, 0.25, 0.5]


class HFTokenizer:
    """The `.decode(ids)` / `.vocab_size` / `id_to_token` view the Engram compression map takes."""

    def __init__(self, tok):
        self.tok, self.vocab_size = tok, tok.get_vocab_size()

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i):
        return self.tok.id_to_token(i)


def corpus(max_bytes: int) -> tuple[list[str], list[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    train, val, total = [], [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or total > max_bytes:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        total += len(text)
        is_val = int(hashlib.sha1(str(path.relative_to(root)).encode()).hexdigest(), 16) % 10 == 0
        (val if is_val else train).append(text)
    return train, val


def tokenize(vocab: int, max_bytes: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    train, val = corpus(max_bytes)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train, trainer)
    eos = tok.token_to_id("<|eos|>")

    def ids(docs):
        out = []
        for enc in tok.encode_batch(docs):
            out.extend(enc.ids + [eos])
        return np.asarray(out, dtype=np.int64)

    return HFTokenizer(tok), ids(train), ids(val)


def batch(data: np.ndarray, B: int, T: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = rng.integers(0, len(data) - T - 1, size=B)
    x = np.stack([data[s:s + T + 1] for s in starts])
    return torch.from_numpy(x[:, :-1]), torch.from_numpy(x[:, 1:])


def point_config(share: float, a) -> dict:
    D, E, width = a.dim, a.experts, a.expert_width
    per_expert = 3 * D * width
    removed = round(E * share)
    cfg = dict(vocab_size=a.vocab, dim=D, n_layers=a.layers, n_heads=4, head_dim=D // 4, max_seq_len=a.seq,
               n_routed_experts=E - removed, n_activated_experts=2, moe_inter_dim=width, n_shared_experts=1,
               bias_update_speed=1e-3)
    if removed:
        # the freed parameters become table rows: (2 orders x K heads) x vocab rows of engram_dim/(2K)
        freed = removed * per_expert * a.layers
        cfg.update(engram_layer_ids=[1], engram_ngram_orders=[2, 3], engram_n_heads=a.engram_heads,
                   engram_dim=a.engram_dim, engram_vocab_size=freed // a.engram_dim)
    return cfg


def run_point(share, seed, a, tok, train, val) -> dict:
    torch.manual_seed(seed)
    model = build_model("baseline", **point_config(share, a))
    if model.config.engram_layer_ids:
        model.set_engram_tokenizer(tok)
    counts = {"total": 0, "routed_experts": 0, "engram_table": 0, "engram_dense": 0}
    for name, p in model.named_parameters():
        counts["total"] += p.numel()
        if ".experts." in name:
            counts["routed_experts"] += p.numel()
        elif "engram" in name:
            counts["engram_table" if "table" in name else "engram_dense"] += p.numel()
    groups = model.optim_groups()
    dense = [p for _, p in groups["muon"] + groups["adamw"]]
    opts = [torch.optim.AdamW(dense, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)]
    if groups["engram"]:
        opts.append(torch.optim.Adam([p for _, p in groups["engram"]], lr=5 * a.lr, betas=(0.9, 0.95)))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    model.train()
    for step in range(a.steps):
        lr_scale = min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps)))
        for opt in opts:
            for g in opt.param_groups:
                g.setdefault("peak", g["lr"])
                g["lr"] = g["peak"] * lr_scale
        x, y = batch(train, a.batch, a.seq, rng)
        with torch.autocast("cpu", torch.bfloat16):
            loss, stats = model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.after_optimizer_step()
    train_s = time.perf_counter() - t0
    model.eval()
    vrng = np.random.default_rng(12345)  # the same validation batches for every point
    losses = []
    with torch.no_grad():
        for _ in range(a.val_batches):
            x, y = batch(val, a.batch, a.seq, vrng)
            with torch.autocast("cpu", torch.bfloat16):
                losses.append(model.loss(x, y)[1]["lm_loss"])
    return dict(share=share, seed=seed, val_loss=round(float(np.mean(losses)), 4),
                train_loss_last=round(stats["lm_loss"], 4), train_s=round(train_s, 1),
                engram_gate=round(stats["engram_gate_l1"], 3) if "engram_gate_l1" in stats else None,
                n_routed_experts=model.config.n_routed_experts,
                engram_vocab_size=model.config.engram_vocab_size, params=counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--shares", type=float, nargs="+", default=SHARES)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--expert-width", type=int, default=64)
    ap.add_argument("--engram-dim", type=int, default=64)
    ap.add_argument("--engram-heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--val-batches", type=int, default=24)
    ap.add_argument("--corpus-bytes", type=int, default=3_000_000)
    # One thread: on a shared 2-core machine two OpenMP threads spin at barriers and a step
    # takes ~10x longer than with one.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "engram_sweep.json"))
    ap.add_argument("--resume", action="store_true", help="keep the (share, seed) points already in --out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    tok, train, val = tokenize(a.vocab, a.corpus_bytes)
    print(f"corpus: {len(train)} train / {len(val)} val tokens ({time.perf_counter() - t0:.0f}s)", flush=True)
    points = []
    if a.resume and Path(a.out).exists():
        points = json.loads(Path(a.out).read_text())["points"]
    done = {(p["share"], p["seed"]) for p in points}
    for seed in a.seeds:
        for share in a.shares:
            if (share, seed) in done:
                continue
            p = run_point(share, seed, a, tok, train, val)
            points.append(p)
            print(json.dumps(p), flush=True)
    from dsv4.model.engram_hash import compression_map
    cmap_size = int(compression_map(tok, a.vocab).max()) + 1
    shares = sorted({p["share"] for p in points})
    by_share = {s: [p["val_loss"] for p in points if p["share"] == s] for s in shares}
    summary = {str(s): round(float(np.mean(v)), 4) for s, v in by_share.items()}
    out = dict(benchmark="engram_sweep", args=vars(a), seeds=sorted({p["seed"] for p in points}),
               train_tokens=int(len(train)), val_tokens=int(len(val)),
               compressed_vocab=cmap_size, vocab=a.vocab, points=points, mean_val_loss_by_share=summary,
               best_share=float(min(summary, key=summary.get)), threads=torch.get_num_threads(),
               wall_s=round(time.perf_counter() - t0, 1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"mean_val_loss_by_share": summary, "best_share": out["best_share"],
                      "compressed_vocab": cmap_size}))


if __name__ == "__main__":
    main()
