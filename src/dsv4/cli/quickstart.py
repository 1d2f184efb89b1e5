"""`dsv4 quickstart`: corpus -> tokenizer -> pretrain -> SFT -> RL -> distill -> eval -> report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole recipe within a time budget: data, pretrain, SFT, RL, distill, eval, report",
        description="Build the corpus and tokenizer, pretrain the preset, SFT and GRPO it on verifiable "
        "tasks, distil it into the lite model (and train a lite from scratch on the same compute), "
        "evaluate (held-out tasks, HumanEval, val bits-per-byte, decode speed) and write a report card. "
        "Rerunning with the same --out skips finished stages and resumes an interrupted one.",
    )
    p.add_argument("--budget", type=float, default=20.0, metavar="MIN", help="total minutes (default 20)")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--preset", default="flagship", help="model preset: tiny | flagship (default flagship)")
    p.add_argument("--student-preset", default="lite", help="distillation student (default lite)")
    p.add_argument("--sources", nargs="*", metavar="PATH",
                   help="corpus files/dirs instead of the whole standard library (a faster run)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--heldout-n", type=int, default=100,
                   help="held-out tasks to evaluate when --heldout-per-family is 0 (default 100)")
    p.add_argument("--heldout-per-family", type=int, default=10,
                   help="held-out tasks per task family (default 10; 0: the first --heldout-n)")
    p.add_argument("--heldout-samples", type=int, default=4,
                   help="pass@1 = mean over this many samples at T 0.6, top-p 0.95 (default 4; 0: greedy)")
    p.add_argument("--humaneval-limit", type=int, default=40,
                   help="HumanEval problems to evaluate (default 40; 0 skips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from dsv4.errors import UserError
    from dsv4.quickstart import QuickstartConfig, format_summary, quickstart

    if args.heldout_n < 1 or min(args.humaneval_limit, args.heldout_per_family, args.heldout_samples) < 0:
        raise UserError("--heldout-n must be >= 1; --humaneval-limit, --heldout-per-family and "
                        "--heldout-samples >= 0")
    cfg = QuickstartConfig(
        budget_min=args.budget,
        out_dir=args.out,
        preset=args.preset,
        student_preset=args.student_preset,
        seed=args.seed,
        progress=not args.no_progress,
        threads=args.threads,
        data_sources=args.sources or None,
        vocab_size=args.vocab_size,
        heldout_n=args.heldout_n,
        heldout_per_family=args.heldout_per_family,
        heldout_samples=args.heldout_samples,
        humaneval_limit=args.humaneval_limit,
    )
    print(format_summary(quickstart(cfg), args.out))
    return 0
