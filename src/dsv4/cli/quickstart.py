"""`dsv4 quickstart`: data -> pretrain -> sample on the embedded defaults, within a budget."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="build data, pretrain within a time budget, sample; resumable")
    p.add_argument("--budget", type=float, default=10.0, metavar="MIN", help="total minutes (default 10)")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--preset", default="flagship", help="model preset: tiny | flagship (default flagship)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from dsv4.quickstart import QuickstartConfig, format_summary, quickstart

    cfg = QuickstartConfig(
        budget_min=args.budget,
        out_dir=args.out,
        preset=args.preset,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(format_summary(quickstart(cfg), args.out))
    return 0
