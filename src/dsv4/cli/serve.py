"""`dsv4 serve`: the OpenAI-compatible HTTP server over a checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible API server (/v1/chat/completions, ...)")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint or training run directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None, metavar="KEY", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="model id clients must send (default: the checkpoint directory's name)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="concurrent sequences (default: 8)")
    p.add_argument("--prefill-chunk", type=int, default=256, metavar="N", help="prompt tokens per step (256)")
    p.add_argument("--fp32", action="store_true",
                   help="fp32 everywhere (default: bf16 autocast for prompt prefill, fp32 decode)")
    p.add_argument("--speculative", action="store_true",
                   help="MTP self-speculative decoding (the model's MTP head drafts one token per step)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from dsv4.serve.server import serve

    serve(args.ckpt, host=args.host, port=args.port, api_key=args.api_key, model_name=args.model_name,
          max_batch=args.max_batch, prefill_chunk=args.prefill_chunk,
          autocast=False if args.fp32 else "prefill",
          speculative=args.speculative)
    return 0
