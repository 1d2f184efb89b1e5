"""`dsv4 model ...`: inspect model configurations."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model configurations")
    p.set_defaults(_parser=p)
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    s = msub.add_parser("summary", help="parameter counts of a preset, built on the meta device")
    s.add_argument("--preset", default="flagship", help="preset name (default: flagship)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_summary)


def _summary(args: argparse.Namespace) -> int:
    import json

    from dsv4.config import make_config, parse_set_args
    from dsv4.model.summary import format_table, summarize

    cfg = make_config(args.preset, **parse_set_args(args.set))
    stats = summarize(cfg)
    if args.json:
        print(json.dumps({"preset": args.preset, **stats}, indent=2))
    else:
        print(format_table(args.preset, stats))
    return 0
