"""`dsv4 eval humaneval`: HumanEval pass@k for a checkpoint, an OpenAI-compatible
endpoint or a samples file. Argparse only here; the work is in dsv4.eval.
"""

from __future__ import annotations

import argparse
import os
import re

from dsv4.cli._common import command_group
from dsv4.errors import UserError


def register(sub) -> None:
    esub = command_group(sub, "eval", "evaluate models (HumanEval, held-out tasks)", "BENCHMARK")
    p = esub.add_parser(
        "humaneval", help="HumanEval pass@k (sandboxed unit tests)",
        description="Score HumanEval completions in the sandbox. One source: --ckpt DIR (our model), "
                    "--base-url URL --model NAME (any OpenAI-compatible server), or --samples FILE "
                    "(JSONL of {task_id, completion}). Rerunning with the same --out resumes.")
    src = p.add_argument_group("source (exactly one)")
    src.add_argument("--ckpt", metavar="DIR", help="our checkpoint (completion-style prompts)")
    src.add_argument("--base-url", metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    src.add_argument("--samples", metavar="FILE", help="JSONL of {task_id, completion}: evaluate only")
    p.add_argument("--model", metavar="NAME", help="model name for --base-url")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    p.add_argument("--api", choices=["chat", "completions"], default="chat",
                   help="chat (instruct models, code-fence extraction) or completions (base models)")
    p.add_argument("-n", type=int, default=1, help="samples per task (default 1)")
    p.add_argument("--k", default="1,10,100", help="pass@k values, comma-separated (those <= n are reported)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default 0 for n=1, else 0.8)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel programs/requests (default: CPU count)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default 10)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="results directory (default runs/humaneval/<model>); an existing one is resumed")
    p.set_defaults(func=cmd_humaneval)
    from dsv4.cli.posttrain import register_eval

    register_eval(esub)  # dsv4 eval tasks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "run"


def cmd_humaneval(args: argparse.Namespace) -> int:
    from dsv4.eval.client import ClientConfig
    from dsv4.eval.humaneval import EvalSetup, evaluate, load_problems, print_summary, read_samples
    from dsv4.eval.passk import parse_ks

    chosen = [name for name in ("ckpt", "base_url", "samples") if getattr(args, name)]
    if len(chosen) != 1:
        raise UserError("give exactly one source: --ckpt DIR, --base-url URL --model NAME, or --samples FILE")
    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.timeout <= 0 or args.max_new_tokens < 1:
        raise UserError("--timeout must be > 0 and --max-new-tokens >= 1")
    try:
        ks = parse_ks(args.k)
    except ValueError as e:
        raise UserError(str(e)) from None
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 0.8)
    workers = args.workers or os.cpu_count() or 1
    if workers < 1:
        raise UserError("--workers must be >= 1")
    setup = EvalSetup(source="samples", n=args.n, ks=ks, temperature=temperature,
                      max_new_tokens=args.max_new_tokens, limit=args.limit, timeout=args.timeout)
    source = None
    samples = None
    if args.samples:
        from dsv4.eval.humaneval import _sha256
        samples = read_samples(args.samples, load_problems())
        setup.samples, setup.samples_sha256 = os.path.abspath(args.samples), _sha256(args.samples)
        setup.n, setup.temperature, setup.max_new_tokens = 0, 0.0, 0  # not ours to choose
        tag = "samples-" + _slug(os.path.splitext(os.path.basename(args.samples))[0])
    elif args.base_url:
        if not args.model:
            raise UserError("--base-url needs --model NAME")
        if not re.match(r"^https?://[^/\s]+", args.base_url):
            raise UserError(f"--base-url must look like http://host:port/v1, got {args.base_url!r}")
        key = None
        if args.api_key_env:
            key = os.environ.get(args.api_key_env)
            if not key:
                raise UserError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        from dsv4.eval.sources import EndpointSource
        setup.source, setup.model, setup.base_url, setup.api = "endpoint", args.model, args.base_url, args.api
        source = EndpointSource(ClientConfig(args.base_url, args.model, api=args.api, api_key=key),
                                temperature, args.max_new_tokens)
        tag = _slug(args.model)
    else:
        from dsv4.eval.ckpt import CkptSource
        setup.source, setup.ckpt = "ckpt", os.path.abspath(args.ckpt)
        source = CkptSource(args.ckpt, temperature, args.max_new_tokens)
        tag = "ckpt-" + _slug(os.path.basename(os.path.abspath(args.ckpt)))
    out_dir = args.out or os.path.join("runs", "humaneval", tag)
    try:
        summary = evaluate(setup, out_dir, samples=samples, workers=workers,
                           generator=source.generator if source else None,
                           preflight=source.preflight if source else None)
    finally:
        if source is not None:
            source.close()
    print_summary(summary, out_dir)
    return 0
