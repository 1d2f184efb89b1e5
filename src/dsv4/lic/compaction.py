"""Context compaction: when the history nears the context window, summarise its old part.

The history is cut at a message boundary that keeps tool calls with their results; the
older part is rendered as a plain transcript and the model writes a summary of it, which
replaces it. The recent part (about `keep_tokens`) stays verbatim, so the model keeps
the exact code it was just working on. Also run on demand by /compact.
"""

from __future__ import annotations

import json

from dsv4.lic.provider import ChatClient, Usage

SUMMARY_PROMPT = """Summarise the coding session transcript above for your own later use; it will replace
the transcript. Keep: the user's requests (the current one verbatim), decisions made, files read or
changed and how, commands run and their outcome, errors met, and what remains to do. Be concise and
concrete (paths, function names). Do not call tools."""
SUMMARY_HEADER = "[Summary of the earlier part of this session, written when the context filled up]\n"
MAX_RENDERED_CHARS = 2_000


def estimate_tokens(messages: list[dict]) -> int:
    return sum(len(json.dumps(m, ensure_ascii=False)) for m in messages) // 4


def _render(messages: list[dict]) -> str:
    out = []
    for m in messages:
        text = m.get("content") or ""
        if len(text) > MAX_RENDERED_CHARS:
            text = text[:MAX_RENDERED_CHARS] + " [...]"
        for c in m.get("tool_calls") or []:
            text += f"\n-> {c['function']['name']}({c['function']['arguments'][:MAX_RENDERED_CHARS]})"
        out.append(f"## {m['role']}\n{text.strip()}")
    return "\n\n".join(out)


def find_cut(messages: list[dict], keep_tokens: int) -> int:
    """Index where the verbatim tail starts: a user/assistant message, tail <= ~keep_tokens."""
    cut, tail = len(messages), 0
    for i in range(len(messages) - 1, -1, -1):
        tail += estimate_tokens([messages[i]])
        if tail > keep_tokens:
            break
        if messages[i]["role"] in ("user", "assistant"):
            cut = i
    if cut == len(messages):  # even the last message is over budget: keep only the last exchange
        cut = max((i for i, m in enumerate(messages) if m["role"] in ("user", "assistant")), default=0)
    return cut


def compact(client: ChatClient, messages: list[dict], keep_tokens: int) -> tuple[list[dict], Usage] | None:
    """The compacted history and the summary call's usage, or None if there is too little to cut."""
    cut = find_cut(messages, keep_tokens)
    if cut < 2:
        return None
    request = [
        {"role": "system", "content": "You write precise summaries of coding sessions."},
        {"role": "user", "content": _render(messages[:cut]) + "\n\n---\n" + SUMMARY_PROMPT},
    ]
    reply = client.complete(request)
    new = [{"role": "user", "content": SUMMARY_HEADER + reply.content.strip()}]
    if messages[cut]["role"] == "user":
        new.append({"role": "assistant", "content": "Understood; I will continue from this summary."})
    return new + messages[cut:], reply.usage
