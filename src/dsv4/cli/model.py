"""`dsv4 model ...`: inspect model configurations."""

from __future__ import annotations

import argparse

from dsv4.cli._common import command_group


def register(sub: argparse._SubParsersAction) -> None:
    msub = command_group(sub, "model", "inspect model configurations", "ACTION")
    s = msub.add_parser("summary", help="parameter counts of a preset, built on the meta device")
    s.add_argument("--preset", default="flagship", help="preset name (default: flagship)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--ckpt", metavar="DIR", help="load this checkpoint (ours, transformers or DeepSeek's "
                   "FP8/FP4 release) and report what was loaded")
    s.set_defaults(func=_summary)


def _summary(args: argparse.Namespace) -> int:
    import json

    from dsv4.config import make_config, parse_set_args
    from dsv4.model.summary import format_table, summarize

    if args.ckpt:
        return _summary_ckpt(args)
    cfg = make_config(args.preset, **parse_set_args(args.set))
    stats = summarize(cfg)
    if args.json:
        print(json.dumps({"preset": args.preset, **stats}, indent=2))
    else:
        print(format_table(args.preset, stats))
    return 0


def _summary_ckpt(args: argparse.Namespace) -> int:
    import json

    from dsv4.interop.formats import load_checkpoint
    from dsv4.model.summary import format_table, summarize

    model, report = load_checkpoint(args.ckpt)
    loaded = {"layout": report.layout if report else "dsv4",
              "parameters": sum(p.numel() for p in model.parameters()),
              **({"shards": report.shards, "tensors": report.tensors, "fp8_dequantized": report.fp8,
                  "fp4_dequantized": report.fp4, "zero_filled": report.zero_filled,
                  "skipped": report.skipped} if report else {})}
    stats = summarize(model.config)
    if args.json:
        print(json.dumps({"ckpt": args.ckpt, "loaded": loaded, **stats}, indent=2))
    else:
        print(format_table(args.ckpt, stats))
        print("loaded: " + ", ".join(f"{k} {v}" for k, v in loaded.items() if v not in ([], None)))
    return 0
