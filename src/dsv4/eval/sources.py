"""Where completions come from: an OpenAI-compatible endpoint or our checkpoint, each as
a `generator(problem, sample_index) -> completion` plus a `preflight(problem)` that makes
the first request and turns a failure that every request would share (no server, bad
key, unknown model) into one clear `UserError`.
"""

from __future__ import annotations

from dsv4.errors import UserError
from dsv4.eval.client import ClientConfig, EndpointError, OpenAICompatClient
from dsv4.eval.humaneval import GenerationError
from dsv4.eval.postprocess import API_STOP, completion_from_base, completion_from_chat

CHAT_SYSTEM = "You are an expert Python programmer. Answer with code only."
CHAT_TEMPLATE = (
    "Complete the following Python function. Reply with the complete function (signature, "
    "body and any imports it needs) in one ```python code block.\n\n```python\n{prompt}```"
)


class EndpointSource:
    def __init__(self, cfg: ClientConfig, temperature: float, max_new_tokens: int):
        self.client = OpenAICompatClient(cfg)
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def _raw(self, problem: dict) -> str:
        if self.client.cfg.api == "chat":
            text = self.client.generate(CHAT_TEMPLATE.format(prompt=problem["prompt"]), system=CHAT_SYSTEM,
                                        temperature=self.temperature, max_tokens=self.max_new_tokens)
            return completion_from_chat(problem["prompt"], text, problem["entry_point"])
        text = self.client.generate(problem["prompt"], temperature=self.temperature,
                                    max_tokens=self.max_new_tokens, stop=API_STOP)
        return completion_from_base(text)

    def generator(self, problem: dict, idx: int) -> str:
        try:
            return self._raw(problem)
        except EndpointError as e:
            raise GenerationError(str(e)) from None

    def preflight(self, problem: dict) -> str | None:
        try:
            return self._raw(problem)
        except EndpointError as e:
            if e.unreachable:
                raise UserError(f"endpoint unreachable: {e}") from None
            if e.status is not None and 400 <= e.status < 500 and e.status not in (408, 409, 429):
                raise UserError(f"the endpoint refused the request: {e}") from None
            return None  # transient: the sample is tried again in the pool (and on resume)

    def close(self) -> None:
        self.client.close()
