"""Turning what a model said into a HumanEval completion (the text that follows the prompt).

- Base models (completions API, our checkpoints) continue the prompt: cut the text at the
  first stop sequence, i.e. where a new top-level statement begins.
- Chat models answer in prose with a markdown code block: extract the code, and when it
  repeats the whole function (signature included) keep it whole, placed after the prompt
  so that the prompt's imports and helper functions are re-attached and the model's
  definition is the one that counts (Python keeps the last `def`).
"""

from __future__ import annotations

import re

# Top-level statements that end a function body (Codex paper's stop set, plus a few).
STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#", "\n```"]
# The OpenAI API accepts at most 4 stop sequences: send the most common ones.
API_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint("]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def truncate_at_stops(text: str, stops: list[str] | None = None) -> str:
    stops = STOP_SEQUENCES if stops is None else stops
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a chat answer: the fenced block defining `entry_point` if there is one,
    else the first python (or untagged) block, else the whole text."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if not blocks:
        return text
    if entry_point:
        for _, body in blocks:
            if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", body, re.M):
                return body
    for lang, body in blocks:
        if lang in ("python", "py", "python3", ""):
            return body
    return blocks[0][1]


def completion_from_base(text: str) -> str:
    """A base model's continuation of the prompt."""
    return truncate_at_stops(text)


def completion_from_chat(prompt: str, text: str, entry_point: str) -> str:
    """A chat model's answer, as the text to append to the prompt."""
    code = extract_code(text, entry_point).rstrip() + "\n"
    if code.startswith(prompt):  # it echoed the prompt exactly: keep only what it added
        return code[len(prompt):]
    if re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        # The whole function again: append it after the prompt (whose docstring-only
        # function is valid Python), re-attaching the prompt's imports and helpers.
        return "\n" + code
    if code.strip() and not code.startswith((" ", "\t")):
        # A bare body that lost its indentation: indent it into the function.
        code = "".join("    " + ln if ln.strip() else ln for ln in code.splitlines(True))
    return code
