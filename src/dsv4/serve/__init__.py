"""The OpenAI-compatible server: `schemas` (requests, errors), `scheduler` (continuous
batching thread over the engine), `chatstate` (generated text -> message/tool_calls),
`app` (FastAPI routes), `server` (`serve(...)`: load, build, run uvicorn)."""
