"""`SandboxPool`: many sandboxed runs in parallel, results in input order or as they finish.

Threads, not processes: each job spends its time waiting on its own child process, so a
thread per worker is enough and keeps spawning cheap (no pickling, and `subprocess` uses
vfork, so even a parent holding gigabytes of model weights starts children fast).
A job is a zero-argument callable returning a SandboxResult, or a dict of keyword
arguments for `run_python` (when it has "code") or `run` (when it has "cmd").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from dsv4.sandbox.limits import SandboxResult
from dsv4.sandbox.runner import run, run_python


def _as_callable(job) -> Callable[[], SandboxResult]:
    if callable(job):
        return job
    if isinstance(job, dict):
        if "code" in job:
            return lambda: run_python(**job)
        if "cmd" in job:
            return lambda: run(**job)
    raise TypeError(f"a sandbox job is a callable or a dict with 'code' or 'cmd', got {type(job).__name__}")


class SandboxPool:
    def __init__(self, workers: int | None = None):
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self._ex = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dsv4-sandbox")

    def imap_unordered(self, jobs: Iterable) -> Iterator[tuple[int, SandboxResult]]:
        """Yield (index, result) as jobs finish; at most 2*workers are queued at a time."""
        it = enumerate(_as_callable(j) for j in jobs)
        pending = {}

        def fill():
            while len(pending) < 2 * self.workers:
                try:
                    i, fn = next(it)
                except StopIteration:
                    return
                pending[self._ex.submit(fn)] = i

        fill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                yield i, fut.result()
            fill()

    def map(self, jobs: Iterable) -> list[SandboxResult]:
        """Run every job; results in the order of `jobs`."""
        out: dict[int, SandboxResult] = dict(self.imap_unordered(jobs))
        return [out[i] for i in range(len(out))]

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
