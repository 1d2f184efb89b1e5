"""`serve(...)`: load a checkpoint, start the decode thread, run uvicorn on the app."""

from __future__ import annotations

import logging
from pathlib import Path


def build_server(ckpt: str | Path, model_name: str | None = None, api_key: str | None = None,
                 max_batch: int = 8, prefill_chunk: int = 256, autocast: bool | str = "prefill",
                 speculative: bool = False):
    """(app, scheduler) for a checkpoint; the scheduler thread is started. `speculative`:
    the model's MTP head drafts one token per step (self-speculative decoding)."""
    from dsv4.errors import UserError
    from dsv4.infer.load import load_engine
    from dsv4.infer.speculative import MTPDrafter
    from dsv4.serve.app import create_app
    from dsv4.serve.scheduler import Scheduler

    spec = dict(draft_fn=MTPDrafter(), num_draft=1) if speculative else {}
    engine = load_engine(ckpt, max_batch=max_batch, prefill_chunk=prefill_chunk, autocast=autocast, **spec)
    if speculative and engine.model.mtp is None:
        raise UserError(f"--speculative needs a model with an MTP block; {ckpt} has n_mtp_layers = 0")
    name = model_name or Path(ckpt).resolve().name
    scheduler = Scheduler(engine).start()
    return create_app(scheduler, engine.tokenizer, name, api_key), scheduler


def serve(ckpt: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          model_name: str | None = None, max_batch: int = 8, prefill_chunk: int = 256,
          autocast: bool | str = "prefill", speculative: bool = False, log_level: str = "info") -> None:
    import uvicorn

    from dsv4.errors import UserError

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535 (got {port})")
    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1 (got {max_batch})")
    logging.basicConfig(level=logging.INFO)
    app, scheduler = build_server(ckpt, model_name, api_key, max_batch, prefill_chunk, autocast, speculative)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
    finally:
        scheduler.stop()
