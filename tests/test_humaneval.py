"""HumanEval evaluation: pass@k, post-processing, the samples source, and a real HTTP
OpenAI-compatible test server (retries, resume, bad input)."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dsv4.cli import main
from dsv4.eval.humaneval import EvalSetup, evaluate, load_problems
from dsv4.eval.passk import estimate, parse_ks, pass_at_k
from dsv4.eval.postprocess import completion_from_chat, extract_code, truncate_at_stops

PROBLEMS = load_problems()


def test_pass_at_k_matches_closed_form():
    for n in range(1, 25):
        for c in range(0, n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(200, 0, 100) == 0.0 and pass_at_k(200, 200, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    assert estimate([(10, 5), (10, 0)], [1, 10, 100]) == {"pass@1": 0.25, "pass@10": 0.5}
    assert parse_ks("10, 1,100") == [1, 10, 100]
    with pytest.raises(ValueError):
        parse_ks("1,x")


def test_postprocessing():
    assert truncate_at_stops("    return x\n\ndef other():\n    pass") == "    return x\n"
    assert truncate_at_stops("    return x\nprint(f(1))\n") == "    return x"
    answer = ("Sure!\n```text\nnot code\n```\n```python\nimport math\n\ndef helper(x):\n    return x\n"
              "```\nand\n```python\ndef f(a):\n    return helper(a)\n```\nDone.")
    assert extract_code(answer, "f") == "def f(a):\n    return helper(a)\n"
    assert extract_code(answer) == "import math\n\ndef helper(x):\n    return x\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # unclosed fence
    prompt = 'from math import pi\n\n\ndef f(r):\n    """area"""\n'
    # whole function repeated: kept after the prompt, whose imports are re-attached
    comp = completion_from_chat(prompt, "```python\ndef f(r):\n    return pi * r * r\n```", "f")
    ns: dict = {}
    exec(prompt + comp, ns)
    assert ns["f"](1.0) == pytest.approx(math.pi)
    # exact echo of the prompt: only the added part
    assert completion_from_chat(prompt, f"```python\n{prompt}    return 0\n```", "f") == "    return 0\n"
    # a body that lost its indentation is put back into the function
    assert completion_from_chat(prompt, "return pi", "f") == "    return pi\n"


def _write_samples(path, completions: dict[str, str]) -> None:
    with open(path, "w") as f:
        for tid, comp in completions.items():
            f.write(json.dumps({"task_id": tid, "completion": comp}) + "\n")


def test_canonical_solutions_all_pass_and_rerun_resumes(tmp_path, capsys):
    samples = tmp_path / "canonical.jsonl"
    _write_samples(samples, {t: p["canonical_solution"] for t, p in PROBLEMS.items()})
    out = tmp_path / "out"
    t0 = time.monotonic()
    assert main(["eval", "humaneval", "--samples", str(samples), "--out", str(out), "--workers", "2"]) == 0
    first = time.monotonic() - t0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"] == 1.0 and summary["tasks"] == 164
    assert summary["status_counts"] == {"passed": 164}
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 164 and {r["task_id"] for r in rows} == set(PROBLEMS)
    assert all({"task_id", "completion", "passed", "status", "duration"} <= set(r) for r in rows)
    assert "pass@1" in capsys.readouterr().out
    assert first < 60
    # an interrupted run: keep 150 rows and half a line; the rerun does only the rest
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:150]) + "\n" + lines[150][:20])
    assert main(["eval", "humaneval", "--samples", str(samples), "--out", str(out), "--workers", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_rows"] == 150 and summary["samples"] == 164 and summary["pass@1"] == 1.0
    assert len((out / "results.jsonl").read_text().splitlines()) == 164


def test_wrong_completions_all_fail(tmp_path):
    samples = [(t, "    return None\n") for t in PROBLEMS]
    s = evaluate(EvalSetup(source="samples", ks=[1]), str(tmp_path), samples=samples, workers=2,
                 progress=False)
    assert s["pass@1"] == 0.0 and s["tasks"] == 164
    assert s["status_counts"].get("passed", 0) == 0


def test_bad_samples_files(tmp_path, capsys):
    def run_with(text: str) -> str:
        f = tmp_path / "s.jsonl"
        f.write_text(text)
        assert main(["eval", "humaneval", "--samples", str(f), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dsv4: error:") and "Traceback" not in err
        return err

    good = json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"})
    assert ":2: not valid JSON" in run_with(good + "\n{oops\n")
    assert ":1: each line must be an object" in run_with(json.dumps({"task_id": "HumanEval/0"}) + "\n")
    err = run_with(good + "\n" + json.dumps({"task_id": "HumanEval/999", "completion": "x"}) + "\n")
    assert "unknown HumanEval task id" in err and "HumanEval/999" in err
    assert "no samples" in run_with("\n")
    assert main(["eval", "humaneval", "--samples", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "humaneval"]) == 2
    assert "exactly one source" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# A tiny OpenAI-compatible server over real HTTP. It answers each HumanEval prompt with
# the canonical solution, dressed the way a base or chat model would, and can be told to
# fail (status codes or empty answers) for the first few requests.


class FakeModel:
    def __init__(self):
        self.fail_queue: list[int] = []  # HTTP statuses to answer with before succeeding
        self.empty = False
        self.requests = 0
        self.failures = 0
        self.key = None
        self.lock = threading.Lock()

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests += 1
            if self.fail_queue:
                self.failures += 1
                return self.fail_queue.pop(0), {"error": {"message": "busy"}}
        if body.get("model") != "fake-coder":
            return 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
        text = body["prompt"] if path.endswith("/completions") and "prompt" in body \
            else body["messages"][-1]["content"]
        prob = next(p for p in PROBLEMS.values() if p["prompt"] in text)
        canon = prob["canonical_solution"]
        if self.empty:
            content = ""
        elif path == "/v1/completions":
            content = canon + "\n\ndef unrelated():\n    return 42\n"  # must be cut at the stop
        else:  # chat: the whole function again, minus the prompt's imports
            start = prob["prompt"].index(f"def {prob['entry_point']}(")
            content = f"Here is the code:\n```python\n{prob['prompt'][start:]}{canon}```\nHope it helps."
        if path == "/v1/completions":
            return 200, {"choices": [{"text": content, "index": 0}]}
        return 200, {"choices": [{"message": {"role": "assistant", "content": content}, "index": 0}]}


@pytest.fixture
def server():
    model = FakeModel()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if model.key and self.headers.get("Authorization") != f"Bearer {model.key}":
                status, data = 401, {"error": {"message": "bad key"}}
            else:
                status, data = model.answer(self.path, body)
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    model.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield model
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    import dsv4.eval.client as client
    monkeypatch.setattr(client, "BACKOFF", 0.01)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_endpoint_eval_over_http_with_retries(server, tmp_path, api, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    server.key = "sk-test"
    server.fail_queue = [503, 429, 500]
    out = tmp_path / "out"
    rc = main(["eval", "humaneval", "--base-url", server.url, "--model", "fake-coder", "--api", api,
               "--api-key-env", "FAKE_KEY", "--limit", "6", "-n", "2", "--k", "1,2,10",
               "--workers", "2", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["pass@1"] == 1.0 and s["pass@2"] == 1.0 and "pass@10" not in s
    assert s["tasks"] == 6 and s["samples"] == 12
    assert server.failures == 3 and server.requests == 12 + 3
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert all("unrelated" not in r["completion"] for r in rows)


def test_endpoint_errors_then_resume(server, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "humaneval", "--base-url", server.url, "--model", "fake-coder", "--limit", "5",
            "--workers", "2", "--out", str(out)]
    server.empty = True  # a model that returns nothing: a per-sample error, not a crash
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["status_counts"] == {"error": 5} and s["pass@1"] == 0.0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert all("empty completion" in r["error"] for r in rows)
    # the rerun regenerates exactly the failed samples
    server.empty = False
    before = server.requests
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["pass@1"] == 1.0 and server.requests - before == 5
    # and a third run has nothing left to do
    before = server.requests
    assert main(args) == 0
    assert server.requests == before and json.loads((out / "summary.json").read_text())["resumed_rows"] == 5
    # a larger --limit reuses the 5 rows and generates only the new tasks
    before = server.requests
    assert main([a if a != "5" else "7" for a in args]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert server.requests - before == 2 and s["resumed_rows"] == 5 and s["tasks"] == 7
    # the same --out with other settings is refused rather than mixed
    assert main(args[:-2] + ["--temperature", "0.5", "--out", str(out)]) == 2
    assert "different run" in capsys.readouterr().err


def test_endpoint_unreachable_or_refusing(server, tmp_path, capsys):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    t0 = time.monotonic()
    assert main(["eval", "humaneval", "--base-url", f"http://127.0.0.1:{port}", "--model", "m",
                 "--limit", "2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and time.monotonic() - t0 < 15
    assert main(["eval", "humaneval", "--base-url", server.url, "--model", "no-such-model",
                 "--limit", "2", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and re.search(r"not found", err)
    assert main(["eval", "humaneval", "--base-url", server.url, "--out", str(tmp_path / "c")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "humaneval", "--base-url", "localhost:8000", "--model", "m"]) == 2
    assert "http://host:port" in capsys.readouterr().err


def test_ckpt_source_missing_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "humaneval", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_ckpt_source_batches_engine_calls(tmp_path, monkeypatch):
    """The --ckpt adapter against a stand-in engine with the real engine's interface:
    requests from the worker threads are batched, never run concurrently, and post-processed."""
    import sys
    import types
    from dataclasses import dataclass, field

    @dataclass
    class SamplingParams:
        max_tokens: int = 64
        temperature: float = 1.0
        seed: int | None = None
        stop: list = field(default_factory=list)

    class Engine:
        def __init__(self):
            self.busy = False
            self.batches: list[int] = []

        def generate(self, prompts, params):
            assert not self.busy, "engine used from two threads at once"
            self.busy = True
            time.sleep(0.05)
            self.batches.append(len(prompts))
            outs = []
            for prompt, sp in zip(prompts, params, strict=True):
                assert "\ndef " in sp.stop and sp.max_tokens == 64
                prob = next(p for p in PROBLEMS.values() if p["prompt"] == prompt)
                outs.append(types.SimpleNamespace(text=prob["canonical_solution"] + "\ndef junk(:\n"))
            self.busy = False
            return outs

    engine = Engine()
    load = types.ModuleType("dsv4.infer.load")
    load.load_engine = lambda ckpt_dir, **kw: engine
    sampling = types.ModuleType("dsv4.infer.sampling")
    sampling.SamplingParams = SamplingParams
    monkeypatch.setitem(sys.modules, "dsv4.infer", types.ModuleType("dsv4.infer"))
    monkeypatch.setitem(sys.modules, "dsv4.infer.load", load)
    monkeypatch.setitem(sys.modules, "dsv4.infer.sampling", sampling)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    out = tmp_path / "out"
    assert main(["eval", "humaneval", "--ckpt", str(ckpt), "--limit", "8", "--workers", "4",
                 "--max-new-tokens", "64", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["pass@1"] == 1.0 and s["samples"] == 8 and s["source"] == "ckpt"
    assert sum(engine.batches) == 8 and max(engine.batches) > 1


def test_persistent_server_errors_become_error_rows(server, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "humaneval", "--base-url", server.url, "--model", "fake-coder", "--limit", "2",
            "--workers", "1", "--out", str(out)]
    server.fail_queue = [503] * 12  # the first sample exhausts its retries twice (preflight + pool)
    assert main(args) == 0
    rows = {r["task_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["HumanEval/0"]["status"] == "error" and "HTTP 503" in rows["HumanEval/0"]["error"]
    assert rows["HumanEval/1"]["status"] == "passed"
    assert main(args) == 0  # the server recovered: only the failed sample is redone
    s = json.loads((out / "summary.json").read_text())
    assert s["status_counts"] == {"passed": 2} and s["resumed_rows"] == 1
