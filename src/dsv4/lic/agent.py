"""The agent loop: ask the model, run the tool calls it makes, feed results back, repeat.

One `run(prompt)` is one user turn. Each model reply is a step; tool results (and tool
errors, refusals, malformed-JSON complaints) go back as `tool` messages, so the model
sees and can fix its mistakes; the loop itself never dies on a tool error. A call that
fails three times with the same name and arguments stops the run with a clear message
(the model is stuck). Ctrl-C stops the run between two consistent states: writes are
atomic, every message is already journaled, and unanswered calls are closed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from dsv4.lic.compaction import compact, estimate_tokens
from dsv4.lic.config import Settings
from dsv4.lic.errors import ProviderError, Refused, ToolError
from dsv4.lic.provider import ChatClient, ToolCall, Usage
from dsv4.lic.session import Session
from dsv4.lic.tools import TOOL_SPECS, Toolbox

MAX_TOOL_RESULT_CHARS = 30_000
REPEAT_LIMIT = 3
TOOLS_TOKENS = len(json.dumps(TOOL_SPECS)) // 4  # the tool schemas ride along with every request


class Events:
    """What the loop reports as it goes; the REPL and the headless formats override these."""

    def text(self, delta: str) -> None: ...
    def tool_call(self, name: str, arguments: str) -> None: ...
    def tool_result(self, name: str, result: str, ok: bool) -> None: ...
    def notice(self, text: str) -> None: ...
    def step(self, usage: Usage, total: Usage, cost: float) -> None: ...


@dataclass
class RunResult:
    status: str  # ok | max_turns | repeated_failure | interrupted | provider_error
    final: str = ""
    turns: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    error: str = ""


class Agent:
    def __init__(
        self,
        client: ChatClient,
        toolbox: Toolbox,
        session: Session,
        settings: Settings,
        system: str,
        events: Events | None = None,
    ):
        self.client = client
        self.toolbox = toolbox
        self.session = session
        self.settings = settings
        self.system = system
        self.events = events or Events()
        self.total = Usage()  # this process's usage across runs

    def cost(self, u: Usage) -> float:
        s = self.settings
        cached_price = s.price_input if s.price_cached_input is None else s.price_cached_input
        fresh = u.prompt_tokens - u.cached_tokens
        return (
            fresh * s.price_input + u.cached_tokens * cached_price + u.completion_tokens * s.price_output
        ) / 1e6

    def api_messages(self) -> list[dict]:
        return [{"role": "system", "content": self.system}, *self.session.messages]

    # -- compaction ---------------------------------------------------------------------
    def compact(self, force: bool = False, keep: int | None = None) -> str:
        """Summarise old turns if near the window (or if forced); keep ~`keep` tokens verbatim."""
        window = self.settings.context_window
        used = estimate_tokens(self.api_messages()) + TOOLS_TOKENS
        if not force and used < self.settings.compact_ratio * window:
            return ""
        if keep is None:
            keep = int(window * 0.25) if not force else int(window * 0.1)
        out = compact(self.client, self.session.messages, keep)
        if out is None:
            return "nothing to compact"
        messages, usage = out
        self.total.add(usage)
        before = len(self.session.messages)
        self.session.replace(messages)
        note = (
            f"compacted the history: {before} messages -> {len(messages)} "
            f"(~{used} -> ~{estimate_tokens(self.api_messages())} tokens)"
        )
        self.events.notice(note)
        return note

    def _complete(self):
        """One model call; if the server says the context is too long, compact once and retry."""
        try:
            return self.client.complete(self.api_messages(), TOOL_SPECS, on_text=self.events.text)
        except ProviderError as e:
            if e.status != 400 or "context" not in str(e).lower():
                raise
            # the window setting was wrong for this server: keep only a quarter of what we sent
            keep = estimate_tokens(self.session.messages) // 4
            if not self.compact(force=True, keep=keep).startswith("compacted"):
                raise
            return self.client.complete(self.api_messages(), TOOL_SPECS, on_text=self.events.text)

    # -- one tool call ------------------------------------------------------------------
    def _execute(self, call: ToolCall) -> tuple[str, bool]:
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError as e:
            return (
                f"Error: the arguments of this {call.name} call are not valid JSON ({e}). "
                "Send the call again with the arguments as one valid JSON object."
            ), False
        try:
            result = self.toolbox.call(call.name, args)
            ok = True
        except Refused as e:
            result, ok = str(e), False
        except ToolError as e:
            result, ok = f"Error: {e}", False
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a bug in a tool must not end the session
            result, ok = f"Error: {call.name} failed unexpectedly: {type(e).__name__}: {e}", False
        if len(result) > MAX_TOOL_RESULT_CHARS:
            result = result[:MAX_TOOL_RESULT_CHARS] + f"\n[result truncated: {len(result)} chars in total]"
        return result, ok

    # -- the loop -----------------------------------------------------------------------
    def run(self, prompt: str) -> RunResult:
        turn = self.session.last_turn() + 1
        self.session.record({"type": "turn", "n": turn})
        self.toolbox.snapshots.begin_turn(turn)
        self.session.add({"role": "user", "content": prompt})
        res = RunResult(status="max_turns")
        failures: Counter = Counter()
        try:
            for _ in range(self.settings.max_turns):
                self.compact()
                reply = self._complete()
                res.turns += 1
                res.usage.add(reply.usage)
                self.total.add(reply.usage)
                self.session.add(reply.to_message())
                self.session.record({"type": "usage", "turn": turn, **reply.usage.as_dict()})
                self.events.step(reply.usage, res.usage, self.cost(res.usage))
                if not reply.tool_calls:
                    res.status, res.final = "ok", reply.content
                    break
                stop = ""
                for call in reply.tool_calls:
                    if stop:
                        self.session.add(
                            {
                                "role": "tool",
                                "tool_call_id": call.id,
                                "content": "Skipped: the run was stopped.",
                            }
                        )
                        continue
                    res.tool_calls += 1
                    self.events.tool_call(call.name, call.arguments)
                    result, ok = self._execute(call)
                    self.session.add({"role": "tool", "tool_call_id": call.id, "content": result})
                    self.events.tool_result(call.name, result, ok)
                    sig = (call.name, call.arguments.strip())
                    if ok:
                        failures.pop(sig, None)
                        continue
                    failures[sig] += 1
                    if failures[sig] >= REPEAT_LIMIT:
                        stop = (
                            f"Stopped: the same call {call.name}({call.arguments.strip()[:200]}) failed "
                            f"{REPEAT_LIMIT} times; last error: {result[:300]}"
                        )
                if stop:
                    res.status, res.error = "repeated_failure", stop
                    break
            else:
                res.error = (
                    f"Stopped: reached the limit of {self.settings.max_turns} model steps for one turn."
                )
        except KeyboardInterrupt:
            self.session.repair()
            res.status, res.error = (
                "interrupted",
                "Interrupted: files are consistent; the session can be resumed.",
            )
        except ProviderError as e:
            self.session.repair()
            res.status, res.error = "provider_error", str(e)
        res.cost = self.cost(res.usage)
        if res.error:
            self.events.notice(res.error)
        return res
