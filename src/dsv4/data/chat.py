"""The dsv4 chat template: OpenAI-style messages <-> text with special tokens.

SFT, the inference server and LIC's local provider all speak this one format. Every turn
is `<role marker>body<|end|>`; nothing (no newline, no space) is inserted between pieces.
Shown one turn per line for readability only:

    <|system|>You are a helpful coding assistant.<|end|>
    <|user|>What is 2+2?<|end|>
    <|assistant|><think>Simple sum.</think>Let me check.<|tool_call|>{"name": "py",
        "arguments": {"code": "2+2"}}<|/tool_call|><|end|>     <- (one line, no newline)
    <|tool_result|>4<|/tool_result|><|end|>
    <|assistant|>It is 4.<|end|>
    <|assistant|>                      <- generation prompt (add_generation_prompt=True)

Messages are dicts with `role` in system/user/assistant/tool and `content` (a string, None,
or a list of `{"type": "text", "text": ...}` parts). Assistant messages may carry
`reasoning_content` (rendered as `<think>..</think>` before the content) and `tool_calls`,
either OpenAI-shaped `{"type": "function", "function": {"name", "arguments": "<json>"}}` or
plain `{"name", "arguments": {...}}`; each becomes `<|tool_call|>{"name": .., "arguments":
{..}}<|/tool_call|>` (JSON, arguments as an object when they parse as JSON) after the
content. A `tool` message becomes its own turn `<|tool_result|>content<|/tool_result|><|end|>`
(its `tool_call_id`/`name` are not rendered: results follow the calls in order).

`render_chat` returns the TEXT; encode it with `allow_special=True`. When the contents are
untrusted (a user may type "<|end|>"), prefer `Tokenizer.encode_chat`, which encodes only the
template's markers as special tokens and every content string as plain text, and can also
return the SFT loss mask (1 on the assistant's own tokens: think, content, tool calls and
its closing `<|end|>`; 0 on the prompt, the role markers and tool results).
`parse_assistant` turns a generated assistant turn back into a message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dsv4.data import specials as S
from dsv4.errors import UserError

ROLE_MARKERS = {"system": S.SYSTEM, "user": S.USER, "assistant": S.ASSISTANT}

# A segment of a rendered conversation: (text, is_special, trained_on).
Segment = tuple[str, bool, bool]


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; only text parts exist here
        out = []
        for part in content:
            if (
                isinstance(part, dict)
                and part.get("type", "text") == "text"
                and isinstance(part.get("text"), str)
            ):
                out.append(part["text"])
            else:
                raise UserError(f"{where}: only text content parts are supported, got {part!r:.80}")
        return "".join(out)
    raise UserError(f"{where}: content must be a string, null or a list of text parts")


def _tool_call_json(call: Any, where: str) -> str:
    if not isinstance(call, dict):
        raise UserError(f"{where}: a tool call must be an object")
    fn = call.get("function", call)  # OpenAI nests name/arguments under "function"
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: tool call without a function name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass  # keep a non-JSON argument string as a JSON string value
    return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)


def chat_segments(messages: list[dict], add_generation_prompt: bool = True) -> list[Segment]:
    """The conversation as (text, is_special, trained_on) pieces; see the module docstring."""
    if not isinstance(messages, list):
        raise UserError("messages must be a list of {role, content} objects")
    segs: list[Segment] = []
    for i, m in enumerate(messages):
        where = f"message {i}"
        if not isinstance(m, dict):
            raise UserError(f"{where}: must be an object with 'role' and 'content'")
        role = m.get("role")
        body = _content_text(m.get("content"), where)
        if role == "tool":
            segs += [(S.TOOL_RESULT, True, False), (body, False, False)]
            segs += [(S.END_TOOL_RESULT, True, False), (S.END, True, False)]
        elif role in ("system", "user"):
            segs += [(ROLE_MARKERS[role], True, False), (body, False, False), (S.END, True, False)]
        elif role == "assistant":
            segs.append((S.ASSISTANT, True, False))
            reasoning = m.get("reasoning_content", m.get("reasoning"))
            if reasoning is not None:
                segs += [(S.THINK, True, True), (_content_text(reasoning, where), False, True)]
                segs.append((S.END_THINK, True, True))
            segs.append((body, False, True))
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise UserError(f"{where}: tool_calls must be a list")
            for call in calls:
                segs += [(S.TOOL_CALL, True, True), (_tool_call_json(call, where), False, True)]
                segs.append((S.END_TOOL_CALL, True, True))
            segs.append((S.END, True, True))
        else:
            raise UserError(f"{where}: unknown role {role!r} (use system, user, assistant or tool)")
    if add_generation_prompt:
        segs.append((S.ASSISTANT, True, False))
    return [s for s in segs if s[0]]  # drop empty content pieces


def render_chat(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The chat template as text with special tokens (encode with `allow_special=True`)."""
    return "".join(text for text, _, _ in chat_segments(messages, add_generation_prompt))


_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in S.SPECIAL_TOKENS) + ")")


def parse_assistant(text: str, id_prefix: str = "call_") -> dict:
    """Parse a generated assistant turn (the text after `<|assistant|>`) into a message.

    Tool-call ids are `id_prefix` + their index; a server passes a prefix unique to the
    response, so that ids never repeat across the turns of a conversation (as OpenAI's).

    Stops at the first `<|end|>` or `<|endoftext|>`. Returns `{"role": "assistant",
    "content", ["reasoning_content"], ["tool_calls"]}` with OpenAI-shaped tool calls
    (`arguments` a JSON string). A tool-call block whose body is not a JSON object with a
    "name" stays in the content verbatim, so nothing the model said is lost.
    """
    content, reasoning, calls = [], None, []
    parts = _SPLIT.split(text)
    i = 0
    while i < len(parts):
        p = parts[i]
        if p in (S.END, S.EOS):
            break
        if p == S.THINK:
            body, i = _until(parts, i + 1, S.END_THINK)
            reasoning = (reasoning or "") + body
            continue
        if p == S.TOOL_CALL:
            body, i = _until(parts, i + 1, S.END_TOOL_CALL)
            call = _parse_call(body)
            if call is None:
                content.append(S.TOOL_CALL + body + S.END_TOOL_CALL)
            else:
                call["id"] = f"{id_prefix}{len(calls)}"
                calls.append(call)
            continue
        content.append(p)
        i += 1
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = calls
    return msg


def _until(parts: list[str], i: int, closing: str) -> tuple[str, int]:
    """Join parts from i up to `closing` (or a turn end); return the text and the next index."""
    out = []
    while i < len(parts) and parts[i] not in (closing, S.END, S.EOS):
        out.append(parts[i])
        i += 1
    if i < len(parts) and parts[i] == closing:
        i += 1
    return "".join(out), i


def _parse_call(body: str) -> dict | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    args_str = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"type": "function", "function": {"name": obj["name"], "arguments": args_str}}
