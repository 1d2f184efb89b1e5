"""A Chat Completions client on the standard library: streaming SSE, tool calls, retries.

Why not the `openai` package or httpx: importing `openai` takes ~0.4 s and `httpx` ~0.12 s
here (it pulls in rich, trio, anyio), against LIC's whole startup budget of 0.3 s to the
first request; `urllib.request` costs ~0.015 s and honours the usual *_PROXY variables.
The wire format is the public Chat Completions API, so DeepSeek's API, vLLM and
`dsv4 serve` all work.

Retries: 429 and 5xx (and connection failures before any byte arrived) are retried with
exponential backoff, honouring `Retry-After`. 401/403 and unreachable endpoints become a
`ProviderError` whose message says what to check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dsv4.lic.errors import ProviderError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


@dataclass
class Endpoint:
    name: str
    base_url: str
    model: str | None
    api_key: str | None = None
    api_key_env: str | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the provider's prefix cache (cheaper)

    @classmethod
    def from_api(cls, u: dict) -> Usage:
        """DeepSeek reports `prompt_cache_hit_tokens`, OpenAI `prompt_tokens_details.cached_tokens`."""
        cached = u.get("prompt_cache_hit_tokens") or (u.get("prompt_tokens_details") or {}).get(
            "cached_tokens"
        )
        return cls(u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0, cached or 0)

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "total_tokens": self.total,
        }


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text, exactly as the model produced it


@dataclass
class Reply:
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None

    def to_message(self) -> dict:
        # "" rather than null: every server we know accepts it next to tool_calls.
        msg: dict = {"role": "assistant", "content": self.content or ""}
        if self.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        return msg


def _new_call_id() -> str:
    """For servers that send tool calls without ids: ids must be unique in the history."""
    import secrets

    return "call_" + secrets.token_hex(6)


def estimate_tokens(text: str) -> int:
    """~4 characters per token: used only when a server reports no usage."""
    return max(1, len(text) // 4)


class ChatClient:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        stream: bool = True,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.endpoint = endpoint
        self.stream = stream
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.sleep = sleep

    def _request(self, path: str, body: dict | None = None):
        """Open a request; returns the response object (raises urllib errors)."""
        import urllib.request

        headers = {"Content-Type": "application/json", "User-Agent": "lic/0.1", "Accept": "*/*"}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(
            self.endpoint.base_url.rstrip("/") + path,
            data=data,
            headers=headers,
            method="GET" if body is None else "POST",
        )
        from dsv4.lic.transport import urlopen

        return urlopen(req, timeout=self.timeout)

    # -- errors -------------------------------------------------------------------------
    def _http_error(self, status: int, body: str) -> ProviderError:
        try:
            detail = json.loads(body).get("error", body)
            detail = detail.get("message", detail) if isinstance(detail, dict) else detail
        except (ValueError, AttributeError):
            detail = body
        detail = str(detail).strip()[:300]
        ep = self.endpoint
        if status in (401, 403):
            if ep.api_key_env and not ep.api_key:
                hint = f"${ep.api_key_env} is not set"
            elif ep.api_key_env:
                hint = f"check the key in ${ep.api_key_env}"
            else:
                hint = "pass --api-key-env VAR naming the variable that holds the key"
            return ProviderError(
                f"authentication failed ({status}) at {ep.base_url}: {hint}. {detail}", "auth", status
            )
        return ProviderError(f"{ep.name} returned HTTP {status}: {detail}", "http", status)

    def _unreachable(self, e: BaseException) -> ProviderError:
        reason = getattr(e, "reason", e)
        hint = ""
        if self.endpoint.name == "local":
            hint = (
                " Start the local server with `dsv4 serve`, or pick another provider (--provider/--base-url)."
            )
        return ProviderError(f"cannot reach {self.endpoint.base_url} ({reason}).{hint}", "unreachable")

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * (2**attempt)
        if retry_after:
            try:
                delay = float(retry_after)
            except ValueError:
                pass
        self.sleep(min(max(delay, 0.0), 60.0))

    # -- requests -----------------------------------------------------------------------
    def resolve_model(self) -> str:
        """The configured model, else the first one the server lists (handy for `local`)."""
        if self.endpoint.model:
            return self.endpoint.model
        import urllib.error

        try:
            with self._request("/models") as r:
                listing = json.loads(r.read())
            self.endpoint.model = listing["data"][0]["id"]
        except urllib.error.HTTPError as e:
            raise self._http_error(e.code, e.read().decode("utf-8", "replace")) from None
        except (urllib.error.URLError, OSError) as e:
            raise self._unreachable(e) from None
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProviderError(
                f"{self.endpoint.base_url}/models lists no model; pass --model", "protocol"
            ) from None
        return self.endpoint.model

    def complete(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Reply:
        import http.client
        import urllib.error

        body: dict = {"model": self.resolve_model(), "messages": messages, "stream": self.stream}
        if tools:
            body["tools"] = tools
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                with self._request("/chat/completions", body) as r:
                    if self.stream and "text/event-stream" in (r.headers.get("content-type") or ""):
                        reply = self._read_sse(r, on_text)
                    else:
                        reply = self._parse_full(json.loads(r.read() or b"null"), on_text)
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")
                if e.code in RETRY_STATUS and not last:
                    self._wait(attempt, e.headers.get("retry-after"))
                    continue
                raise self._http_error(e.code, text) from None
            except urllib.error.URLError as e:  # before any byte arrived: refused, DNS, TLS
                if attempt >= min(self.max_retries, 1):  # one quick retry, then say so clearly
                    raise self._unreachable(e) from None
                self.sleep(min(self.backoff * 0.5, 5.0))
                continue
            except (http.client.HTTPException, OSError) as e:
                raise ProviderError(
                    f"connection to {self.endpoint.base_url} failed mid-response ({type(e).__name__}: {e})",
                    "unreachable",
                ) from None
            except ValueError as e:
                raise ProviderError(
                    f"{self.endpoint.name} sent a reply that is not JSON: {e}", "protocol"
                ) from None
            if not reply.usage.total:  # server without usage reporting: estimate
                reply.usage = Usage(
                    estimate_tokens(json.dumps(messages)),
                    estimate_tokens(reply.content + "".join(c.arguments for c in reply.tool_calls)),
                )
            return reply
        raise AssertionError("unreachable")

    def _parse_full(self, data, on_text) -> Reply:
        try:
            choice = data["choices"][0]
            msg = choice["message"]
        except (TypeError, KeyError, IndexError):
            raise ProviderError(
                f"{self.endpoint.name} sent an unexpected reply: {str(data)[:200]}", "protocol"
            ) from None
        reply = Reply(content=msg.get("content") or "", finish_reason=choice.get("finish_reason"))
        for c in msg.get("tool_calls") or []:
            fn = c.get("function") or {}
            reply.tool_calls.append(
                ToolCall(c.get("id") or _new_call_id(), fn.get("name") or "", fn.get("arguments") or "")
            )
        u = data.get("usage") or {}
        reply.usage = Usage.from_api(u)
        if on_text and reply.content:
            on_text(reply.content)
        return reply

    def _read_sse(self, r, on_text) -> Reply:
        reply = Reply()
        parts: list[str] = []
        calls: dict[int, dict] = {}
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if chunk.get("error"):
                err = chunk["error"]
                msg = err.get("message", err) if isinstance(err, dict) else err
                raise ProviderError(f"{self.endpoint.name} error: {msg}", "http")
            if chunk.get("usage"):
                u = chunk["usage"]
                reply.usage = Usage.from_api(u)
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    parts.append(delta["content"])
                    if on_text:
                        on_text(delta["content"])
                for tc in delta.get("tool_calls") or []:
                    slot = calls.setdefault(
                        tc.get("index", len(calls)), {"id": "", "name": "", "arguments": ""}
                    )
                    slot["id"] = tc.get("id") or slot["id"]
                    fn = tc.get("function") or {}
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
                if choice.get("finish_reason"):
                    reply.finish_reason = choice["finish_reason"]
        reply.content = "".join(parts)
        reply.tool_calls = [
            ToolCall(c["id"] or _new_call_id(), c["name"], c["arguments"]) for _, c in sorted(calls.items())
        ]
        return reply

    def close(self) -> None:
        pass
