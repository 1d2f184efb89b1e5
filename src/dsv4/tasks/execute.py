"""Run programs against task tests in the sandbox: one at a time, or many per process.

`run_tests(program, tests)` is what a reward uses: one sandboxed run, one verdict.
`run_many(units)` checks trusted programs (reference solutions, mined doctests) in bulk:
`batch` units share one sandboxed interpreter (process start-up, ~0.1 s, dominates a
small task), and a batch that dies as a whole (a timeout, a crash) is re-run unit by
unit so that one bad unit cannot hide the others' verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsv4.sandbox import SandboxLimits, SandboxPool, run_python
from dsv4.tasks import harness
from dsv4.tasks.task import TestCase

# A small generated task runs in milliseconds; these are generous but keep RL moving.
TEST_LIMITS = SandboxLimits(
    cpu_seconds=5, wall_seconds=10, memory_mb=512, max_processes=16, max_file_mb=8, max_output_bytes=64_000
)


@dataclass
class TestRun:
    status: str  # passed | failed | exception | timeout | memory | crashed | sandbox_error
    n_passed: int
    n_tests: int
    duration: float
    detail: str = ""

    @property
    def fraction(self) -> float:
        return self.n_passed / self.n_tests if self.n_tests else 0.0


def _verdict(res: dict, duration: float) -> TestRun:
    n, total, err = int(res.get("passed", 0)), int(res.get("total", 0)), res.get("error")
    if not res.get("loaded"):
        return TestRun("exception", 0, total, duration, str(err or ""))
    if n == total and total > 0:
        return TestRun("passed", n, total, duration)
    return TestRun("failed", n, total, duration, str(err or ""))


def _run(units: list[tuple[str, tuple[TestCase, ...]]], limits: SandboxLimits) -> list[TestRun]:
    nonce = harness.new_nonce()
    sres = run_python(harness.build(units), stdin=nonce + "\n", limits=limits)
    if sres.status in ("timeout", "memory", "error"):
        status = "sandbox_error" if sres.status == "error" else sres.status
        return [TestRun(status, 0, len(t), sres.duration, sres.stderr[-300:]) for _, t in units]
    parsed = harness.parse(sres.stdout, nonce)
    if parsed is None or len(parsed) != len(units):
        # No verdict line: the program exited early (sys.exit in a test, os._exit, a crash).
        detail = (sres.stderr or sres.stdout)[-300:]
        return [TestRun("crashed", 0, len(t), sres.duration, detail) for _, t in units]
    return [_verdict(r, sres.duration) for r in parsed]


def run_tests(program: str, tests: tuple[TestCase, ...], limits: SandboxLimits | None = None) -> TestRun:
    """Run one program against its tests in a fresh sandboxed interpreter."""
    return _run([(program, tuple(tests))], limits or TEST_LIMITS)[0]


def run_many(
    units: list[tuple[str, tuple[TestCase, ...]]],
    batch: int = 32,
    workers: int | None = None,
    limits: SandboxLimits | None = None,
    pool: SandboxPool | None = None,
) -> list[TestRun]:
    """Run many (program, tests) units, `batch` per sandboxed process, in parallel."""
    limits = limits or TEST_LIMITS
    chunks = [units[i : i + batch] for i in range(0, len(units), max(1, batch))]
    own = pool is None
    pool = pool or SandboxPool(workers)
    try:
        runs = pool.map([(lambda c=c: _run(c, limits)) for c in chunks])
        out: list[TestRun] = []
        retry = []
        for ci, (chunk, res) in enumerate(zip(chunks, runs, strict=True)):
            if len(chunk) > 1 and res and res[0].status in ("timeout", "memory", "crashed", "sandbox_error"):
                retry.append(ci)
            out.extend(res)
        for ci in retry:  # one unit spoiled its batch: re-run that batch unit by unit
            singles = pool.map([(lambda u=u: _run([u], limits)) for u in chunks[ci]])
            start = ci * batch
            for j, r in enumerate(singles):
                out[start + j] = r[0]
        return out
    finally:
        if own:
            pool.close()
