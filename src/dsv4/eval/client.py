"""A small OpenAI-compatible client (httpx) for evaluation: /v1/completions for base
models, /v1/chat/completions for chat models, with retries and exponential backoff.

Why not the `openai` package: we want exact control over what is retried (429, 5xx,
connection failures and timeouts — never a 4xx that will fail again) and over the
backoff (honouring Retry-After), and a plain text result. Works against DeepSeek's API,
vLLM, Ollama, llama.cpp server and our own `dsv4 serve`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import httpx

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
BACKOFF = 1.0  # seconds before the first retry; doubles each time (tests shrink it)
# A refused connection is rarely fixed by waiting long: give up on it sooner.
MAX_CONNECT_RETRIES = 2


class EndpointError(Exception):
    """A request that failed for good. `unreachable`: no HTTP answer at all."""

    def __init__(self, message: str, status: int | None = None, unreachable: bool = False):
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable


@dataclass
class ClientConfig:
    base_url: str
    model: str
    api: str = "chat"  # "chat" | "completions"
    api_key: str | None = None
    timeout: float = 120.0
    max_retries: int = 5
    backoff: float | None = None  # None: BACKOFF
    max_backoff: float = 30.0


class OpenAICompatClient:
    def __init__(self, cfg: ClientConfig):
        if cfg.api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {cfg.api!r}")
        self.cfg = cfg
        base = cfg.base_url.rstrip("/")
        # Accept both "http://host:8000" and "http://host:8000/v1".
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.http = httpx.Client(timeout=cfg.timeout, headers=headers)
        self.retries_done = 0  # for tests and the summary

    def close(self) -> None:
        self.http.close()

    def generate(self, prompt: str, *, system: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 512, stop: list[str] | None = None, seed: int | None = None) -> str:
        """One sample: the completion text (chat: the assistant message content)."""
        body: dict = {"model": self.cfg.model, "temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = seed
        if self.cfg.api == "chat":
            msgs = [{"role": "system", "content": system}] if system else []
            body["messages"] = msgs + [{"role": "user", "content": prompt}]
            url = self.base + "/chat/completions"
        else:
            body["prompt"] = prompt
            if stop:
                body["stop"] = stop
            url = self.base + "/completions"
        data = self._post(url, body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.cfg.api == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"unexpected response shape from {url}: {str(data)[:200]}") from None
        return text or ""

    def _post(self, url: str, body: dict) -> dict:
        last = ""
        backoff = BACKOFF if self.cfg.backoff is None else self.cfg.backoff
        connect_failures = 0
        for attempt in range(self.cfg.max_retries + 1):
            wait = min(self.cfg.max_backoff, backoff * 2**attempt) * (0.75 + 0.5 * random.random())
            try:
                r = self.http.post(url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                last, unreachable = f"cannot connect to {url}: {e}", True
                connect_failures += 1
                if connect_failures > MAX_CONNECT_RETRIES:
                    break
            except httpx.TransportError as e:  # read timeouts, dropped connections
                last, unreachable = f"request to {url} failed: {type(e).__name__}: {e}", False
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError:
                        raise EndpointError(f"{url} answered with non-JSON: {r.text[:200]!r}") from None
                last = f"HTTP {r.status_code} from {url}: {r.text[:300]}"
                if r.status_code not in RETRY_STATUS:
                    raise EndpointError(last, status=r.status_code)
                unreachable = False
                retry_after = r.headers.get("retry-after")
                if retry_after:
                    try:
                        wait = min(self.cfg.max_backoff, max(wait, float(retry_after)))
                    except ValueError:
                        pass
            if attempt < self.cfg.max_retries:
                self.retries_done += 1
                time.sleep(wait)
        raise EndpointError(f"{last} (gave up after {attempt} retries)",
                            unreachable=unreachable)
