"""`dsv4 generate`: stream a completion of a prompt from a checkpoint to stdout."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample a completion from a checkpoint (streams to stdout)")
    p.add_argument("--ckpt", required=True, help="checkpoint or run directory (e.g. runs/pretrain)")
    p.add_argument("--prompt", required=True, help="text to complete")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=None, help="fix the sampling randomness")
    p.add_argument("--no-echo", action="store_true", help="print only the completion, not the prompt")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    import sys

    from dsv4.infer.sample import SamplingParams, generate_text

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    params.validate()
    pieces = generate_text(args.ckpt, args.prompt, params)
    first = next(pieces, "")  # loads the checkpoint: errors surface before anything is printed
    if not args.no_echo:
        sys.stdout.write(args.prompt)
    sys.stdout.write(first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
