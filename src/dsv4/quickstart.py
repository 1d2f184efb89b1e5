"""`dsv4 quickstart`: the whole recipe on the embedded defaults, within a time budget.

Stages (each reused or resumed when run again with the same --out):
  1. data     build the code corpus and tokenizer from this Python's standard library
  2. pretrain train the preset on it for the rest of the budget (atomic checkpoints,
              so an interrupted quickstart resumes where it stopped)
  3. sample   complete a prompt with the trained model
and a summary with the commands to go further. Later stages of the recipe (SFT, RL,
distillation, HumanEval) plug in here as they land.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

# Share of the budget (at most RESERVE_S seconds) kept after training for the final
# evaluation, the checkpoint and the sample.
RESERVE_FRAC, RESERVE_S = 0.25, 30.0


@dataclass
class QuickstartConfig:
    budget_min: float = 10.0
    out_dir: str = "runs/quickstart"
    preset: str = "flagship"
    seed: int = 0
    prompt: str = "def fibonacci(n):\n"
    sample_tokens: int = 120
    progress: bool = True
    threads: int = 0
    # for tests: shrink the run (empty = the preset's own)
    data_sources: list | None = None
    vocab_size: int = 8192
    batch_size: int = 16
    seq_len: int = 0
    overrides: dict | None = None


def quickstart(cfg: QuickstartConfig) -> dict:
    from dsv4.config import make_config
    from dsv4.data.build import build_data
    from dsv4.data.dataset import DataDir
    from dsv4.errors import UserError
    from dsv4.infer.sample import SamplingParams, generate_text
    from dsv4.train.checkpoint import latest_checkpoint
    from dsv4.train.config import TrainConfig
    from dsv4.train.pretrain import pretrain

    if cfg.budget_min <= 0:
        raise UserError(f"--budget must be > 0 minutes (got {cfg.budget_min})")
    make_config(cfg.preset, **(cfg.overrides or {}))  # a bad preset fails before any work
    console = Console(stderr=True, quiet=not cfg.progress, log_path=False)
    out = Path(cfg.out_dir)
    t0 = time.perf_counter()

    console.rule("[bold]1/3 data: code corpus + tokenizer (Python standard library)")
    meta = build_data(cfg.data_sources, out / "data", vocab_size=cfg.vocab_size, progress=cfg.progress)
    data = DataDir.open(out / "data")
    console.log(
        f"{'reused' if meta.get('reused') else 'built'}: {meta['n_train_tokens']:,} train tokens, "
        f"{meta['n_val_tokens']:,} val tokens, vocab {meta['vocab_size']}"
    )

    console.rule(f"[bold]2/3 pretrain {cfg.preset}")
    run_dir = out / "pretrain"
    resume = latest_checkpoint(run_dir) is not None if run_dir.exists() else False
    plan_path = out / "quickstart.json"
    plan = json.loads(plan_path.read_text()) if resume and plan_path.exists() else None
    if plan is None:  # first run: training gets what the data stage and the reserve leave
        reserve_s = min(RESERVE_S, RESERVE_FRAC * 60.0 * cfg.budget_min)
        train_min = max(0.05, cfg.budget_min - (time.perf_counter() - t0 + reserve_s) / 60.0)
    else:  # a rerun keeps the first plan (a finished run stays finished); a larger budget extends it
        train_min = plan["train_budget_min"] + max(0.0, cfg.budget_min - plan["budget_min"])
    plan_path.write_text(
        json.dumps(
            {
                "budget_min": max(cfg.budget_min, plan["budget_min"] if plan else 0),
                "train_budget_min": train_min,
            }
        )
    )
    tcfg = TrainConfig(
        preset=cfg.preset,
        out_dir=str(run_dir),
        data_dir=str(out / "data"),
        overrides=dict(cfg.overrides or {}),
        seed=cfg.seed,
        time_budget_min=train_min,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        eval_every=100,
        save_every=100,
        progress=cfg.progress,
        threads=cfg.threads,
        resume=resume,
    )
    if resume:
        console.log(f"resuming the run in {run_dir} (time already spent there counts against the budget)")
    summary = pretrain(tcfg, data=data)

    console.rule("[bold]3/3 sample")
    params = SamplingParams(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_p=0.95, seed=cfg.seed)
    sample = "".join(generate_text(run_dir, cfg.prompt, params))

    result = {
        "data": {k: meta[k] for k in ("n_train_tokens", "n_val_tokens", "vocab_size")},
        "pretrain": summary,
        "prompt": cfg.prompt,
        "sample": sample,
        "elapsed_s": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def format_summary(result: dict, out_dir: str) -> str:
    s = result["pretrain"]
    loss = f"loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}, " if s["first_loss"] is not None else ""
    lines = [
        "",
        "== dsv4 quickstart: done ==",
        f"model      {s['params'] / 1e6:.2f}M parameters, {s['step']} steps, {s['tokens_seen']:,} tokens "
        f"in {s['elapsed_s'] / 60:.1f} min",
        f"speed      {(s['tokens_per_s'] or 0) / 1e3:.1f}k tokens/s, MFU {100 * (s['mfu'] or 0):.1f}% "
        f"(of a measured bf16 matmul peak)",
        f"quality    {loss}validation {s['val_bpb']:.3f} bits/byte",
        "sample     (temperature 0.8)",
        "",
        result["prompt"] + result["sample"],
        "",
        "next:",
        f"  dsv4 generate --ckpt {out_dir}/pretrain --prompt 'import os' --seed 0",
        f"  dsv4 train pretrain --out {out_dir}/pretrain --resume --time-budget 30   # train longer",
        f"  dsv4 quickstart --budget 30 --out {out_dir}   # resumes every stage",
        f"  metrics: {out_dir}/pretrain/metrics.jsonl; summary: {out_dir}/summary.json",
    ]
    return "\n".join(lines)
