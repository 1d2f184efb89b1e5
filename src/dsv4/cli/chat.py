"""`dsv4 chat`: talk to a checkpoint in the terminal (chat template, streamed replies).

Commands: /reset (forget the conversation), /exit (or Ctrl-D).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive chat with a checkpoint (streams replies)")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint or training run directory")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-tokens", type=int, default=256, help="longest reply in tokens (256)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (0.7)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    import sys

    from dsv4.errors import UserError
    from dsv4.infer.chat import ChatSession
    from dsv4.infer.load import load_engine
    from dsv4.infer.sampling import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed).validate()
    session = ChatSession(load_engine(args.ckpt, max_batch=1), args.system, params)
    interactive = sys.stdin.isatty()
    if interactive:
        print("dsv4 chat — /reset to start over, /exit or Ctrl-D to leave", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        try:
            for piece in session.reply(text):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except UserError as e:
            print(f"dsv4: {e}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # stop this reply, keep the session
            pass
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0
