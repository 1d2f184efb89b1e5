"""Unit tests of LIC's parts: tools on edge input, ignore rules, config, sessions, compaction."""

from __future__ import annotations

import json

import pytest
from scripted_server import ScriptedServer

from dsv4.errors import UserError
from dsv4.lic.agent import Agent
from dsv4.lic.compaction import SUMMARY_HEADER, estimate_tokens, find_cut
from dsv4.lic.config import Settings, load_settings
from dsv4.lic.context import file_symbols, repo_map
from dsv4.lic.errors import ProviderError, Refused, ToolError
from dsv4.lic.ignore import IgnoreRules, glob_to_regex
from dsv4.lic.permissions import Permissions
from dsv4.lic.provider import ChatClient, Endpoint
from dsv4.lic.session import Session
from dsv4.lic.snapshots import Snapshots
from dsv4.lic.tools import MAX_READ_LINES, Toolbox
from dsv4.lic.workspace import Workspace


def toolbox(root, mode="full-auto", approver=None):
    ws = Workspace(root)
    return Toolbox(ws, Permissions(mode, approver), Snapshots(ws))


def test_huge_file_is_truncated_with_a_note_and_pages(tmp_path):
    (tmp_path / "big.txt").write_text("".join(f"line {i}\n" for i in range(1, 5001)) + "x" * 5000 + "\n")
    tb = toolbox(tmp_path)
    out = tb.call("read_file", {"path": "big.txt"})
    lines = out.splitlines()
    assert len(lines) == MAX_READ_LINES + 1
    assert lines[0] == "     1\tline 1" and "[truncated: showed lines 1-2000" in lines[-1]
    assert "offset=2001" in lines[-1]
    page = tb.call("read_file", {"path": "big.txt", "offset": 4999, "limit": 5}).splitlines()
    assert page[0] == "  4999\tline 4999" and "[line truncated, 5000 chars]" in page[2]
    assert "only 5001 lines" in tb.call("read_file", {"path": "big.txt", "offset": 9000})


def test_binary_files_refused_politely(tmp_path):
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100))
    tb = toolbox(tmp_path)
    for name, args in [
        ("read_file", {"path": "img.png"}),
        ("edit_file", {"path": "img.png", "old_string": "PNG", "new_string": "JPG"}),
    ]:
        with pytest.raises(ToolError, match="binary file"):
            tb.call(name, args)
    assert (tmp_path / "img.png").read_bytes().startswith(b"\x89PNG")


def test_grep_respects_gitignore_without_git_and_glob_filter(tmp_path):
    (tmp_path / ".gitignore").write_text("node_modules/\n*.log\n!keep.log\n/top_only.txt\n")
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / "a.js").write_text("needle\n")
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("needle = 1\n")
    (tmp_path / "src" / "sub" / "b.js").write_text("// needle\n")
    (tmp_path / "src" / "top_only.txt").write_text("needle\n")  # anchored rule: not ignored here
    (tmp_path / "top_only.txt").write_text("needle\n")
    (tmp_path / "x.log").write_text("needle\n")
    (tmp_path / "keep.log").write_text("needle\n")
    (tmp_path / "bin.dat").write_bytes(b"needle\x00\x01")
    tb = toolbox(tmp_path)
    hits = sorted(line.split(":")[0] for line in tb.call("grep", {"pattern": r"need\w+"}).splitlines())
    assert hits == ["keep.log", "src/a.py", "src/sub/b.js", "src/top_only.txt"]
    assert tb.call("grep", {"pattern": "needle", "glob": "*.js"}).splitlines() == ["src/sub/b.js:1:// needle"]
    assert tb.call("grep", {"pattern": "needle", "path": "src/sub"}).startswith("src/sub/b.js:1:")
    assert "No matches" in tb.call("grep", {"pattern": "haystack"})
    with pytest.raises(ToolError, match="invalid regex"):
        tb.call("grep", {"pattern": "("})
    with pytest.raises(Refused):
        tb.call("grep", {"pattern": "x", "path": "/etc"})
    assert sorted(tb.call("glob", {"pattern": "**/*.py"}).splitlines()) == ["src/a.py"]
    assert "try '**/*.js'" in tb.call("glob", {"pattern": "*.js"})


def test_glob_regex_and_ignore_rules():
    assert glob_to_regex("**/*.py").match("a/b/c.py") and glob_to_regex("**/*.py").match("c.py")
    assert not glob_to_regex("*.py").match("a/c.py")
    assert glob_to_regex("src/**/test_*.py").match("src/test_x.py")
    assert glob_to_regex("f[ab].txt").match("fb.txt") and not glob_to_regex("f[!ab].txt").match("fa.txt")
    rules = IgnoreRules(["# c", "build/", "*.pyc", "!important.pyc", "docs/*.md"])
    assert rules.match("build", True) and rules.match("x/build", True) and rules.match("build", False) is None
    assert rules.match("a/b.pyc", False) and rules.match("important.pyc", False) is False
    assert rules.match("docs/a.md", False) and rules.match("x/docs/a.md", False) is None


def test_workspace_boundary_resolution(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "ok").symlink_to(tmp_path / "ws")  # a link that stays inside is fine
    (tmp_path / "ws" / "esc").symlink_to(tmp_path)
    ws = Workspace(tmp_path / "ws")
    assert ws.resolve("ok/a.txt") == ws.root / "a.txt"
    assert ws.resolve("sub/../b.txt") == ws.root / "b.txt"
    for bad in ["../x", "esc/x", "/etc/passwd", "~/x", "sub/../../x"]:
        with pytest.raises(Refused):
            ws.resolve(bad)


def test_todo_write_and_permission_prompts(tmp_path):
    answers = iter(["no", "always"])
    asked = []

    def approver(category, summary):
        asked.append((category, summary))
        return next(answers)

    tb = toolbox(tmp_path, "ask", approver)
    with pytest.raises(Refused, match="declined"):
        tb.call("write_file", {"path": "a.txt", "content": "1"})
    tb.call("write_file", {"path": "a.txt", "content": "1"})
    tb.call("write_file", {"path": "b.txt", "content": "2"})  # "always" holds for edits
    assert asked == [("edit", "write_file a.txt")] * 2
    out = tb.call(
        "todo_write",
        {
            "items": [
                {"content": "read", "status": "completed"},
                {"content": "fix", "status": "in_progress"},
                "test",
            ]
        },
    )
    assert out.splitlines()[1:] == ["[x] read", "[>] fix", "[ ] test"]
    with pytest.raises(ToolError, match="bad status"):
        tb.call("todo_write", {"items": [{"content": "x", "status": "done"}]})


def test_snapshots_undo_and_diff_without_git(tmp_path):
    (tmp_path / "a.txt").write_text("one\n")
    tb = toolbox(tmp_path)
    tb.snapshots.begin_turn(1)
    tb.call("edit_file", {"path": "a.txt", "old_string": "one", "new_string": "two"})
    tb.snapshots.begin_turn(2)
    tb.call("edit_file", {"path": "a.txt", "old_string": "two", "new_string": "three"})
    tb.call("write_file", {"path": "new/b.txt", "content": "b\n"})
    diff = tb.snapshots.diff()
    assert "-one\n+three\n" in diff and "+++ b/new/b.txt" in diff
    assert tb.snapshots.undo() == ["restored a.txt", "removed new/b.txt"]
    assert (tmp_path / "a.txt").read_text() == "two\n" and not (tmp_path / "new/b.txt").exists()
    assert tb.snapshots.undo() == ["restored a.txt"]
    assert (tmp_path / "a.txt").read_text() == "one\n"
    assert tb.snapshots.undo() == [] and tb.snapshots.diff() == ""


def test_config_layers_and_provider_choice(tmp_path, monkeypatch, lic_env):
    ws = tmp_path / "proj"
    (ws / ".lic").mkdir(parents=True)
    assert load_settings(ws, {}).provider == "local"
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test")
    s = load_settings(ws, {})
    assert (s.provider, s.base_url, s.model, s.api_key) == (
        "deepseek",
        "https://api.deepseek.com",
        "deepseek-chat",
        "sk-test",
    )
    # a bare --base-url never receives the DeepSeek key
    s = load_settings(ws, {"base_url": "http://127.0.0.1:5/v1"})
    assert s.provider == "custom" and s.api_key is None
    user = lic_env / "config" / "lic"
    user.mkdir(parents=True)
    (user / "config.toml").write_text(
        'provider = "vllm"\npermission_mode = "auto-edit"\n'
        '[providers.vllm]\nbase_url = "http://h:1/v1"\nmodel = "q"\n'
    )
    (ws / ".lic" / "config.toml").write_text('[providers.vllm]\nmodel = "q2"\n')
    s = load_settings(ws, {"max_turns": 7})
    assert (s.price_input, s.price_output, s.context_window) == (0.0, 0.0, 8_192)  # unset: defaults
    assert (s.provider, s.base_url, s.model, s.permission_mode, s.max_turns) == (
        "vllm",
        "http://h:1/v1",
        "q2",
        "auto-edit",
        7,
    )
    assert load_settings(ws, {"model": "cli"}).model == "cli"
    for bad, why in [
        ("nonsense = 1\n", "unknown setting"),
        ("[providers.vllm]\nbaseurl = 'x'\n", "unknown key"),
        ("max_turns = 'many'\n", "max_turns = 'many' should be of type int"),
        ("[[broken\n", "cannot read config"),
    ]:
        (ws / ".lic" / "config.toml").write_text(bad)
        with pytest.raises(UserError, match=why):
            load_settings(ws, {})


def test_session_survives_torn_line_and_unanswered_calls(lic_env, tmp_path):
    s = Session.create(tmp_path, "m")
    s.add({"role": "user", "content": "hi"})
    s.add(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "glob", "arguments": "{}"}}],
        }
    )
    s.close()
    with open(s.path, "a") as f:
        f.write('{"type": "message", "mess')  # killed mid-write
    loaded = Session.load(s.id)
    assert [m["role"] for m in loaded.messages] == ["user", "assistant", "tool"]
    assert loaded.messages[-1]["tool_call_id"] == "c1"
    assert Session.latest(tmp_path).id == s.id


def test_repo_map_symbols_and_budget(tmp_path):
    (tmp_path / "m.py").write_text(
        "import os\nX = 1\nclass A:\n    def go(self): pass\n    def _p(self): pass\n"
        "async def fetch(): pass\n"
    )
    (tmp_path / "app.ts").write_text("export class Widget {}\nexport function render() {}\n")
    (tmp_path / "bad.py").write_text("def (:\n")
    for i in range(300):
        (tmp_path / f"f{i:03}.go").write_text(f"package x\nfunc Handler{i}() {{}}\n")
    assert file_symbols(tmp_path / "m.py") == ["class A(go)", "def fetch"]
    assert file_symbols(tmp_path / "m.py", use_ast=False) == ["class A", "def fetch"]
    assert file_symbols(tmp_path / "app.ts") == ["Widget", "render"]
    assert file_symbols(tmp_path / "bad.py") == []
    small = repo_map(Workspace(tmp_path), budget_tokens=200)
    assert len(small) <= 200 * 4 + 40 and "more files]" in small.splitlines()[-1]
    assert "app.ts: Widget, render" in repo_map(Workspace(tmp_path), budget_tokens=5000)


def test_compaction_summarises_old_turns(lic_env, tmp_path):
    session = Session.create(tmp_path, "m")
    for i in range(6):
        session.add({"role": "user", "content": f"task {i} " + "x" * 400})
        session.add({"role": "assistant", "content": f"answer {i} " + "y" * 400})
    settings = Settings(base_url="", context_window=1000)
    ws = Workspace(tmp_path)
    with ScriptedServer([{"content": "SUMMARY: tasks 0-4 done"}, {"content": "final"}]) as srv:
        agent = Agent(
            ChatClient(Endpoint("t", srv.base_url, "m")),
            Toolbox(ws, Permissions(), Snapshots(ws)),
            session,
            settings,
            "sys",
        )
        res = agent.run("task 6")
    assert res.final == "final"
    summary_request = srv.requests[0]
    assert "tools" not in summary_request and "task 0" in summary_request["messages"][1]["content"]
    sent = srv.requests[1]["messages"]
    assert sent[1]["content"].startswith(SUMMARY_HEADER) and "SUMMARY: tasks 0-4 done" in sent[1]["content"]
    assert sent[-1] == {"role": "user", "content": "task 6"}
    assert estimate_tokens(sent) < 750
    # the compacted history is what a resumed session sees
    assert Session.load(session.id).messages[0]["content"].startswith(SUMMARY_HEADER)


def test_find_cut_keeps_tool_results_with_their_call():
    msgs = [
        {"role": "user", "content": "a" * 400},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "glob", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "1", "content": "r" * 400},
        {"role": "assistant", "content": "done"},
    ]
    before = json.dumps(msgs)
    for keep in range(0, 400, 20):
        cut = find_cut(msgs, keep)
        assert msgs[cut]["role"] != "tool"
    assert json.dumps(msgs) == before  # untouched


def test_headless_path_imports_nothing_heavy():
    """`lic -p` must start fast: no torch, no UI libraries, no openai/httpx on the way."""
    import subprocess
    import sys

    from lichelp import SRC

    code = (
        "import sys; import dsv4.lic.cli, dsv4.lic.app, dsv4.lic.output, dsv4.lic.provider;"
        "print(sorted(m for m in ('torch', 'rich', 'prompt_toolkit', 'openai', 'httpx', 'numpy')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_backoff_is_exponential_without_retry_after_and_gives_up():
    delays = []
    steps = [
        {"status": 500, "retry_after": None},
        {"status": 502, "retry_after": None},
        {"status": 429, "retry_after": "3"},
        {"content": "ok"},
    ]
    with ScriptedServer(steps) as srv:
        client = ChatClient(Endpoint("t", srv.base_url, "m"), backoff=0.5, sleep=delays.append)
        assert client.complete([{"role": "user", "content": "hi"}]).content == "ok"
    assert delays == [0.5, 1.0, 3.0]
    with ScriptedServer([{"status": 503, "retry_after": None}] * 3) as srv:
        client = ChatClient(Endpoint("t", srv.base_url, "m"), max_retries=2, sleep=delays.append)
        with pytest.raises(ProviderError, match="HTTP 503"):
            client.complete([{"role": "user", "content": "hi"}])
        assert len(srv.requests) == 3


def test_local_provider_asks_the_server_for_its_model(lic_env, tmp_path, capsys):
    from dsv4.lic.cli import main

    with ScriptedServer([{"content": "hi from local"}], model="dsv4-tiny") as srv:
        rc = main(
            [
                "-p",
                "hello",
                "-C",
                str(tmp_path),
                "--provider",
                "local",
                "--base-url",
                srv.base_url,
                "--output-format",
                "json",
            ]
        )
    assert rc == 0 and json.loads(capsys.readouterr().out.splitlines()[-1])["final"] == "hi from local"
    assert srv.requests[0]["model"] == "dsv4-tiny"


def test_edit_file_keeps_crlf_line_endings(tmp_path):
    (tmp_path / "w.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    toolbox(tmp_path).call("edit_file", {"path": "w.txt", "old_string": "one\ntwo", "new_string": "1\n2"})
    assert (tmp_path / "w.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


def test_cost_counts_cached_prompt_tokens_at_their_price(lic_env, tmp_path):
    from dsv4.lic.provider import Usage

    u = Usage.from_api(
        {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000, "prompt_cache_hit_tokens": 800_000}
    )
    assert u.cached_tokens == 800_000
    assert (
        Usage.from_api({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}).cached_tokens == 3
    )
    settings = Settings(base_url="x", price_input=0.28, price_cached_input=0.028, price_output=0.42)
    ws = Workspace(tmp_path)
    agent = Agent(
        None, Toolbox(ws, Permissions(), Snapshots(ws)), Session.create(tmp_path, "m"), settings, ""
    )
    assert agent.cost(u) == pytest.approx(0.2 * 0.28 + 0.8 * 0.028 + 0.42)


def test_context_overflow_from_the_server_triggers_compaction_and_retry(lic_env, tmp_path):
    session = Session.create(tmp_path, "m")
    for i in range(4):
        session.add({"role": "user", "content": f"task {i} " + "x" * 4000})
        session.add({"role": "assistant", "content": f"answer {i}"})
    ws = Workspace(tmp_path)
    steps = [
        {"status": 400, "message": "This model's maximum context length is 4096 tokens"},
        {"content": "SUMMARY"},
        {"content": "final"},
    ]
    with ScriptedServer(steps) as srv:
        agent = Agent(
            ChatClient(Endpoint("t", srv.base_url, "m")),
            Toolbox(ws, Permissions(), Snapshots(ws)),
            session,
            Settings(base_url="", context_window=100_000),
            "sys",
        )
        res = agent.run("task 4")
    assert res.status == "ok" and res.final == "final"
    assert len(srv.requests) == 3 and srv.requests[2]["messages"][1]["content"].endswith("SUMMARY")
