"""`dsv4 train ...`: training stages (pretrain now; sft, rl, distill register here later)."""

from __future__ import annotations

import argparse

from dsv4.cli._common import command_group


def register(sub: argparse._SubParsersAction) -> None:
    tsub = command_group(sub, "train", "training stages: pretrain, sft, rl, distill", "STAGE")
    s = tsub.add_parser(
        "pretrain",
        help="pretrain on the token shards of a data dir",
        description="Pretrain a model (next-token + MTP loss) with Muon/AdamW, bf16 autocast, "
        "atomic checkpoints and bit-exact --resume. Under `torchrun "
        "--nproc_per_node=N` it runs FSDP2 (gloo on CPU, NCCL on GPU).",
    )
    s.add_argument("--preset", default="flagship", help="model preset (default: flagship)")
    s.add_argument("--out", default="runs/pretrain", help="run directory: checkpoints + metrics.jsonl")
    s.add_argument("--data", default="runs/data", help="data dir (built from the stdlib if missing)")
    s.add_argument("--max-steps", type=int, default=0, help="total optimizer steps of the run")
    s.add_argument(
        "--time-budget", type=float, default=0.0, metavar="MIN", help="wall-clock budget in minutes"
    )
    s.add_argument(
        "--stop-at",
        type=int,
        default=0,
        metavar="STEP",
        help="end this session after STEP (checkpointed); continue later with --resume",
    )
    s.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a model config key (repeatable)"
    )
    s.add_argument(
        "--batch-size", type=int, default=None, help="sequences per step over all ranks (default 16)"
    )
    s.add_argument(
        "--seq-len", type=int, default=None, help="tokens per sequence (default: model max_seq_len)"
    )
    s.add_argument("--lr", type=float, default=None, help="AdamW peak lr (default 1e-2)")
    s.add_argument("--muon-lr", type=float, default=None, help="Muon peak lr (default 0.02)")
    s.add_argument("--warmup-steps", type=int, default=None)
    s.add_argument(
        "--indexer-warmup-steps", type=int, default=None,
        help="DSA stage 1: train only the lightning indexer for N steps, then everything (default 0)",
    )
    s.add_argument(
        "--indexer-warmup-lr", type=float, default=None,
        help="constant lr of that stage for AdamW groups, Muon's scaled by muon-lr/lr (default 1e-3)",
    )
    s.add_argument(
        "--eval-every", type=int, default=None, help="steps between val bits-per-byte (default 100)"
    )
    s.add_argument("--save-every", type=int, default=None, help="steps between checkpoints (default 200)")
    s.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile each block"
    )
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_pretrain)
    from dsv4.cli.posttrain import register_stages

    register_stages(tsub)  # sft, rl, distill


def train_config_from_args(args: argparse.Namespace):
    from dsv4.config import make_config, parse_set_args
    from dsv4.train.config import TrainConfig

    overrides = parse_set_args(args.set)
    if not args.resume:
        make_config(args.preset, **overrides)  # fail fast on a bad preset or --set, before any data work
    cfg = TrainConfig(
        preset=args.preset,
        out_dir=args.out,
        data_dir=args.data,
        overrides=overrides,
        max_steps=args.max_steps,
        time_budget_min=args.time_budget,
        stop_at=args.stop_at,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
    )
    for flag, field in (
        ("batch_size", "batch_size"),
        ("seq_len", "seq_len"),
        ("lr", "lr"),
        ("muon_lr", "muon_lr"),
        ("warmup_steps", "warmup_steps"),
        ("indexer_warmup_steps", "indexer_warmup_steps"),
        ("indexer_warmup_lr", "indexer_warmup_lr"),
        ("eval_every", "eval_every"),
        ("save_every", "save_every"),
        ("compile", "compile"),
        ("threads", "threads"),
        ("device", "device"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, field, value)
    cfg.validate()
    return cfg


def _pretrain(args: argparse.Namespace) -> int:
    import os

    from dsv4.train.pretrain import pretrain

    summary = pretrain(train_config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        parts = [f"step {summary['step']}"]
        if summary["final_loss"] is not None:
            parts.append(f"loss {summary['final_loss']:.4f}")
        if summary["val_bpb"] is not None:
            parts.append(f"val_bpb {summary['val_bpb']:.4f}")
        print(", ".join(parts) + f" -> {summary['checkpoint']}")
    return 0
