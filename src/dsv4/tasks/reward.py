"""Verifiable rewards for RL: run a completion against a task's hidden tests in the sandbox.

    res = reward(task, completion, RewardConfig(style="chat", think=True))
    res.reward, res.passed, res.status, res.format_ok

The reward is DeepSeek-R1's rule-based pair: an accuracy reward (1 if every hidden test
passes, else 0, or the fraction passed with `partial_credit`) plus a small format reward
when the `<think>` format is on (`format_weight` if the completion is `<think>reasoning
</think>` followed by an answer, else 0). Nothing here learns or can be gamed by
flattery: only tests (harness.py) and a regex decide.

Completions are the generated text only (not the prompt). Chat style: the assistant turn
as decoded *with* special tokens (`<think>`, `</think>`, `<|end|>` visible), answering
with a ```python block; completion style: a base model's continuation of the prompt.
No torch here; the RL loop calls `score_batch`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dsv4.data import specials as S
from dsv4.data.chat import parse_assistant
from dsv4.errors import UserError
from dsv4.eval.postprocess import STOP_SEQUENCES, completion_from_chat, truncate_at_stops
from dsv4.sandbox import SandboxLimits, SandboxPool
from dsv4.tasks.execute import TEST_LIMITS, TestRun, run_many, run_tests
from dsv4.tasks.task import Task

STYLES = ("chat", "completion")
# Where a base model's continuation ends: a new top-level statement or an end-of-turn token.
COMPLETION_STOPS = [*STOP_SEQUENCES, S.END, S.EOS]


@dataclass(frozen=True)
class RewardConfig:
    style: str = "chat"  # chat | completion
    think: bool = False  # expect <think>...</think> before the answer; adds the format reward
    format_weight: float = 0.1  # R1's format reward, added to the accuracy reward
    partial_credit: bool = False  # accuracy = fraction of tests passed instead of all-or-nothing
    limits: SandboxLimits = field(default_factory=lambda: TEST_LIMITS)

    def __post_init__(self):
        if self.style not in STYLES:
            raise UserError(f"unknown completion style {self.style!r} (use chat or completion)")
        if self.format_weight < 0:
            raise UserError("format_weight must be >= 0")


@dataclass
class RewardResult:
    reward: float
    passed: bool  # every hidden test passed
    status: str  # passed | failed | exception | timeout | memory | crashed | sandbox_error | no_code
    format_ok: bool
    accuracy: float = 0.0  # the accuracy part of the reward
    n_passed: int = 0
    n_tests: int = 0
    duration: float = 0.0
    detail: str = ""


_THINK_RE = re.compile(rf"\s*{re.escape(S.THINK)}(.*?){re.escape(S.END_THINK)}(.*)", re.DOTALL)
_FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n.*?```", re.DOTALL)


def think_format_ok(completion: str, style: str = "chat") -> bool:
    """`<think>` + non-empty reasoning + `</think>` + an answer (a code block in chat style),
    with no other think tags."""
    turn = truncate_at_stops(completion, [S.END, S.EOS])  # the turn: nothing after its end
    if turn.count(S.THINK) != 1 or turn.count(S.END_THINK) != 1:
        return False
    m = _THINK_RE.fullmatch(turn)
    if m is None or not m.group(1).strip():
        return False
    answer = m.group(2)
    return bool(_FENCE_RE.search(answer)) if style == "chat" else bool(answer.strip())


def extract_code(completion: str, prompt: str, style: str = "chat", entry_point: str | None = None) -> str:
    """The program to test: the prompt re-attached to the code the model produced.

    Chat: drop the reasoning, take the fenced block (the one defining `entry_point` if
    any) and append it after the prompt, so the prompt's imports and helpers exist and the
    model's own `def` (the last one) is what runs; a bare body is indented into the
    prompt's function. Completion: cut at the first stop sequence and append to the prompt.
    Returns "" when there is no code at all.
    """
    if style not in STYLES:
        raise UserError(f"unknown completion style {style!r} (use chat or completion)")
    if style == "completion":
        text = truncate_at_stops(completion.replace(S.THINK, "").replace(S.END_THINK, ""), COMPLETION_STOPS)
        return prompt + text if text.strip() else ""
    content = parse_assistant(completion)["content"]  # drops <think>..</think>, stops at <|end|>
    if not content.strip():
        return ""
    if "```" not in content and not re.search(r"^\s*(def|return|import|from)\b", content, re.M):
        return ""  # prose only: nothing to run
    return prompt + completion_from_chat(prompt, content, entry_point or "")


def _accuracy(run: TestRun, cfg: RewardConfig) -> float:
    if run.status == "passed":
        return 1.0
    if cfg.partial_credit and run.status == "failed":
        return run.fraction
    return 0.0


def _combine(run: TestRun, format_ok: bool, cfg: RewardConfig) -> RewardResult:
    acc = _accuracy(run, cfg)
    total = acc + (cfg.format_weight if cfg.think and format_ok else 0.0)
    return RewardResult(
        total,
        run.status == "passed",
        run.status,
        format_ok,
        acc,
        run.n_passed,
        run.n_tests,
        run.duration,
        run.detail,
    )


def reward(task: Task, completion: str, cfg: RewardConfig | None = None) -> RewardResult:
    """Score one completion of `task` (one sandboxed run)."""
    cfg = cfg or RewardConfig()
    fmt = think_format_ok(completion, cfg.style) if cfg.think else True
    program = extract_code(completion, task.prompt, cfg.style, task.entry_point)
    if not program:
        return _combine(TestRun("no_code", 0, len(task.tests), 0.0), fmt, cfg)
    return _combine(run_tests(program, task.tests, cfg.limits), fmt, cfg)


def score_batch(
    tasks: list[Task],
    completions: list[str],
    cfg: RewardConfig | None = None,
    pool: SandboxPool | None = None,
    workers: int | None = None,
    batch: int = 1,
) -> list[RewardResult]:
    """Score completions[i] against tasks[i] in parallel (repeat a task G times for GRPO).

    batch=1 (default): every completion in its own sandboxed interpreter, fully isolated.
    batch=k: k completions share one interpreter (each in its own namespace; a batch that
    dies is re-run one by one), several times faster on small tasks, at a cost: one
    completion that patches builtins or modules can make a later one in its batch fail.
    """
    if len(tasks) != len(completions):
        raise UserError(f"{len(tasks)} tasks but {len(completions)} completions")
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}")
    cfg = cfg or RewardConfig()
    fmts = [think_format_ok(c, cfg.style) if cfg.think else True for c in completions]
    progs = [
        extract_code(c, t.prompt, cfg.style, t.entry_point) for t, c in zip(tasks, completions, strict=True)
    ]
    todo = [i for i, p in enumerate(progs) if p]
    own = pool is None
    pool = pool or SandboxPool(workers)
    try:
        if batch == 1:
            runs = pool.map([(lambda i=i: run_tests(progs[i], tasks[i].tests, cfg.limits)) for i in todo])
        else:
            units = [(progs[i], tasks[i].tests) for i in todo]
            runs = run_many(units, batch=batch, limits=cfg.limits, pool=pool)
    finally:
        if own:
            pool.close()
    by_index = dict(zip(todo, runs, strict=True))
    out = []
    for i, t in enumerate(tasks):
        run = by_index.get(i) or TestRun("no_code", 0, len(t.tests), 0.0)
        out.append(_combine(run, fmts[i], cfg))
    return out
