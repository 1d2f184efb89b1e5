"""The scripted OpenAI-compatible server that drives LIC's tests (the one fake allowed).

It listens on 127.0.0.1 (real HTTP), answers POST /v1/chat/completions with the next
scripted step, streaming SSE when the request asks for it and plain JSON otherwise, and
GET /v1/models. Every request body is recorded, so tests can check what LIC sent back
(tool results, errors, resumed history). A step is a dict:

    {"content": "text"}                                  a plain answer
    {"tool_calls": [("edit_file", {...} or "raw json")]}  tool calls (+ optional "content")
    {"status": 429, "retry_after": "0"}                  an HTTP error instead of a reply
                                                         (retry_after None: no Retry-After header)
    {"delay": 5.0, ...}                                  wait before answering (Ctrl-C tests)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that hung up (Ctrl-C tests) is expected, not worth a traceback


def call(name: str, args) -> tuple[str, str]:
    return (name, args if isinstance(args, str) else json.dumps(args))


class ScriptedServer:
    def __init__(self, steps: list[dict], model: str = "scripted-model"):
        self.steps = list(steps)
        self.model = model
        self.requests: list[dict] = []
        self.request_times: list[float] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, status: int, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                t = time.time()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with server.lock:
                    server.requests.append(body)
                    server.request_times.append(t)
                    step = server.steps.pop(0) if server.steps else None
                if step and step.get("delay"):
                    time.sleep(step["delay"])
                if step is None:
                    self._json(400, {"error": {"message": "scripted server: script exhausted"}})
                    return
                if "status" in step:
                    retry = step.get("retry_after", "0")
                    self._json(
                        step["status"],
                        {"error": {"message": step.get("message", "scripted error")}},
                        {"Retry-After": retry} if retry is not None else {},
                    )
                    return
                server.reply(self, body, step)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- replies ------------------------------------------------------------------------
    def reply(self, h: BaseHTTPRequestHandler, body: dict, step: dict) -> None:
        content = step.get("content")
        calls = [
            {
                "id": f"call_{len(self.requests)}_{i}",
                "type": "function",
                "function": {"name": n, "arguments": a},
            }
            for i, (n, a) in enumerate(step.get("tool_calls", []))
        ]
        usage = {
            "prompt_tokens": 100 + len(json.dumps(body["messages"])) // 4,
            "completion_tokens": 10 + len(content or "") // 4,
            "total_tokens": 0,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = "tool_calls" if calls else "stop"
        if not body.get("stream"):
            msg = {"role": "assistant", "content": content}
            if calls:
                msg["tool_calls"] = calls
            h._json(
                200,
                {
                    "id": "cmpl",
                    "object": "chat.completion",
                    "model": self.model,
                    "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                    "usage": usage,
                },
            )
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(obj):
            data = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        def chunk(delta, finish_reason=None):
            return {
                "id": "cmpl",
                "object": "chat.completion.chunk",
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        send(chunk({"role": "assistant", "content": ""}))
        if content:  # split the text into several deltas, as real servers do
            for i in range(0, len(content), 7):
                send(chunk({"content": content[i : i + 7]}))
        for i, c in enumerate(calls):  # name first, then the arguments in two pieces
            args = c["function"]["arguments"]
            send(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": c["id"],
                                "type": "function",
                                "function": {"name": c["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            half = len(args) // 2
            for piece in (args[:half], args[half:]):
                send(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        send(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            send({"id": "cmpl", "object": "chat.completion.chunk", "choices": [], "usage": usage})
        send("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
