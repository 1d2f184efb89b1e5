"""`dsv4 convert`: checkpoints to and from transformers' DeepseekV4 layout (issue 9).

dsv4 convert --from-hf DIR --out CKPT    transformers (or DeepSeek's released, FP8/FP4) -> ours
dsv4 convert --to-hf CKPT --out DIR      ours -> config.json + safetensors for transformers
"""

from __future__ import annotations

import argparse

from dsv4.errors import UserError

DTYPES = ("keep", "fp32", "bf16", "fp16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert checkpoints to/from transformers' DeepseekV4 layout")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--from-hf", metavar="DIR", help="a transformers DeepseekV4 directory (or DeepSeek's release)"
    )
    src.add_argument("--to-hf", metavar="CKPT", help="one of our checkpoints (or a run directory)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument(
        "--drop",
        default="",
        metavar="engram,mtp",
        help="--to-hf: leave out components transformers lacks (engram, mtp)",
    )
    p.add_argument(
        "--max-shard-size",
        default="0",
        metavar="SIZE",
        help="--to-hf: split the weights into shards of at most SIZE (e.g. 5GB); 0 = one file",
    )
    p.add_argument(
        "--dtype", default="keep", choices=DTYPES, help="cast floating-point weights (default: keep)"
    )
    p.add_argument(
        "--tokenizer", metavar="FILE", help="--from-hf: tokenizer.json to store with the checkpoint"
    )
    p.set_defaults(func=_convert)


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        value = float(num)
        mult = units[t[len(num) :]]
    except (ValueError, KeyError):
        raise UserError(f"--max-shard-size expects a size like 5GB or 500MB, got {text!r}") from None
    if value < 0:
        raise UserError("--max-shard-size must be >= 0")
    return int(value * mult)


def _convert(args: argparse.Namespace) -> int:
    import torch

    from dsv4.interop.hf import convert_from_hf, convert_to_hf

    dtype = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.from_hf:
        if args.drop or args.max_shard_size != "0":
            raise UserError("--drop and --max-shard-size apply to --to-hf")
        cfg = convert_from_hf(args.from_hf, args.out, dtype=dtype, tokenizer=args.tokenizer)
        print(f"wrote {args.out}: {cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_routed_experts} experts")
        return 0
    if args.tokenizer:
        raise UserError("--tokenizer applies to --from-hf")
    drop = [d.strip() for d in args.drop.split(",") if d.strip()]
    hf = convert_to_hf(
        args.to_hf, args.out, drop=drop, max_shard_bytes=parse_size(args.max_shard_size), dtype=dtype
    )
    print(
        f"wrote {args.out}: transformers DeepseekV4, {hf['num_hidden_layers']} layers"
        + (f" (dropped: {', '.join(drop)})" if drop else "")
    )
    return 0
