"""A multi-turn chat session over the engine: the chat template in, streamed text out.

`ChatSession(engine).reply("hi")` yields the assistant's text as it is generated and then
records the turn (parsed by the template's parser, so tool calls and reasoning land in the
right fields). When the conversation outgrows the context, the oldest turns after the system
prompt are dropped first. `dsv4 chat` is a thin loop over this.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from dsv4.data import specials as SP
from dsv4.data.chat import parse_assistant
from dsv4.errors import UserError
from dsv4.infer.sampling import SamplingParams


class ChatSession:
    def __init__(self, engine, system: str | None = None, params: SamplingParams | None = None):
        self.engine, self.tok = engine, engine.tokenizer
        self.system = system
        self.params = params or SamplingParams(max_tokens=256, temperature=0.7)
        self.messages: list[dict] = []
        self.last_usage: dict = {}

    def reset(self) -> None:
        self.messages = []

    def _prompt(self) -> list[int]:
        """Template ids of the conversation, oldest turns dropped until it leaves room to answer."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        msgs = list(self.messages)
        room = min(self.params.max_tokens, self.engine.max_len // 4)
        while True:
            ids = self.tok.encode_chat(head + msgs, add_generation_prompt=True)
            if len(ids) + room <= self.engine.max_len or len(msgs) <= 1:
                break
            msgs = msgs[1:]
        if len(ids) >= self.engine.max_len:
            raise UserError(f"the message is too long for the model's context ({self.engine.max_len} tokens)")
        self.messages = msgs
        return ids

    def reply(self, user_text: str) -> Iterator[str]:
        """Stream the assistant's answer to `user_text`, then record both turns."""
        self.messages.append({"role": "user", "content": user_text})
        try:
            ids = self._prompt()
        except UserError:
            self.messages.pop()
            raise
        stops = [self.tok.token_id(SP.END), self.tok.eos_id]
        room = self.engine.max_len - len(ids)
        p = replace(self.params, max_tokens=min(self.params.max_tokens, room), stop_token_ids=stops)
        out = yield from self.engine.stream(ids, p)  # the stream's return value is the Output
        msg = parse_assistant(out.text)
        self.messages.append(msg)
        self.last_usage = {"prompt_tokens": len(ids), "completion_tokens": len(out.token_ids),
                           "finish_reason": out.finish_reason}
