"""`dsv4 serve` end to end: the official `openai` client against a real server on 127.0.0.1.

The checkpoint is a tiny random model, taught (a few seconds of overfitting) to answer one
question with a tool call, so that the tool path is exercised by real generation. The server
runs in fp32 so that its outputs can be compared exactly with the engine run in-process.
"""

import asyncio
import json
import time

import httpx
import openai
import pytest

from dsv4.data.chat import parse_assistant
from dsv4.infer.load import load_engine
from dsv4.infer.sampling import SamplingParams
from serve_fixtures import (
    WEATHER_CALL,
    WEATHER_QUESTION,
    WEATHER_TOOL,
    LiveServer,
    make_tiny_checkpoint,
)

KEY = "sk-test-key"
MAX_BATCH = 8


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), max_seq_len=1024, teach=True)


@pytest.fixture(scope="module")
def server(ckpt):
    srv = LiveServer(ckpt, "--fp32", "--max-batch", str(MAX_BATCH), api_key=KEY)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(ckpt):
    """The same model in-process: what the server must reproduce."""
    return load_engine(ckpt, autocast=False, max_batch=1)


def local_chat(local, messages, max_tokens):
    tok = local.tokenizer
    ids = tok.encode_chat(messages)
    stops = [tok.token_id("<|end|>"), tok.eos_id]
    return local.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0, stop_token_ids=stops))[0]


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_matches_engine_and_streams_the_same(client, local):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}]
    want = local_chat(local, msgs, 24)
    want_content = parse_assistant(want.text)["content"]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == want_content
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.prompt_tokens == want.prompt_tokens
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            pieces.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert "".join(pieces) == want_content and finish == want.finish_reason
    assert usage.completion_tokens == len(want.token_ids)


def test_chat_logprobs_and_n_with_seed(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert 1 <= len(lp) <= 5 and all(len(e.top_logprobs) == 3 for e in lp)
    assert all(e.logprob <= 0 and abs(e.logprob - e.top_logprobs[0].logprob) < 1e-4 for e in lp)  # greedy
    a = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=8, temperature=1.0, n=2, seed=7)
    b = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=8, temperature=1.0, n=2, seed=7)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_completions(client, local):
    want = local.generate("import os\n", SamplingParams(max_tokens=12, temperature=0))[0]
    r = client.completions.create(model="tiny", prompt="import os\n", max_tokens=12, temperature=0,
                                  logprobs=2)
    assert r.choices[0].text == want.text and r.usage.completion_tokens == len(want.token_ids)
    assert len(r.choices[0].logprobs.token_logprobs) == len(want.token_ids)
    assert all(len(t) <= 2 for t in r.choices[0].logprobs.top_logprobs)
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="import os\n", max_tokens=12, temperature=0, stream=True))
    assert text == want.text
    echo = client.completions.create(model="tiny", prompt=["a", "b"], max_tokens=3, temperature=0, echo=True)
    assert [c.text[:1] for c in echo.choices] == ["a", "b"]
    stop = client.completions.create(model="tiny", prompt="import os\n", max_tokens=12, temperature=0,
                                     stop=[want.text[3:5]] if len(want.text) > 5 else None)
    if len(want.text) > 5:
        assert stop.choices[0].text == want.text[:want.text.index(want.text[3:5])]
        assert stop.choices[0].finish_reason == "stop"


def test_tool_calls(client):
    tools = [{"type": "function", "function": WEATHER_TOOL}]
    msgs = [{"role": "user", "content": WEATHER_QUESTION}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=tools, max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == WEATHER_CALL["name"]
    assert json.loads(call.function.arguments) == WEATHER_CALL["arguments"]
    assert not choice.message.content
    # streaming: the call arrives as a tool_calls delta, no half-written JSON in the content
    content, calls, finish = "", [], None
    for chunk in client.chat.completions.create(model="tiny", messages=msgs, tools=tools, max_tokens=60,
                                                temperature=0, stream=True):
        for ch in chunk.choices:
            content += ch.delta.content or ""
            calls += ch.delta.tool_calls or []
            finish = ch.finish_reason or finish
    assert finish == "tool_calls" and content == "" and len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    # the tool result goes back through the template
    follow = msgs + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    r2 = client.chat.completions.create(model="tiny", messages=follow, tools=tools, max_tokens=5)
    assert r2.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_sixteen_concurrent_streams_all_finish_and_match(server, local):
    prompts = [f"def f{i}(x):\n    return x" + "*" * i for i in range(16)]
    want = [local.generate(p, SamplingParams(max_tokens=20, temperature=0))[0] for p in prompts]
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)

    async def one(p):
        text, finish = "", None
        stream = await aclient.completions.create(model="tiny", prompt=p, max_tokens=20, temperature=0,
                                                  stream=True)
        async for chunk in stream:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def main():
        return await asyncio.gather(*(one(p) for p in prompts))

    got = asyncio.run(main())
    assert [g[0] for g in got] == [w.text for w in want]
    assert all(g[1] in ("stop", "length") for g in got)
    h = server.health()
    assert h["running"] == 0 and h["free_slots"] == MAX_BATCH


USER = [{"role": "user", "content": "x"}]
BAD = [
    ("chat", b"{not json", 400, None),
    ("chat", b"[1, 2]", 400, None),
    ("chat", {"model": "tiny"}, 400, None),
    ("chat", {"model": "tiny", "messages": "hi"}, 400, None),
    ("chat", {"model": "tiny", "messages": []}, 400, None),
    ("chat", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400, None),
    ("chat", {"model": "tiny", "messages": USER, "temperature": "hot"}, 400, None),
    ("chat", {"model": "tiny", "messages": USER, "temperature": 5}, 400, None),
    ("chat", {"model": "tiny", "messages": USER, "stream": "yes"}, 400, None),
    ("chat", {"model": "tiny", "messages": USER, "max_tokens": "a"}, 400, None),
    ("chat", {"model": "tiny", "messages": USER, "max_tokens": 0}, 400, None),
    ("chat", {"model": "tiny", "messages": USER, "max_tokens": 5000}, 400,
     "context_length_exceeded"),
    ("chat", {"model": "tiny", "messages": USER, "n": 0}, 400, None),
    ("chat", {"model": "tiny", "messages": USER, "n": 99}, 400, None),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x" * 6000}]}, 400,
     "context_length_exceeded"),
    ("chat", {"model": "gpt-5", "messages": USER}, 404, "model_not_found"),
    ("chat", {"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, 400,
     None),
    ("completions", {"model": "tiny", "prompt": ""}, 400, None),
    ("completions", {"model": "tiny", "prompt": [1, 99999]}, 400, None),
    ("completions", {"model": "tiny", "prompt": "x", "logprobs": 50}, 400, None),
    ("completions", {"model": "tiny", "prompt": {"a": 1}}, 400, None),
]


@pytest.mark.parametrize("route,body,status,code", BAD)
def test_bad_input_gives_openai_error(server, route, body, status, code):
    url = server.url + ("/v1/chat/completions" if route == "chat" else "/v1/completions")
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url, content=data, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and err["type"]
    if code:
        assert err["code"] == code


def test_auth_routes_and_health(server):
    r = httpx.get(server.url + "/v1/models", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(server.url + "/v2/nothing", timeout=10).status_code == 404
    r = httpx.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 405 and "error" in r.json()
    assert server.health()["status"] == "ok"


def test_disconnect_mid_stream_frees_the_slot(server):
    before = server.health()["cancelled"]
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1000, "temperature": 1.0, "seed": 1,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert all(line.startswith("data: ") or line == "" for line in got)
    # the stream is closed after a few tokens of 1000: the server cancels and frees the slot
    deadline = time.time() + 15
    while time.time() < deadline:
        h = server.health()
        if h["cancelled"] > before and h["running"] == 0:
            break
        time.sleep(0.1)
    assert h["cancelled"] == before + 1 and h["running"] == 0 and h["free_slots"] == MAX_BATCH
    # and the server still answers
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "y", "max_tokens": 2},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_scheduler_survives_an_engine_failure(local):
    """A step that raises fails the requests in flight with an error; the loop carries on."""
    from dsv4.serve.scheduler import Scheduler

    sched = Scheduler(local).start()
    real_step, calls = local.step, []

    def flaky_step():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real_step()

    local.step = flaky_step
    ids = local.tokenizer.encode("import os")

    async def run_one(max_tokens):
        h = sched.submit(ids, SamplingParams(max_tokens=max_tokens, temperature=0))
        out = []
        async for d in h.events():
            out += d.token_ids
        return out

    try:
        with pytest.raises(RuntimeError, match="boom"):
            asyncio.run(run_one(50))
        assert not local.has_work() and len(local.free_slots) == local.max_batch
        assert len(asyncio.run(run_one(5))) >= 1  # the next request is served
    finally:
        del local.step  # back to the class's method
        sched.stop()
