"""Run the LIC eval suite against any provider and report solved rate, turns, tokens, time.

    python evals/lic/run.py --provider deepseek
    python evals/lic/run.py --base-url http://127.0.0.1:8000/v1 --model dsv4     # `dsv4 serve`
    python evals/lic/run.py --base-url http://127.0.0.1:8001/v1 --model Qwen/... --tasks rename_function

Each task runs `lic -p` headless in full-auto mode in a fresh throwaway git repository,
then its check runs in the sandbox. Results go to stdout as a table and, with --out, to a
JSON file, so runs with different providers can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import TASKS, Task  # noqa: E402

GIT = ["git", "-c", "user.email=eval@lic", "-c", "user.name=eval"]


def make_repo(task: Task, root: Path) -> Path:
    repo = root / task.name
    repo.mkdir(parents=True)
    for rel, text in task.files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "task"], cwd=repo, check=True)
    return repo


def check(task: Task, repo: Path) -> tuple[bool, str]:
    from dsv4.sandbox import SandboxLimits, run

    for rel, text in task.hidden.items():
        (repo / rel).write_text(text)
    res = run(
        task.check, cwd=str(repo), limits=SandboxLimits(cpu_seconds=60, wall_seconds=120, memory_mb=2048)
    )
    return res.status == "passed", (res.stdout + res.stderr)[-500:]


def run_task(task: Task, root: Path, lic_args: list[str], timeout: float) -> dict:
    repo = make_repo(task, root)
    cmd = [
        sys.executable,
        "-m",
        "dsv4.lic",
        "-p",
        task.prompt,
        "--output-format",
        "json",
        "--permission-mode",
        "full-auto",
        *lic_args,
    ]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout)
        lines = p.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {"status": "no_output", "error": p.stderr[-300:]}
    except subprocess.TimeoutExpired:
        result = {"status": "timeout", "error": f"lic ran over {timeout:g}s"}
    except ValueError:
        result = {"status": "bad_output", "error": p.stdout[-300:]}
    elapsed = time.time() - t0
    solved, check_log = check(task, repo)
    usage = result.get("usage") or {}
    return {
        "task": task.name,
        "solved": solved,
        "status": result.get("status"),
        "turns": result.get("turns", 0),
        "tool_calls": result.get("tool_calls", 0),
        "tokens": usage.get("total_tokens", 0),
        "cost_usd": result.get("cost_usd", 0.0),
        "seconds": round(elapsed, 2),
        "error": result.get("error", ""),
        "check_log": "" if solved else check_log,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--provider")
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--api-key-env")
    ap.add_argument("--tasks", help="comma-separated task names (default: all)")
    ap.add_argument("--max-turns", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per task")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway repos (their path is printed)")
    args = ap.parse_args(argv)

    tasks = TASKS
    if args.tasks:
        wanted = args.tasks.split(",")
        unknown = set(wanted) - {t.name for t in TASKS}
        if unknown:
            ap.error(
                f"unknown task(s): {', '.join(sorted(unknown))}; known: {', '.join(t.name for t in TASKS)}"
            )
        tasks = [t for t in TASKS if t.name in wanted]
    lic_args = ["--max-turns", str(args.max_turns)]
    for flag in ("provider", "base_url", "model", "api_key_env"):
        if getattr(args, flag):
            lic_args += [f"--{flag.replace('_', '-')}", getattr(args, flag)]

    root = Path(tempfile.mkdtemp(prefix="lic-eval-"))
    rows = []
    print(f"{'task':<26} {'solved':<7} {'status':<17} {'turns':>5} {'tools':>5} {'tokens':>8} {'time':>7}")
    for task in tasks:
        r = run_task(task, root, lic_args, args.timeout)
        rows.append(r)
        print(
            f"{r['task']:<26} {'yes' if r['solved'] else 'no':<7} {r['status'] or '-':<17} {r['turns']:>5} "
            f"{r['tool_calls']:>5} {r['tokens']:>8} {r['seconds']:>6.1f}s",
            flush=True,
        )
    n = len(rows)
    summary = {
        "tasks": n,
        "solved": sum(r["solved"] for r in rows),
        "solved_rate": round(sum(r["solved"] for r in rows) / max(n, 1), 3),
        "mean_turns": round(sum(r["turns"] for r in rows) / max(n, 1), 2),
        "total_tokens": sum(r["tokens"] for r in rows),
        "total_cost_usd": round(sum(r["cost_usd"] or 0 for r in rows), 6),
        "total_seconds": round(sum(r["seconds"] for r in rows), 2),
        "lic_args": lic_args,
    }
    print(
        f"solved {summary['solved']}/{n} ({summary['solved_rate']:.0%}), mean turns {summary['mean_turns']}, "
        f"{summary['total_tokens']} tokens, ${summary['total_cost_usd']:.4f}, {summary['total_seconds']:.1f}s"
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "results": rows}, indent=2))
    if args.keep:
        print(f"repos kept in {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
