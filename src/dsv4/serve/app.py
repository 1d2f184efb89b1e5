"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/completions, /v1/chat/completions, /health.

Every request is validated before it reaches the engine (types, ranges, the model name, the
prompt against the context length); every failure is an OpenAI-style JSON error with a 4xx
code (5xx only for a fault of ours). Generation goes through the `Scheduler` (continuous
batching); a streaming client that disconnects has its sequences cancelled, which frees
their cache slots at the next decode step.

Chat prompts use the dsv4 chat template (`Tokenizer.encode_chat`: markers as special
tokens, contents as plain text). Tool definitions are described to the model in the system
turn; a generated `<|tool_call|>{json}<|/tool_call|>` block becomes an OpenAI `tool_calls`
entry (`dsv4.data.chat.parse_assistant`) and the finish reason `tool_calls`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dsv4.data import specials as S
from dsv4.errors import UserError
from dsv4.infer.sampling import SamplingParams
from dsv4.serve.chatstate import ChatText, tools_system_text
from dsv4.serve.schemas import APIError, ChatCompletionRequest, CompletionRequest


def create_app(scheduler, tokenizer, model_name: str = "dsv4", api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="dsv4", docs_url=None, redoc_url=None)
    engine = scheduler.engine
    max_len = engine.max_len
    created = int(time.time())

    # ---- errors: always {"error": {...}} -------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_req, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(APIError(400, "request body is not valid JSON").body(), 400)
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"invalid value for {loc or 'body'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(APIError(400, msg, param=loc or None).body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body(), e.status_code)

    @app.exception_handler(Exception)
    async def _internal(_req, e: Exception):
        return JSONResponse(APIError(500, f"internal error: {e}", type="server_error").body(), 500)

    def auth(request: Request) -> None:
        if api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           type="invalid_request_error", code="invalid_api_key")

    # ---- helpers -------------------------------------------------------------------------------
    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{model_name}'",
                           code="model_not_found", param="model")

    def sampling(req, prompt_len: int, max_tokens: int | None, stop_ids: list[int], index: int,
                 logprobs: int | None) -> SamplingParams:
        if prompt_len >= max_len:
            raise APIError(400, f"this model's maximum context length is {max_len} tokens; the prompt "
                           f"has {prompt_len}", code="context_length_exceeded", param="messages")
        room = max_len - prompt_len
        if max_tokens is not None and max_tokens > room:
            raise APIError(400, f"this model's maximum context length is {max_len} tokens; the prompt "
                           f"has {prompt_len} and max_tokens is {max_tokens} (at most {room})",
                           code="context_length_exceeded", param="max_tokens")
        seed = None if req.seed is None else req.seed + index
        return SamplingParams(max_tokens=max_tokens or room, temperature=req.temperature,
                              top_p=max(req.top_p, 1e-9),
                              top_k=req.top_k, seed=seed, stop=req.stop_list(), stop_token_ids=stop_ids,
                              logprobs=logprobs, ignore_eos=req.ignore_eos)

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def token_str(i: int) -> str:
        return tokenizer.id_to_text(i) if hasattr(tokenizer, "id_to_text") else tokenizer.decode([i])

    async def run(request: Request, jobs: list[tuple[list[int], SamplingParams]]):
        """Submit every (prompt, params); yield (index, Delta) as they come; cancel on exit."""
        handles = [scheduler.submit(p, sp) for p, sp in jobs]
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, h):
            try:
                async for d in h.events():
                    await queue.put((i, d))
            except Exception as e:
                await queue.put((i, e))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
        left = len(handles)
        try:
            while left:
                try:
                    i, d = await asyncio.wait_for(queue.get(), timeout=1.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if isinstance(d, Exception):
                    raise APIError(500, str(d), type="server_error")
                if d.finish_reason is not None:
                    left -= 1
                yield i, d
        finally:
            for h in handles:
                scheduler.cancel(h)
            for t in tasks:
                t.cancel()

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    # ---- routes ----------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **scheduler.stats()}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "dsv4", "max_model_len": max_len}]}

    @app.get("/v1/models/{name}", dependencies=[Depends(auth)])
    async def model_info(name: str):
        check_model(name)
        return {"id": model_name, "object": "model", "created": created, "owned_by": "dsv4",
                "max_model_len": max_len}

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        p = req.prompt
        if isinstance(p, str):
            prompts = [p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [p]
        else:
            prompts = list(p)
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        ids_list = []
        for x in prompts:
            ids = tokenizer.encode(x) if isinstance(x, str) else list(x)
            if not ids:
                raise APIError(400, "prompt must not be empty", param="prompt")
            if any(i < 0 or i >= engine.model.config.vocab_size for i in ids):
                raise APIError(400, "prompt token id out of range", param="prompt")
            ids_list.append(ids)
        jobs = [(ids, sampling(req, len(ids), req.max_tokens, [], k * req.n + j, req.logprobs))
                for k, ids in enumerate(ids_list) for j in range(req.n)]
        rid, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        prompt_tokens = sum(len(x) for x in ids_list)
        echo = [(tokenizer.decode(ids) if req.echo else "") for ids in ids_list]

        def logprobs_obj(lps):
            if req.logprobs is None:
                return None
            return {"tokens": [token_str(lp["token"]) for lp in lps],
                    "token_logprobs": [lp["logprob"] for lp in lps],
                    "top_logprobs": [{token_str(t): v for t, v in lp["top"]} for lp in lps],
                    "text_offset": []}

        def chunk(i, text, lps, finish):
            return {"id": rid, "object": "text_completion", "created": now, "model": model_name,
                    "choices": [{"index": i, "text": text, "logprobs": logprobs_obj(lps),
                                 "finish_reason": finish}]}

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def gen():
                n_out = 0
                for i in range(len(jobs)):
                    if echo[i // req.n]:
                        yield sse(chunk(i, echo[i // req.n], [], None))
                async for i, d in run(request, jobs):
                    n_out += len(d.token_ids)
                    if d.text or d.finish_reason or d.logprobs:
                        yield sse(chunk(i, d.text, d.logprobs, d.finish_reason))
                if include_usage:
                    yield sse({"id": rid, "object": "text_completion", "created": now, "model": model_name,
                               "choices": [], "usage": usage(prompt_tokens, n_out)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream")

        texts = [""] * len(jobs)
        lps = [[] for _ in jobs]
        finish = [None] * len(jobs)
        n_out = 0
        async for i, d in run(request, jobs):
            texts[i] += d.text
            lps[i] += d.logprobs
            finish[i] = d.finish_reason or finish[i]
            n_out += len(d.token_ids)
        choices = [{"index": i, "text": echo[i // req.n] + texts[i], "logprobs": logprobs_obj(lps[i]),
                    "finish_reason": finish[i]} for i in range(len(jobs))]
        return {"id": rid, "object": "text_completion", "created": now, "model": model_name,
                "choices": choices, "usage": usage(prompt_tokens, n_out)}

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        for m in messages:
            if m["role"] == "developer":
                m["role"] = "system"
        if req.tools and req.tool_choice != "none":
            text = tools_system_text([t.function.model_dump(exclude_none=True) for t in req.tools],
                                     req.tool_choice)
            if messages[0]["role"] == "system" and isinstance(messages[0].get("content"), str):
                messages[0]["content"] = messages[0]["content"] + "\n\n" + text
            else:
                messages.insert(0, {"role": "system", "content": text})
        try:
            ids = tokenizer.encode_chat(messages, add_generation_prompt=True)
        except UserError as e:
            raise APIError(400, str(e), param="messages") from None
        max_tokens = req.max_completion_tokens or req.max_tokens
        top = (req.top_logprobs or 0) if req.logprobs else None
        stop_ids = [tokenizer.token_id(S.END), tokenizer.eos_id]
        jobs = [(ids, sampling(req, len(ids), max_tokens, stop_ids, j, top)) for j in range(req.n)]
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def lp_entry(lp):
            return {"token": token_str(lp["token"]), "logprob": lp["logprob"],
                    "bytes": list(tokenizer.id_to_bytes(lp["token"])) if hasattr(tokenizer, "id_to_bytes")
                    else None,
                    "top_logprobs": [{"token": token_str(t), "logprob": v} for t, v in lp["top"]]}

        def lp_obj(lps):
            return {"content": [lp_entry(lp) for lp in lps]} if req.logprobs else None

        states = [ChatText() for _ in jobs]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(i, delta, finish=None, lps=()):
                return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name,
                        "choices": [{"index": i, "delta": delta, "logprobs": lp_obj(lps) if lps else None,
                                     "finish_reason": finish}]}

            async def gen():
                n_out = 0
                for i in range(len(jobs)):
                    yield sse(chunk(i, {"role": "assistant", "content": ""}))
                async for i, d in run(request, jobs):
                    n_out += len(d.token_ids)
                    delta = states[i].feed(d.text, final=d.finish_reason is not None)
                    if delta or d.logprobs:
                        yield sse(chunk(i, delta, lps=d.logprobs))
                    if d.finish_reason is not None:
                        msg = states[i].message()
                        finish = d.finish_reason
                        if msg.get("tool_calls"):
                            finish = "tool_calls"
                            calls = [dict(c, index=k) for k, c in enumerate(msg["tool_calls"])]
                            yield sse(chunk(i, {"tool_calls": calls}))
                        yield sse(chunk(i, {}, finish))
                if include_usage:
                    yield sse({"id": rid, "object": "chat.completion.chunk", "created": now,
                               "model": model_name, "choices": [], "usage": usage(len(ids), n_out)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream")

        lps = [[] for _ in jobs]
        finish = [None] * len(jobs)
        n_out = 0
        async for i, d in run(request, jobs):
            states[i].feed(d.text, final=d.finish_reason is not None)
            lps[i] += d.logprobs
            finish[i] = d.finish_reason or finish[i]
            n_out += len(d.token_ids)
        choices = []
        for i in range(len(jobs)):
            msg = states[i].message()
            if msg.get("tool_calls"):
                finish[i] = "tool_calls"
                msg["content"] = msg["content"] or None
            choices.append({"index": i, "message": msg, "logprobs": lp_obj(lps[i]),
                            "finish_reason": finish[i]})
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_name,
                "choices": choices, "usage": usage(len(ids), n_out)}

    return app
