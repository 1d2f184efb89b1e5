"""Headless output: `--output-format text | json | stream-json`.

    text         progress (tool calls, notices) on stderr, the final answer on stdout
    json         nothing until the end; then one JSON object on the last line of stdout
    stream-json  one JSON event per line as things happen; the last line is the result

The result object: {"type": "result", "status", "final", "turns", "tool_calls",
"usage": {prompt_tokens, completion_tokens, total_tokens}, "cost_usd", "session_id",
"error", "exit_code"}.
"""

from __future__ import annotations

import json
import sys

from dsv4.lic.agent import Events, RunResult
from dsv4.lic.provider import Usage

# status -> process exit code (documented in `lic --help`)
EXIT_CODES = {"ok": 0, "max_turns": 1, "repeated_failure": 1, "provider_error": 3, "interrupted": 130}


def short_args(arguments: str, limit: int = 120) -> str:
    a = " ".join(arguments.split())
    return a if len(a) <= limit else a[: limit - 3] + "..."


def result_object(res: RunResult, session_id: str) -> dict:
    return {
        "type": "result",
        "status": res.status,
        "final": res.final,
        "turns": res.turns,
        "tool_calls": res.tool_calls,
        "usage": res.usage.as_dict(),
        "cost_usd": round(res.cost, 6),
        "session_id": session_id,
        "error": res.error,
        "exit_code": EXIT_CODES[res.status],
    }


class TextEvents(Events):
    def __init__(self, out=None, err=None):
        self.out, self.err = out or sys.stdout, err or sys.stderr

    def tool_call(self, name, arguments):
        print(f"• {name}({short_args(arguments)})", file=self.err, flush=True)

    def tool_result(self, name, result, ok):
        if not ok:
            print(f"  ! {result.splitlines()[0][:200] if result else ''}", file=self.err, flush=True)

    def notice(self, text):
        print(f"lic: {text}", file=self.err, flush=True)

    def finish(self, res: RunResult, session_id: str) -> None:
        if res.final:
            print(res.final, file=self.out, flush=True)
        print(
            f"lic: {res.turns} steps, {res.tool_calls} tool calls, {res.usage.total} tokens "
            f"(${res.cost:.4f}), session {session_id}",
            file=self.err,
            flush=True,
        )


class JsonEvents(Events):
    def __init__(self, out=None):
        self.out = out or sys.stdout

    def finish(self, res: RunResult, session_id: str) -> None:
        print(json.dumps(result_object(res, session_id), ensure_ascii=False), file=self.out, flush=True)


class StreamJsonEvents(JsonEvents):
    def _emit(self, obj: dict) -> None:
        print(json.dumps(obj, ensure_ascii=False), file=self.out, flush=True)

    def text(self, delta):
        self._emit({"type": "text", "delta": delta})

    def tool_call(self, name, arguments):
        self._emit({"type": "tool_call", "name": name, "arguments": arguments})

    def tool_result(self, name, result, ok):
        self._emit({"type": "tool_result", "name": name, "ok": ok, "result": result})

    def notice(self, text):
        self._emit({"type": "notice", "text": text})

    def step(self, usage: Usage, total: Usage, cost: float):
        self._emit(
            {"type": "usage", "step": usage.as_dict(), "total": total.as_dict(), "cost_usd": round(cost, 6)}
        )


FORMATS = {"text": TextEvents, "json": JsonEvents, "stream-json": StreamJsonEvents}
