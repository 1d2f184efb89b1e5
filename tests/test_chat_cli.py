"""`dsv4 chat` and the ChatSession under it: streamed replies, history, context trimming."""

import io

import pytest

from dsv4.cli import main
from dsv4.infer.chat import ChatSession
from dsv4.infer.load import load_engine
from dsv4.infer.sampling import SamplingParams
from serve_fixtures import make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("chat"), max_seq_len=128)


def test_session_streams_and_records_turns(ckpt):
    eng = load_engine(ckpt, autocast=False, max_batch=1)
    s = ChatSession(eng, system="sys", params=SamplingParams(max_tokens=6, temperature=0))
    text = "".join(s.reply("hello"))
    assert [m["role"] for m in s.messages] == ["user", "assistant"]
    assert s.messages[1]["content"] == text or s.last_usage["finish_reason"] == "length"
    assert 1 <= s.last_usage["completion_tokens"] <= 6
    # the second turn's prompt contains the first turn: its prompt is longer
    first = s.last_usage["prompt_tokens"]
    "".join(s.reply("again"))
    assert s.last_usage["prompt_tokens"] > first and len(s.messages) == 4


def test_session_drops_oldest_turns_when_context_fills(ckpt):
    eng = load_engine(ckpt, autocast=False, max_batch=1)
    s = ChatSession(eng, params=SamplingParams(max_tokens=8, temperature=0))
    for i in range(12):
        "".join(s.reply(f"message number {i} " * 3))
        assert s.last_usage["prompt_tokens"] + 8 <= eng.max_len
    assert s.messages[-2]["content"].startswith("message number 11")
    assert len(s.messages) < 24  # old turns were dropped


def test_chat_cli_matches_session(ckpt, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\n/reset\nhello\n/exit\nnever read\n"))
    assert main(["chat", "--ckpt", str(ckpt), "--temperature", "0", "--max-tokens", "6"]) == 0
    out = capsys.readouterr().out
    s = ChatSession(load_engine(ckpt, max_batch=1), params=SamplingParams(max_tokens=6, temperature=0))
    want = "".join(s.reply("hello"))
    # /reset makes the second "hello" a fresh conversation: the same reply twice
    assert out == f"{want}\n{want}\n"


def test_chat_cli_bad_checkpoint(tmp_path, capsys):
    assert main(["chat", "--ckpt", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
