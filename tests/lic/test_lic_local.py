"""The `local` provider's launcher without a model: flags, a running server, failures, ids.

(The run against a real `dsv4 serve` with a checkpoint is test_lic_local_e2e.py.)
"""

from __future__ import annotations

import os
import re
import socket

import pytest
from lichelp import last_json, run_cli
from scripted_server import ScriptedServer, call

from dsv4.errors import UserError
from dsv4.lic.config import load_settings
from dsv4.lic.local import ensure_local


def dead_url() -> str:
    """A base URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def write_config(lic_env, text: str) -> None:
    d = lic_env / "config" / "lic"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.toml").write_text(text)


def test_ckpt_uses_a_running_server_and_takes_its_context_length(repo, lic_env):
    with ScriptedServer([{"content": "hi"}], max_model_len=2000) as srv:
        r = run_cli(["-p", "x", "--provider", "local", "--base-url", srv.base_url,
                     "--ckpt", str(lic_env / "nowhere"), "--output-format", "json"], repo)
        assert r.returncode == 0, r.stderr
        assert last_json(r.stdout)["final"] == "hi"
        assert "using the server already running" in r.stderr and "starting dsv4 serve" not in r.stderr
        s = load_settings(repo, {"provider": "local", "base_url": srv.base_url})
        assert s.context_window == 8192
        assert ensure_local(s) is None and s.context_window == 2000  # the server's limit wins


def test_ckpt_flag_errors(repo, lic_env):
    write_config(lic_env, f'[providers.local]\nbase_url = "{dead_url()}"\n')
    r = run_cli(["-p", "x", "--ckpt", str(lic_env / "nowhere"), "--output-format", "json"], repo)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert last_json(r.stdout)["status"] == "usage_error"
    s = load_settings(repo, {"provider": "deepseek", "ckpt": "/x"})
    with pytest.raises(UserError, match="does not apply"):
        ensure_local(s)


def test_health_timeout_is_bounded_and_kills_the_child(repo, lic_env):
    # the child needs seconds to import torch: a 0.3 s budget must fail fast and clean up
    write_config(lic_env, f'[providers.local]\nbase_url = "{dead_url()}"\nserve_timeout = 0.3\n')
    (lic_env / "ckpt").mkdir()
    r = run_cli(["-p", "x", "--ckpt", str(lic_env / "ckpt")], repo)
    assert r.returncode == 2
    assert re.search(r"did not answer http://127\.0\.0\.1:\d+/health within 0\.3 s", r.stderr), r.stderr
    pid = int(re.search(r"dsv4 serve pid (\d+)", r.stderr).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_reused_tool_call_ids_are_made_unique(repo, lic_env):
    """`dsv4 serve` numbers each reply's calls from call_0; the history must still pair them."""
    steps = [
        {"tool_calls": [call("read_file", {"path": "README.md"})], "ids": ["call_0"]},
        {"tool_calls": [call("glob", {"pattern": "*.md"})], "ids": ["call_0"]},
        {"content": "done"},
    ]
    with ScriptedServer(steps) as srv:
        r = run_cli(["-p", "x", "--base-url", srv.base_url, "--output-format", "json"], repo)
    assert r.returncode == 0, r.stderr
    msgs = srv.requests[2]["messages"]
    ids = [c["id"] for m in msgs for c in m.get("tool_calls") or []]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert [m["tool_call_id"] for m in msgs if m["role"] == "tool"] == ids


def test_temperature_and_max_tokens_are_sent_only_when_set(repo, lic_env):
    with ScriptedServer([{"content": "a"}, {"content": "b"}]) as srv:
        assert run_cli(["-p", "x", "--base-url", srv.base_url], repo).returncode == 0
        write_config(lic_env, "temperature = 0.0\nmax_tokens = 7\n")
        assert run_cli(["-p", "x", "--base-url", srv.base_url], repo).returncode == 0
    first, second = srv.requests
    assert "temperature" not in first and "max_tokens" not in first
    assert second["temperature"] == 0.0 and second["max_tokens"] == 7
    write_config(lic_env, 'max_tokens = "many"\n')
    r = run_cli(["-p", "x", "--base-url", dead_url()], repo)
    assert r.returncode == 2 and "max_tokens" in r.stderr
