"""Generated chat text -> OpenAI message pieces, incrementally (for streaming) and at the end.

The model writes an assistant turn in the dsv4 template: optional `<think>..</think>`
reasoning, content, and `<|tool_call|>{json}<|/tool_call|>` blocks. While streaming we
release content and reasoning as they grow, but never the inside of a tool-call block that
is still open (it becomes a `tool_calls` entry once complete, or content if it is not valid
JSON). `parse_assistant` (dsv4.data.chat) is the one parser of that format.
"""

from __future__ import annotations

import json
import uuid

from dsv4.data import specials as S
from dsv4.data.chat import parse_assistant

# Every special token starts with its only "<": a token cut at the end of the text is the
# text after its last "<", and that is one of these (proper) prefixes.
_CUT_SPECIALS = frozenset(t[:k] for t in S.SPECIAL_TOKENS for k in range(1, len(t)))
_LONGEST_SPECIAL = max(map(len, S.SPECIAL_TOKENS))


def tools_system_text(functions: list[dict], tool_choice=None) -> str:
    """The system-prompt description of the callable tools (OpenAI `tools` -> template)."""
    lines = [
        "# Tools",
        "You can call the functions below. To call one, write a tool-call block whose body is "
        'a JSON object {"name": <function name>, "arguments": {<arguments>}}; you may call '
        "several in a row. Results come back in tool-result turns.",
        json.dumps(functions, ensure_ascii=False),
    ]
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        lines.append(f"You must call the function {tool_choice['function'].get('name')!r}.")
    elif tool_choice == "required":
        lines.append("You must call at least one function.")
    return "\n".join(lines)


class ChatText:
    """Streams one generated assistant turn. Parsing is incremental: `base` marks a prefix of the
    text that is complete (no block left open, no turn end) and already parsed into
    `base_content` / `base_reasoning`, so each piece re-parses only the text after it — linear
    in the reply, not quadratic."""

    def __init__(self):
        self.call_id_prefix = f"call_{uuid.uuid4().hex[:16]}_"
        self.text = ""
        self.sent_content = ""
        self.sent_reasoning = ""
        self.base = 0
        self.base_content = ""
        self.base_reasoning = ""

    @staticmethod
    def _visible(seg: str, final: bool) -> str:
        if final:
            return seg
        open_at = seg.rfind(S.TOOL_CALL)
        if open_at >= 0 and seg.find(S.END_TOOL_CALL, open_at) < 0:
            return seg[:open_at]  # a tool call still being written: hold it back
        return seg

    @staticmethod
    def _complete(seg: str) -> bool:
        """True when `seg` parses independently of what follows: no turn end in it (text after
        one is ignored), no `<think>` left open, no special token cut at its end."""
        if S.END in seg or S.EOS in seg or seg.rfind(S.THINK) > seg.rfind(S.END_THINK):
            return False
        cut = seg.rfind("<", max(0, len(seg) - _LONGEST_SPECIAL))
        return cut < 0 or seg[cut:] not in _CUT_SPECIALS

    def feed(self, piece: str, final: bool = False) -> dict:
        """Add generated text; return the OpenAI delta ({"content"}/{"reasoning_content"}) it releases."""
        self.text += piece
        seg = self._visible(self.text[self.base :], final)
        msg = parse_assistant(seg)
        content = self.base_content + msg["content"]
        reasoning = self.base_reasoning + (msg.get("reasoning_content") or "")
        if self._complete(seg):
            self.base += len(seg)
            self.base_content, self.base_reasoning = content, reasoning
        delta = {}
        pairs = (("reasoning_content", reasoning, "sent_reasoning"), ("content", content, "sent_content"))
        for key, new, attr in pairs:
            sent = getattr(self, attr)
            if len(new) > len(sent) and new.startswith(sent):
                delta[key] = new[len(sent):]
                setattr(self, attr, new)
        return delta

    def message(self) -> dict:
        """The whole assistant message (content, reasoning_content, tool_calls), with tool-call
        ids unique to this response."""
        return parse_assistant(self.text, id_prefix=self.call_id_prefix)
