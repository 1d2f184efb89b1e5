"""Continuous batching for the server: one background thread owns the engine.

Request handlers (asyncio) `submit` prompts and read per-request event queues; the decode
thread admits new requests, runs `engine.step()` over every active sequence at once, and
pushes each step's deltas to their queues through the event loop (thread-safe). A
cancelled request (the client went away) is removed at the next step and its cache slot
freed. An exception inside a step fails the requests in flight with an error event and the
loop carries on: the server never dies with its model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

from dsv4.infer.engine import Delta, Engine
from dsv4.infer.sampling import SamplingParams

log = logging.getLogger("dsv4.serve")


@dataclass
class Handle:
    """One submitted sequence, as seen by its request handler."""

    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    seq: object = None
    done: bool = False

    def _put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def events(self):
        """Deltas until the sequence finishes; raises RuntimeError if the engine failed."""
        while True:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            yield item
            if item.finish_reason is not None:
                return


class Scheduler:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._cv = threading.Condition()
        self._inbox: list[Handle] = []
        self._cancels: list[Handle] = []
        self._handles: dict[int, Handle] = {}  # id(seq) -> handle
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="dsv4-decode", daemon=True)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def submit(self, prompt: list[int], params: SamplingParams) -> Handle:
        h = Handle(prompt, params, asyncio.get_running_loop())
        with self._cv:
            self._inbox.append(h)
            self._cv.notify()
        return h

    def cancel(self, h: Handle) -> None:
        if h.done:
            return
        with self._cv:
            self._cancels.append(h)
            self._cv.notify()

    def stats(self) -> dict:
        e = self.engine
        return {"running": len(e.running), "waiting": len(e.waiting) + len(self._inbox),
                "free_slots": len(e.free_slots), "max_batch": e.max_batch, "cancelled": e.n_cancelled}

    # ---- the decode thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._inbox or self._cancels or self.engine.has_work()):
                    self._cv.wait()
                if self._stop:
                    return
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            for h in inbox:
                try:
                    h.seq = self.engine.submit(h.prompt, h.params)
                    self._handles[id(h.seq)] = h
                except Exception as e:  # validated by the app already; never kill the loop
                    h.done = True
                    h._put(e)
            for h in cancels:
                if h.seq is not None and not h.done:
                    self.engine.cancel(h.seq)
                    self._finish(h)
            if not self.engine.has_work():
                continue
            try:
                deltas = self.engine.step()
            except Exception as e:
                log.exception("engine step failed; failing the requests in flight")
                self._fail_all(e)
                continue
            for d in deltas:
                h = self._handles.get(id(d.seq))
                if h is None:
                    continue
                h._put(Delta(None, d.text, d.token_ids, d.logprobs, d.finish_reason))
                if d.finish_reason is not None:
                    self._finish(h)

    def _finish(self, h: Handle) -> None:
        h.done = True
        self._handles.pop(id(h.seq), None)

    def _fail_all(self, err: Exception) -> None:
        for seq in list(self.engine.running) + list(self.engine.waiting):
            self.engine.cancel(seq)
            h = self._handles.get(id(seq))
            if h is not None:
                self._finish(h)
                h._put(RuntimeError(f"generation failed: {err}"))
