"""End to end: `lic -p` against a real `dsv4 serve` (a local checkpoint), no fakes on the model side.

The checkpoint is a small `baseline`-preset model (dim 128, 2 layers: the V4 `tiny` preset
learns the ~1100-token conversation ~5x slower per step on 2 cores, and the serve tests cover
its caches) with a byte-level BPE built by dsv4.data, saved with the train branch's
`write_model_files`. A random model never writes a
valid tool call, so the fixture *teaches* it (a few seconds of overfitting) the one
conversation this test will have: the exact messages lic sends (recorded from a run against
the scripted server), rendered the way the server renders them (tools described in the
system turn). At temperature 0 the real server then generates a real `<|tool_call|>` block
that its parser turns into an OpenAI `tool_calls` delta, lic executes it, and the model
answers "Done." on the second step. The fixture checks teacher-forced argmax with a margin
before saving, so greedy decoding reproduces the turn exactly.

What this proves: lic's streaming SSE client, tool-call deltas, usage accounting and exit
codes against the real server; `--ckpt` starting (and stopping) `dsv4 serve` by itself;
and connecting to one that is already running (non-streaming there).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from lichelp import SRC, last_json
from scripted_server import ScriptedServer, call

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

TASK = "Create hello.txt that says hi."
WRITE = {"path": "hello.txt", "content": "hi\n"}
FINAL = "Done."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lic(ws, home, *args, timeout=240):
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "LIC_HOME": str(home / "lichome"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("DEEPSEEK_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "dsv4.lic", "-p", TASK, "--permission-mode", "auto-edit", *args],
        cwd=ws, env=env, capture_output=True, text=True, timeout=timeout,
    )


def record_conversation(ws, home) -> dict:
    """The second request lic sends for TASK (system, user, tool call, tool result) + tools."""
    steps = [{"tool_calls": [call("write_file", WRITE)]}, {"content": FINAL}]
    with ScriptedServer(steps) as srv:
        r = lic(ws, home, "--provider", "local", "--base-url", srv.base_url, "--output-format", "json")
    assert r.returncode == 0, r.stderr
    (ws / "hello.txt").unlink()
    return srv.requests[1]


def server_prompt(request: dict) -> list[dict]:
    """The messages as `dsv4 serve` renders them: the tools described in the system turn."""
    from dsv4.serve.chatstate import tools_system_text

    msgs = [dict(m) for m in request["messages"]]
    text = tools_system_text([t["function"] for t in request["tools"]])
    assert msgs[0]["role"] == "system"
    msgs[0]["content"] += "\n\n" + text
    return msgs + [{"role": "assistant", "content": FINAL}]


def teach(model, ids, mask, max_steps=300, margin=3.0) -> int:
    """Overfit until every assistant token is the argmax by `margin` logits; returns steps.
    bf16 autocast (~2x faster here); the check runs in fp32, and the margin absorbs the
    server's bf16 prefill."""
    x = torch.tensor([ids[:-1]])
    tgt = torch.tensor(ids[1:])
    on = torch.tensor(mask[1:], dtype=torch.bool)
    y = torch.where(on, tgt, torch.full_like(tgt, -100))[None]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(max_steps):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 4:
            model.eval()
            with torch.no_grad():
                logits = model(x)[0][on]
            want = logits.gather(1, tgt[on][:, None])[:, 0]
            rest = logits.scatter(1, tgt[on][:, None], float("-inf")).max(1).values
            if bool((want - rest > margin).all()):
                return step + 1
    raise AssertionError("the tiny model did not learn the conversation")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dsv4.data.tokenizer import Tokenizer
    from dsv4.model.transformer import build_model
    from dsv4.train.checkpoint import write_model_files

    home = tmp_path_factory.mktemp("home")
    ws = home / "ws"
    ws.mkdir()
    (ws / "README.md").write_text("# greetings\n")
    cfg = home / "config" / "lic"
    cfg.mkdir(parents=True)
    # temperature 0: greedy. base_url: a port where nothing listens, so --ckpt must start a
    # server (and a stray server on 8000 cannot interfere).
    (cfg / "config.toml").write_text(
        f'[providers.local]\nbase_url = "http://127.0.0.1:{free_port()}/v1"\ntemperature = 0.0\n'
    )
    t0 = time.time()
    request = record_conversation(ws, home)
    msgs = server_prompt(request)
    # the tokenizer's corpus: this conversation's text (so it encodes in few tokens) + some code
    import inspect

    corpus = [json.dumps(msgs)] * 3 + [inspect.getsource(m) for m in (json, socket)]
    tok = Tokenizer.train(corpus, vocab_size=2048)
    ids, mask = tok.encode_chat(msgs, add_generation_prompt=False, return_mask=True)
    torch.manual_seed(0)
    model = build_model("baseline", vocab_size=tok.vocab_size, max_seq_len=2 * len(ids) + 256,
                        dim=128, n_layers=2, n_heads=4, head_dim=32)
    steps = teach(model, ids, mask)
    ckpt = home / "ckpt"
    ckpt.mkdir()
    write_model_files(ckpt, model.config.to_json(), model.state_dict(), {"tokenizer.json": tok.to_str()})
    print(f"fixture: {len(ids)} tokens, taught in {steps} steps, {time.time() - t0:.1f} s")
    return ws, home, ckpt


def check_result(ws, r):
    assert r.returncode == 0, r.stdout + r.stderr
    res = last_json(r.stdout)
    assert res["status"] == "ok" and res["exit_code"] == 0
    assert res["final"] == FINAL
    assert res["tool_calls"] == 1 and res["turns"] == 2
    # real counts from the server (an estimate would be used only if it reported none)
    assert res["usage"]["prompt_tokens"] > 100 and res["usage"]["completion_tokens"] > 10
    assert (ws / "hello.txt").read_text() == WRITE["content"]
    (ws / "hello.txt").unlink()


def test_ckpt_starts_serve_runs_a_tool_turn_and_stops_it(setup):
    ws, home, ckpt = setup
    t0 = time.time()
    r = lic(ws, home, "--ckpt", str(ckpt), "--output-format", "json")
    check_result(ws, r)
    m = re.search(r"starting dsv4 serve --ckpt .* on 127\.0\.0\.1:(\d+)", r.stderr)
    pid = re.search(r"dsv4 serve pid (\d+)", r.stderr)
    assert m and pid, r.stderr
    # the child is gone and its port closed once lic has exited
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid.group(1)), 0)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=1):
        pass
    print(f"lic --ckpt (start server + 2 steps): {time.time() - t0:.1f} s")


def test_connects_to_a_running_server_streamed_and_not(setup):
    from serve_fixtures import LiveServer

    ws, home, ckpt = setup
    srv = LiveServer(ckpt)
    try:
        t0 = time.time()
        args = ["--ckpt", str(ckpt), "--base-url", srv.url + "/v1", "--provider", "local"]
        r = lic(ws, home, *args, "--no-stream", "--output-format", "json")
        check_result(ws, r)
        assert "starting dsv4 serve" not in r.stderr
        assert "using the server already running" in r.stderr
        # streamed, event by event: the answer arrives as SSE text deltas, the call as one event
        r = lic(ws, home, *args, "--output-format", "stream-json")
        check_result(ws, r)
        events = [json.loads(line) for line in r.stdout.splitlines()]
        assert "".join(e["delta"] for e in events if e["type"] == "text") == FINAL
        calls = [e for e in events if e["type"] == "tool_call"]
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("write_file", WRITE)]
        results = [e for e in events if e["type"] == "tool_result"]
        assert len(results) == 1 and results[0]["ok"]
        print(f"lic against a running server (2 runs): {time.time() - t0:.1f} s")
    finally:
        srv.close()


def test_random_v4_tiny_model_completes_a_turn(tmp_path):
    """An untaught `tiny` model (every V4 component on) says nothing useful, but the turn must
    go through: a streamed reply within max_tokens, real usage, exit 0 in json mode."""
    from serve_fixtures import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", max_seq_len=4096)
    ws = tmp_path / "ws"
    ws.mkdir()
    cfg = tmp_path / "config" / "lic"
    cfg.mkdir(parents=True)
    # without max_tokens dsv4 serve generates up to the context: minutes for a random model
    (cfg / "config.toml").write_text(
        f'[providers.local]\nbase_url = "http://127.0.0.1:{free_port()}/v1"\nmax_tokens = 24\n'
    )
    t0 = time.time()
    r = lic(ws, tmp_path, "--ckpt", str(ckpt), "--output-format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    res = last_json(r.stdout)
    assert res["status"] == "ok" and res["turns"] == 1 and res["tool_calls"] == 0
    assert isinstance(res["final"], str)
    assert res["usage"]["prompt_tokens"] > 100 and 0 < res["usage"]["completion_tokens"] <= 24
    print(f"random tiny model, one turn incl. server start: {time.time() - t0:.1f} s")


def test_ckpt_that_is_not_a_checkpoint_fails_clearly(tmp_path):
    cfg = tmp_path / "config" / "lic"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text(f'[providers.local]\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n')
    bad = tmp_path / "not-a-ckpt"
    bad.mkdir()
    r = lic(tmp_path, tmp_path, "--ckpt", str(bad), "--output-format", "json")
    assert r.returncode == 2
    assert "dsv4 serve --ckpt" in r.stderr and "exited with code" in r.stderr
    assert "no checkpoint in" in r.stderr  # the server's own reason, from its log
    assert last_json(r.stdout)["status"] == "usage_error"
