"""End to end: the real `lic -p` against the scripted server, editing a temp git repo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from lichelp import SRC, last_json, run_cli, tool_messages
from scripted_server import ScriptedServer, call

from dsv4.lic.cli import main
from dsv4.lic.shell import sandbox_confines


def lic(capsys, server, repo, *extra):
    rc = main(
        [
            "-p",
            extra[0] if extra else "do it",
            "-C",
            str(repo),
            "--base-url",
            server.base_url,
            "--model",
            "m",
            "--output-format",
            "json",
            "--permission-mode",
            "full-auto",
            *extra[1:],
        ]
    )
    out = capsys.readouterr()
    return rc, last_json(out.out), out.err


def test_headless_fix_in_git_repo_subprocess(repo):
    steps = [
        {"tool_calls": [call("read_file", {"path": "pkg/calc.py"})]},
        {
            "content": "Fixing the sign.",
            "tool_calls": [
                call(
                    "edit_file",
                    {"path": "pkg/calc.py", "old_string": "return a - b", "new_string": "return a + b"},
                )
            ],
        },
        {"content": "Fixed `add`: it subtracted."},
    ]
    with ScriptedServer(steps) as srv:
        t0 = time.time()
        p = run_cli(
            [
                "-p",
                "fix add",
                "--base-url",
                srv.base_url,
                "--model",
                "m",
                "--output-format",
                "json",
                "--permission-mode",
                "auto-edit",
            ],
            cwd=repo,
        )
        first_request = srv.request_times[0] - t0
    assert p.returncode == 0, p.stderr
    res = last_json(p.stdout)
    assert res["status"] == "ok" and res["final"] == "Fixed `add`: it subtracted."
    assert res["turns"] == 3 and res["tool_calls"] == 2
    assert res["usage"]["total_tokens"] > 0 and res["usage"]["prompt_tokens"] > 0
    assert "return a + b" in (repo / "pkg/calc.py").read_text()
    # the model saw the file content (numbered) and the edit confirmation as tool messages
    assert "     2\t    return a - b" in tool_messages(srv.requests[1])[0]
    assert "replaced 1 occurrence" in tool_messages(srv.requests[2])[-1]
    # it streamed, asked for usage and offered exactly the seven tools
    assert srv.requests[0]["stream"] is True
    names = [t["function"]["name"] for t in srv.requests[0]["tools"]]
    assert names == ["read_file", "write_file", "edit_file", "glob", "grep", "run_shell", "todo_write"]
    print(f"lic process start -> first request: {first_request * 1000:.0f} ms")
    assert first_request < 2.0  # the goal is 0.3 s; the bound is loose for a loaded 2-core CI box


def test_text_output_without_streaming(repo, capsys):
    steps = [
        {"tool_calls": [call("write_file", {"path": "NOTES.md", "content": "hello\n"})]},
        {"content": "Wrote the notes."},
    ]
    with ScriptedServer(steps) as srv:
        rc = main(
            [
                "-p",
                "write notes",
                "-C",
                str(repo),
                "--base-url",
                srv.base_url,
                "--model",
                "m",
                "--no-stream",
                "--permission-mode",
                "auto-edit",
            ]
        )
    out = capsys.readouterr()
    assert rc == 0
    assert out.out.strip() == "Wrote the notes."
    assert "write_file" in out.err
    assert srv.requests[0]["stream"] is False
    assert (repo / "NOTES.md").read_text() == "hello\n"


def test_stream_json_events(repo, capsys):
    steps = [{"tool_calls": [call("glob", {"pattern": "**/*.py"})]}, {"content": "Two files."}]
    with ScriptedServer(steps) as srv:
        rc = main(
            [
                "-p",
                "list",
                "-C",
                str(repo),
                "--base-url",
                srv.base_url,
                "--model",
                "m",
                "--output-format",
                "stream-json",
            ]
        )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0
    types = [e["type"] for e in lines]
    assert types[-1] == "result" and "tool_call" in types and "tool_result" in types and "usage" in types
    glob_result = next(e for e in lines if e["type"] == "tool_result")["result"]
    assert glob_result.splitlines() == ["pkg/calc.py"]  # build/ is .gitignored
    assert "".join(e["delta"] for e in lines if e["type"] == "text") == "Two files."


def test_refusals_outside_workspace_and_symlink_escape(repo, lic_env, capsys):
    outside = lic_env / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("keep\n")
    (repo / "link").symlink_to(outside)
    steps = [
        {
            "tool_calls": [
                call("write_file", {"path": "../outside/new.txt", "content": "x"}),
                call("write_file", {"path": str(outside / "abs.txt"), "content": "x"}),
                call("edit_file", {"path": "link/secret.txt", "old_string": "keep", "new_string": "gone"}),
                call("read_file", {"path": "link/secret.txt"}),
                call("glob", {"pattern": "../outside/*"}),
            ]
        },
        {"content": "Could not."},
    ]
    with ScriptedServer(steps) as srv:
        rc, res, _ = lic(capsys, srv, repo)
    assert rc == 0 and res["tool_calls"] == 5
    results = tool_messages(srv.requests[1])
    assert all(r.startswith("Refused:") for r in results), results
    assert "outside the workspace" in results[0]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "keep\n"


def test_read_only_refuses_every_write_and_ask_mode_headless(repo, capsys):
    before = (repo / "pkg/calc.py").read_text()
    steps = [
        {
            "tool_calls": [
                call("write_file", {"path": "new.txt", "content": "x"}),
                call("edit_file", {"path": "pkg/calc.py", "old_string": "a - b", "new_string": "a"}),
                call("run_shell", {"command": "touch made_by_shell"}),
                call("read_file", {"path": "README.md"}),
            ]
        },
        {"content": "done"},
    ]
    with ScriptedServer(steps) as srv:
        rc, res, _ = lic(capsys, srv, repo, "x", "--permission-mode", "read-only")
    results = tool_messages(srv.requests[1])
    assert [r.startswith("Refused:") for r in results] == [True, True, True, False]
    assert "read-only mode" in results[0]
    assert "# demo" in results[3]
    assert not (repo / "new.txt").exists() and not (repo / "made_by_shell").exists()
    assert (repo / "pkg/calc.py").read_text() == before
    # ask mode without a user: refused with a hint to widen the mode
    with ScriptedServer(
        [{"tool_calls": [call("write_file", {"path": "n.txt", "content": "x"})]}, {"content": "ok"}]
    ) as srv:
        lic(capsys, srv, repo, "x", "--permission-mode", "ask")
    msg = tool_messages(srv.requests[1])[0]
    assert msg.startswith("Refused:") and "--permission-mode auto-edit" in msg
    assert not (repo / "n.txt").exists()


def test_edit_errors_go_back_to_the_model(repo, capsys):
    (repo / "dup.py").write_text("x = 1\nx = 1\n")
    steps = [
        {
            "tool_calls": [
                call("edit_file", {"path": "dup.py", "old_string": "y = 2", "new_string": "z"}),
                call("edit_file", {"path": "dup.py", "old_string": "x = 1", "new_string": "x = 2"}),
                call(
                    "edit_file",
                    {"path": "dup.py", "old_string": "x = 1", "new_string": "x = 3", "replace_all": True},
                ),
                call("edit_file", {"path": "missing.py", "old_string": "a", "new_string": "b"}),
                call("no_such_tool", {}),
                call("read_file", {"wrong": 1}),
            ]
        },
        {"content": "ok"},
    ]
    with ScriptedServer(steps) as srv:
        rc, res, _ = lic(capsys, srv, repo)
    assert rc == 0
    r = tool_messages(srv.requests[1])
    assert r[0].startswith("Error: old_string not found")
    assert "occurs 2 times" in r[1] and "replace_all" in r[1]
    assert "replaced 2 occurrence" in r[2]
    assert "does not exist" in r[3]
    assert "unknown tool 'no_such_tool'" in r[4]
    assert r[5].startswith("Error: bad arguments for read_file")
    assert (repo / "dup.py").read_text() == "x = 3\nx = 3\n"


def test_malformed_tool_json_is_fed_back(repo, capsys):
    steps = [
        {"tool_calls": [call("write_file", '{"path": "a.txt", "content": ')]},
        {"tool_calls": [call("write_file", {"path": "a.txt", "content": "fixed"})]},
        {"content": "ok"},
    ]
    with ScriptedServer(steps) as srv:
        rc, res, _ = lic(capsys, srv, repo)
    assert rc == 0 and res["status"] == "ok"
    assert "not valid JSON" in tool_messages(srv.requests[1])[0]
    # the malformed call itself stays in the history, answered by the error
    assert srv.requests[1]["messages"][-2]["tool_calls"][0]["function"]["arguments"].endswith('"content": ')
    assert (repo / "a.txt").read_text() == "fixed"


def test_same_failing_call_three_times_stops(repo, capsys):
    bad = call("edit_file", {"path": "pkg/calc.py", "old_string": "nope", "new_string": "x"})
    steps = [
        {"tool_calls": [bad]},
        {"tool_calls": [call("read_file", {"path": "README.md"})]},
        {"tool_calls": [bad]},
        {"tool_calls": [bad]},
        {"content": "never reached"},
    ]
    with ScriptedServer(steps) as srv:
        rc, res, err = lic(capsys, srv, repo)
    assert rc == 1 and res["status"] == "repeated_failure"
    assert "failed 3 times" in res["error"] and "old_string not found" in res["error"]
    assert res["turns"] == 4 and len(srv.requests) == 4


def test_retries_on_429_and_5xx_then_succeeds(repo, capsys):
    steps = [{"status": 429}, {"status": 503}, {"content": "hello"}]
    with ScriptedServer(steps) as srv:
        rc, res, _ = lic(capsys, srv, repo)
    assert rc == 0 and res["final"] == "hello" and len(srv.requests) == 3


def test_clear_messages_on_401_and_unreachable(repo, capsys):
    with ScriptedServer([{"status": 401, "message": "bad key"}]) as srv:
        rc, res, _ = lic(capsys, srv, repo, "x", "--api-key-env", "LIC_TEST_KEY")
    assert rc == 2 and res["status"] == "usage_error"  # the variable is not set: no request at all
    assert "$LIC_TEST_KEY is not set" in res["error"] and not srv.requests
    os.environ["LIC_TEST_KEY"] = "sk-wrong"
    try:
        with ScriptedServer([{"status": 401, "message": "bad key"}]) as srv:
            rc, res, _ = lic(capsys, srv, repo, "x", "--api-key-env", "LIC_TEST_KEY")
        assert rc == 3 and res["status"] == "provider_error"
        assert "authentication failed (401)" in res["error"] and "LIC_TEST_KEY" in res["error"]
        assert len(srv.requests) == 1  # no retry on 401
    finally:
        del os.environ["LIC_TEST_KEY"]
    rc = main(
        [
            "-p",
            "x",
            "-C",
            str(repo),
            "--provider",
            "local",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--output-format",
            "json",
        ]
    )
    res = last_json(capsys.readouterr().out)
    assert rc == 3 and "cannot reach http://127.0.0.1:9/v1" in res["error"]
    assert "dsv4 serve" in res["error"]


def test_resume_and_continue_carry_history(repo, capsys):
    with ScriptedServer(
        [{"content": "first answer"}, {"content": "second answer"}, {"content": "third answer"}]
    ) as srv:
        _, r1, _ = lic(capsys, srv, repo, "remember 42")
        _, r2, _ = lic(capsys, srv, repo, "what number?", "--resume", r1["session_id"])
        _, r3, _ = lic(capsys, srv, repo, "and now?", "--continue")
    assert r1["session_id"] == r2["session_id"] == r3["session_id"]
    convo = [(m["role"], m["content"]) for m in srv.requests[2]["messages"][1:]]
    assert convo == [
        ("user", "remember 42"),
        ("assistant", "first answer"),
        ("user", "what number?"),
        ("assistant", "second answer"),
        ("user", "and now?"),
    ]
    assert main(["--list-sessions", "-C", str(repo)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 1 and listing[0].startswith(r1["session_id"]) and "remember 42" in listing[0]
    rc = main(["-p", "x", "-C", str(repo), "--resume", "nope", "--base-url", srv.base_url])
    assert rc == 2 and "no session 'nope'" in capsys.readouterr().err


def test_agents_md_and_repo_map_in_system_prompt(repo, capsys):
    (repo / "AGENTS.md").write_text("Always run pytest -q before finishing.\n")
    with ScriptedServer([{"content": "ok"}]) as srv:
        lic(capsys, srv, repo)
    system = srv.requests[0]["messages"][0]
    assert system["role"] == "system"
    assert "Always run pytest -q before finishing." in system["content"]
    assert "pkg/calc.py: def add, class Calc(run)" in system["content"]
    assert "build/out.py" not in system["content"]  # .gitignored


def test_ctrl_c_leaves_session_resumable(repo, lic_env):
    steps = [
        {"tool_calls": [call("write_file", {"path": "a.txt", "content": "one"})]},
        {"delay": 30, "content": "too late"},
    ]
    env = {**os.environ, "PYTHONPATH": SRC}
    with ScriptedServer(steps) as srv:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dsv4.lic",
                "-p",
                "go",
                "--base-url",
                srv.base_url,
                "--model",
                "m",
                "--output-format",
                "json",
                "--permission-mode",
                "auto-edit",
            ],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 20
        while len(srv.requests) < 2 and time.time() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 130, err
    res = last_json(out)
    assert res["status"] == "interrupted" and "resumed" in res["error"]
    assert (repo / "a.txt").read_text() == "one"
    with ScriptedServer([{"content": "resumed fine"}]) as srv:
        p2 = run_cli(
            [
                "-p",
                "continue",
                "--continue",
                "--base-url",
                srv.base_url,
                "--model",
                "m",
                "--output-format",
                "json",
            ],
            cwd=repo,
        )
    assert p2.returncode == 0 and last_json(p2.stdout)["final"] == "resumed fine"
    roles = [m["role"] for m in srv.requests[0]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]


def test_full_auto_shell_is_sandboxed_to_the_workspace(repo, lic_env, capsys):
    outside = lic_env / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious\n")
    (repo / "scratch.txt").write_text("temp\n")
    steps = [
        {
            "tool_calls": [
                call(
                    "run_shell",
                    {
                        "command": f"rm -rf {outside}; echo pwned > {outside}/new.txt; "
                        "rm -f ../outside/keep.txt"
                    },
                ),
                call(
                    "run_shell",
                    {"command": "rm scratch.txt && echo made > made.txt && cat made.txt", "timeout": 20},
                ),
                call("run_shell", {"command": "python -c 'import sys; sys.exit(3)'"}),
            ]
        },
        {"content": "done"},
    ]
    with ScriptedServer(steps) as srv:
        rc, res, _ = lic(capsys, srv, repo)
    assert rc == 0
    results = tool_messages(srv.requests[1])
    assert (outside / "keep.txt").read_text() == "precious\n"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    if not sandbox_confines():  # no bwrap/userns here: every command needs a yes, so all refused
        assert all(r.startswith("Refused:") for r in results)
        return
    assert results[1].startswith("exit code 0") and "made" in results[1]
    assert not (repo / "scratch.txt").exists() and (repo / "made.txt").read_text() == "made\n"
    assert results[2].startswith("exit code 3")


def test_unconfined_sandbox_makes_shell_ask_even_in_full_auto(repo, capsys, monkeypatch):
    import dsv4.lic.shell

    monkeypatch.setattr(dsv4.lic.shell, "sandbox_confines", lambda: False)
    steps = [{"tool_calls": [call("run_shell", {"command": "touch x"})]}, {"content": "ok"}]
    with ScriptedServer(steps) as srv:
        rc, res, _ = lic(capsys, srv, repo)
    msg = tool_messages(srv.requests[1])[0]
    assert msg.startswith("Refused:") and "without filesystem isolation" in msg
    assert not (repo / "x").exists()


def test_step_limit_and_task_from_stdin(repo, capsys, monkeypatch):
    import io

    look = {"tool_calls": [call("glob", {"pattern": "*.md"})]}
    with ScriptedServer([look, look, {"content": "unreached"}]) as srv:
        rc, res, _ = lic(capsys, srv, repo, "x", "--max-turns", "2")
    assert rc == 1 and res["status"] == "max_turns" and "limit of 2 model steps" in res["error"]
    monkeypatch.setattr("sys.stdin", io.StringIO("task from stdin\n"))
    with ScriptedServer([{"content": "ok"}]) as srv:
        rc, res, _ = lic(capsys, srv, repo, "-")
    assert rc == 0 and srv.requests[0]["messages"][-1]["content"] == "task from stdin\n"


def test_repl_without_a_terminal_says_how_to_run_headless(repo):
    p = run_cli(["--base-url", "http://127.0.0.1:9/v1"], cwd=repo, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "needs a terminal; use -p TASK" in p.stderr
    assert "Traceback" not in p.stderr
