"""The LIC eval harness (evals/lic) against the scripted server: scoring works both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lichelp import SRC
from scripted_server import ScriptedServer, call

EVALS = Path(__file__).resolve().parents[2] / "evals" / "lic"
sys.path.insert(0, str(EVALS))
from run import check, make_repo  # noqa: E402
from tasks import PYTEST, TASKS  # noqa: E402

from dsv4.lic.shell import sandbox_confines  # noqa: E402


def test_every_task_fails_untouched_and_passes_with_its_reference(tmp_path):
    for task in TASKS:
        assert not check(task, make_repo(task, tmp_path / "raw"))[0], task.name
        repo = make_repo(task, tmp_path / "ref")
        for rel, text in task.solution.items():
            (repo / rel).write_text(text)
        ok, log = check(task, repo)
        assert ok, (task.name, log)


def test_runner_reports_solved_rate_turns_tokens_time(lic_env, tmp_path):
    tasks = {t.name: t for t in TASKS}
    fix, slug = tasks["fix_failing_test"], tasks["implement_from_docstring"]
    steps = [
        # fix_failing_test: a real edit, then a test run through the sandboxed shell
        {
            "tool_calls": [
                call(
                    "edit_file",
                    {
                        "path": "stats.py",
                        "old_string": "sum(xs) // len(xs)",
                        "new_string": "sum(xs) / len(xs)",
                    },
                )
            ]
        },
        {"tool_calls": [call("run_shell", {"command": PYTEST})]},
        {"content": "Fixed mean()."},
        # rename_function: the "model" gives up without changing anything -> must score unsolved
        {"content": "I could not do it."},
        # implement_from_docstring: writes the reference
        {"tool_calls": [call("write_file", {"path": "text.py", "content": slug.solution["text.py"]})]},
        {"content": "Implemented slugify."},
    ]
    assert fix.solution  # the scripted edit above is that reference fix
    out = tmp_path / "results.json"
    with ScriptedServer(steps) as srv:
        p = subprocess.run(
            [
                sys.executable,
                str(EVALS / "run.py"),
                "--base-url",
                srv.base_url,
                "--model",
                "m",
                "--tasks",
                "fix_failing_test,rename_function,implement_from_docstring",
                "--out",
                str(out),
            ],
            env={**os.environ, "PYTHONPATH": SRC},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    by = {r["task"]: r for r in data["results"]}
    assert [by[n]["solved"] for n in ("fix_failing_test", "rename_function", "implement_from_docstring")] == [
        True,
        False,
        True,
    ]
    assert by["fix_failing_test"]["turns"] == 3 and by["fix_failing_test"]["tool_calls"] == 2
    assert all(r["tokens"] > 0 and r["seconds"] > 0 for r in data["results"])
    s = data["summary"]
    assert s["solved"] == 2 and s["solved_rate"] == 0.667 and s["tasks"] == 3
    assert "solved 2/3 (67%)" in p.stdout
    # the agent's test run went through the sandbox and saw the suite pass
    shell_result = [m for m in srv.requests[2]["messages"] if m["role"] == "tool"][-1]["content"]
    if sandbox_confines():
        assert shell_result.startswith("exit code 0") and "2 passed" in shell_result
    else:  # without filesystem isolation, unattended shell commands are refused
        assert shell_result.startswith("Refused:")
