"""The `lic` command: the interactive REPL, or headless with `-p TASK`.

Exit codes: 0 done; 1 the run stopped without finishing (step limit, the same call failing
three times); 2 bad usage or configuration; 3 the provider failed (auth, unreachable,
retries exhausted); 130 interrupted. Only argparse and the agent's own modules load
before the first request (no rich, prompt_toolkit or openai), to start in < 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dsv4.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lic",
        description="LIC, a coding agent in your terminal.",
        epilog="exit codes: 0 done, 1 stopped unfinished, 2 bad usage/config, 3 provider error, "
        "130 interrupted",
    )
    p.add_argument(
        "-p",
        "--print",
        dest="task",
        metavar="TASK",
        help="run TASK headless and exit ('-' reads it from stdin)",
    )
    p.add_argument("prompt", nargs="?", help="first message of an interactive session")
    p.add_argument("--output-format", choices=["text", "json", "stream-json"], default="text")
    p.add_argument("--permission-mode", choices=["read-only", "ask", "auto-edit", "full-auto"])
    p.add_argument("--provider", help="named provider: deepseek, local, or one from config.toml")
    p.add_argument("--base-url", help="any OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    p.add_argument(
        "--allow-network", action="store_true", default=None, help="let shell commands use the network"
    )
    p.add_argument(
        "-c", "--continue", dest="cont", action="store_true", help="continue the latest session here"
    )
    p.add_argument("-r", "--resume", metavar="ID", help="resume session ID")
    p.add_argument("--list-sessions", action="store_true", help="list the sessions of this directory")
    p.add_argument("--max-turns", type=int, help="model steps allowed per task (default 50)")
    p.add_argument("--context-window", type=int, help="tokens; compaction starts near it")
    p.add_argument("-C", "--cwd", default=".", help="workspace directory (default: current)")
    p.add_argument("--no-stream", dest="stream", action="store_false", default=None)
    p.add_argument("--version", action="version", version="lic 0.1.0")
    return p


def _settings(args):
    from dsv4.lic.config import load_settings

    cwd = Path(args.cwd).expanduser().resolve()
    if not cwd.is_dir():
        raise UserError(f"workspace {args.cwd} is not a directory")
    cli = {
        "provider": args.provider,
        "base_url": args.base_url,
        "model": args.model,
        "api_key_env": args.api_key_env,
        "permission_mode": args.permission_mode,
        "allow_network": args.allow_network,
        "max_turns": args.max_turns,
        "context_window": args.context_window,
        "stream": args.stream,
    }
    return cwd, load_settings(cwd, cli)


def headless(args) -> int:
    from dsv4.lic.app import App, open_session
    from dsv4.lic.output import EXIT_CODES, FORMATS
    from dsv4.lic.workspace import Workspace

    task = sys.stdin.read() if args.task == "-" else args.task
    if not task.strip():
        raise UserError("the task is empty")
    cwd, settings = _settings(args)
    session = open_session(cwd, settings, args.resume, args.cont)
    events = FORMATS[args.output_format]()
    app = App(settings, Workspace(cwd), session, events)
    try:
        res = app.agent.run(task)
    finally:
        app.close()
    events.finish(res, session.id)
    return EXIT_CODES[res.status]


def list_sessions(args) -> int:
    from dsv4.lic.session import Session

    cwd = Path(args.cwd).expanduser().resolve()
    for s in Session.list(cwd):
        print(f"{s['id']}  {s.get('model') or '-':<16}  {s['first']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list_sessions:
            return list_sessions(args)
        if args.task is not None:
            return headless(args)
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UserError(
                "the interactive REPL needs a terminal; use -p TASK (or -p - to read the task from stdin)"
            )
        from dsv4.lic.repl import repl

        cwd, settings = _settings(args)
        return repl(cwd, settings, args)
    except UserError as e:
        print(f"lic: error: {e}", file=sys.stderr)
        if args.task is not None and args.output_format != "text":  # scripts still get their JSON line
            print(json.dumps({"type": "result", "status": "usage_error", "error": str(e), "exit_code": 2}))
        return 2
    except KeyboardInterrupt:
        print("lic: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
