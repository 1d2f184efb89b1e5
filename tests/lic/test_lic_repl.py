"""The REPL through prompt_toolkit's pipe input, and the slash commands as functions."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from lichelp import last_json, run_cli
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console
from scripted_server import ScriptedServer, call

from dsv4.lic.app import App
from dsv4.lic.config import load_settings
from dsv4.lic.repl import repl
from dsv4.lic.session import Session
from dsv4.lic.slash import handle
from dsv4.lic.workspace import Workspace

pytestmark = pytest.mark.timeout(60)  # a REPL waiting for input must fail, not hang the suite

FIX = [
    {
        "tool_calls": [
            call("edit_file", {"path": "pkg/calc.py", "old_string": "a - b", "new_string": "a + b"})
        ]
    },
    {"content": "Fixed **add**."},
]


def make_app(repo, srv, mode="auto-edit"):
    settings = load_settings(repo, {"base_url": srv.base_url, "model": "m", "permission_mode": mode})
    return App(settings, Workspace(repo), Session.create(repo, "m"))


def test_slash_commands_diff_undo_mode_model_clear(repo):
    original = (repo / "pkg/calc.py").read_text()
    with ScriptedServer(FIX + [{"content": "SUMMARY"}]) as srv:
        app = make_app(repo, srv)
        assert handle(app, "/undo").text == "nothing to undo"
        assert handle(app, "/diff").text == "no changes this session"
        app.agent.run("fix add")
        diff = handle(app, "/diff")
        assert diff.kind == "diff" and "-    return a - b" in diff.text and "+    return a + b" in diff.text
        # git-aware: a change made outside the file tools (as a shell command would) shows too
        (repo / "README.md").write_text("# changed by a shell\n")
        assert "+# changed by a shell" in handle(app, "/diff").text
        assert "restored pkg/calc.py" in handle(app, "/undo").text
        assert (repo / "pkg/calc.py").read_text() == original
        assert "nothing to undo" in handle(app, "/undo").text
        assert handle(app, "/mode read-only").text == "permission mode set to read-only"
        assert app.permissions.mode == "read-only" and "permission mode: read-only" in app.agent.system
        assert handle(app, "/mode bogus").kind == "error"
        assert (
            handle(app, "/model other").text == "model set to other" and app.client.endpoint.model == "other"
        )
        assert "/compact" in handle(app, "/help").text
        assert handle(app, "/nope").kind == "error"
        assert handle(app, "/compact").text == "nothing to compact"  # all fits in the window
        app.settings.context_window = 100
        assert handle(app, "/compact").text.startswith("compacted the history: 4 messages -> 2")
        assert app.session.messages[0]["content"].endswith("SUMMARY")
        handle(app, "/clear")
        assert app.session.messages == []
        assert Session.load(app.session.id).last_turn() == 1  # turn numbers go on after /clear
        assert handle(app, "/exit").exit
        app.close()


def test_undo_works_after_resume_in_a_new_process(repo):
    original = (repo / "pkg/calc.py").read_text()
    with ScriptedServer(FIX) as srv:
        p = run_cli(
            [
                "-p",
                "fix",
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
    sid = last_json(p.stdout)["session_id"]
    assert "a + b" in (repo / "pkg/calc.py").read_text()
    with ScriptedServer([]) as srv:
        settings = load_settings(repo, {"base_url": srv.base_url, "model": "m"})
        app = App(settings, Workspace(repo), Session.load(sid))
        assert "restored pkg/calc.py" in handle(app, "/undo").text
    assert (repo / "pkg/calc.py").read_text() == original


def run_repl(repo, srv, keys: str, mode="ask", prompt=None):
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False, color_system=None)
    settings = load_settings(repo, {"base_url": srv.base_url, "model": "m", "permission_mode": mode})
    args = SimpleNamespace(resume=None, cont=False, prompt=prompt)
    with create_pipe_input() as inp:
        inp.send_text(keys)
        rc = repl(repo, settings, args, input=inp, output=DummyOutput(), console=console)
    return rc, out.getvalue()


def test_repl_runs_a_turn_asks_permission_and_handles_slash_commands(repo):
    # Enter sends, the approval prompt reads "y", then /diff, /undo and /exit.
    with ScriptedServer(FIX) as srv:
        rc, text = run_repl(repo, srv, "fix the add function\ry\r/diff\r/undo\r/exit\r")
    assert rc == 0
    assert "⏺ edit_file" in text and "Fixed add." in text
    assert "+    return a + b" in text  # the edit rendered as a diff
    assert "tokens" in text and "$0.0000" in text
    assert "restored pkg/calc.py" in text and "bye" in text
    assert "a - b" in (repo / "pkg/calc.py").read_text()  # undone
    assert srv.requests[0]["messages"][-1] == {"role": "user", "content": "fix the add function"}


def test_repl_multiline_input_and_declined_permission(repo):
    # A trailing backslash continues the line; "n" declines the edit; Ctrl-D (EOF) exits.
    with ScriptedServer(FIX) as srv:
        rc, text = run_repl(repo, srv, "line one\\\rline two\rn\r\x04")
    assert rc == 0
    assert srv.requests[0]["messages"][-1]["content"] == "line one\nline two"
    assert "declined" in srv.requests[1]["messages"][-1]["content"]
    assert "a - b" in (repo / "pkg/calc.py").read_text()
