"""`--ckpt DIR`: completions from our own checkpoint, completion-style (the model continues
the prompt; the text is cut at the stop sequences).

An adapter over the inference engine (`dsv4.infer.load.load_engine`, `Engine.generate`,
`dsv4.infer.sampling.SamplingParams`), imported lazily so that `dsv4 eval` with an
endpoint or a samples file needs no torch; if this build lacks them it says so in one
line. The engine is not thread-safe but batches well: the evaluation's worker threads
queue their requests, and whichever thread holds the engine runs everything queued as
one batch (so --workers 8 means batches of up to 8).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

from dsv4.errors import UserError
from dsv4.eval.postprocess import STOP_SEQUENCES, completion_from_base


class CkptSource:
    def __init__(self, ckpt_dir: str, temperature: float, max_new_tokens: int):
        if not os.path.isdir(ckpt_dir):
            raise UserError(f"--ckpt {ckpt_dir!r} is not a directory")
        try:
            from dsv4.infer.load import load_engine
            from dsv4.infer.sampling import SamplingParams
        except ImportError as e:
            raise UserError(f"--ckpt needs the inference engine (dsv4.infer), which this build lacks "
                            f"({e}); serve the checkpoint and use --base-url, or --samples") from None
        self._params = SamplingParams
        self.engine = load_engine(ckpt_dir, max_batch=16)
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self._queue: list[tuple[dict, int, Future]] = []
        self._queue_lock = threading.Lock()
        self._engine_lock = threading.Lock()

    def _sampling(self, problem: dict, idx: int):
        task_no = int(problem["task_id"].rsplit("/", 1)[-1])
        return self._params(max_tokens=self.max_new_tokens, temperature=self.temperature,
                            seed=task_no * 1000 + idx, stop=list(STOP_SEQUENCES))

    def generator(self, problem: dict, idx: int) -> str:
        fut: Future = Future()
        with self._queue_lock:
            self._queue.append((problem, idx, fut))
        with self._engine_lock:
            with self._queue_lock:
                batch, self._queue = self._queue, []
            if batch:
                try:
                    outs = self.engine.generate([self._fit(p["prompt"]) for p, _, _ in batch],
                                                [self._sampling(p, i) for p, i, _ in batch])
                    for (_, _, f), out in zip(batch, outs, strict=True):
                        f.set_result(out.text)
                except Exception as e:  # every waiter learns of it, not only this thread
                    for _, _, f in batch:
                        f.set_exception(e)
        return completion_from_base(fut.result())

    def _fit(self, prompt: str) -> str | list[int]:
        """The prompt, or its last ids when it leaves the answer no room in the model's
        context (the engine refuses a prompt longer than its context)."""
        max_len = getattr(self.engine, "max_len", None)
        if max_len is None:
            return prompt
        ids = self.engine.encode(prompt)
        room = max(1, max_len - self.max_new_tokens)
        return prompt if len(ids) <= room else ids[-room:]

    def preflight(self, problem: dict) -> str:
        return self.generator(problem, 0)

    def close(self) -> None:
        pass
