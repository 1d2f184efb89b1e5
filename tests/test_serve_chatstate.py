"""Streaming parse of an assistant turn: the incremental deltas add up to the one-shot parse,
whatever the piece boundaries, and the work per piece stays bounded (no re-parse of the past)."""

from __future__ import annotations

import random

import pytest

from dsv4.data import specials as S
from dsv4.data.chat import parse_assistant
from dsv4.serve import chatstate
from dsv4.serve.chatstate import ChatText

REPLIES = [
    "plain answer with < and <| in code: if a <b: pass",
    f"{S.THINK}let me think{S.END_THINK}The answer is 4.{S.END}ignored after the end",
    f"intro {S.TOOL_CALL}" + '{"name": "f", "arguments": {"x": 1}}' + f"{S.END_TOOL_CALL} outro",
    f"{S.TOOL_CALL}not json{S.END_TOOL_CALL}then {S.THINK}late thought{S.END_THINK} more",
    f"a{S.THINK}open thought never closed",
    f"x{S.EOS}y",
]


def token_boundaries(text: str) -> list[int]:
    """Cut points a detokenizer can produce: special tokens are single tokens, never split."""
    inside = set()
    for t in S.SPECIAL_TOKENS:
        at = text.find(t)
        while at >= 0:
            inside.update(range(at + 1, at + len(t)))
            at = text.find(t, at + 1)
    return [i for i in range(1, len(text)) if i not in inside]


def stream(text: str, cuts: list[int]) -> tuple[str, str]:
    st, content, reasoning = ChatText(), "", ""
    bounds = [0, *cuts, len(text)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        d = st.feed(text[a:b])
        content += d.get("content", "")
        reasoning += d.get("reasoning_content", "")
    d = st.feed("", final=True)
    return content + d.get("content", ""), reasoning + d.get("reasoning_content", "")


@pytest.mark.parametrize("text", REPLIES)
def test_deltas_add_up_to_the_whole_parse_for_any_split(text):
    want = parse_assistant(text)
    rng = random.Random(0)
    for _ in range(30):
        ok = token_boundaries(text)
        cuts = sorted(rng.sample(ok, k=min(len(ok), rng.randint(1, 12))))
        content, reasoning = stream(text, cuts)
        # Held-back tool calls are released in the final message, not as content deltas.
        if "tool_calls" not in want:
            assert content == want["content"]
        assert reasoning == (want.get("reasoning_content") or "")


def test_each_piece_parses_only_the_new_text(monkeypatch):
    seen = []
    real = chatstate.parse_assistant

    def spy(text, **kw):
        seen.append(len(text))
        return real(text, **kw)

    monkeypatch.setattr(chatstate, "parse_assistant", spy)
    st = ChatText()
    for _ in range(2000):
        st.feed("word ")
    assert max(seen) <= len("word ")  # a linear stream, not a quadratic one
