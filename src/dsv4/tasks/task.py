"""`Task`: one Python programming problem with hidden tests, and how a family builds one.

A task is HumanEval-shaped so that SFT, RL and evaluation treat generated, mined and
benchmark problems alike: `prompt` is a function signature plus docstring (with one or
two worked examples), `solution` is the reference body that completes it, `entry_point`
is the function name. The hidden tests are `TestCase`s, not assert source, so that the
harness (harness.py) can compare results strictly by type and value: a candidate that
returns an object whose `__eq__` is always True earns nothing.

Families (families_*.py) return a `Spec`; `build_task` turns it into a `Task` by running
the reference solution in-process (our own code, trusted) on inputs drawn from a random
stream seeded by the instance's key, so the same (family, params) instance always has the
same examples and tests whichever seed or split drew it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TestCase:
    """`call` is a Python expression calling the entry point; the check depends on `kind`.

    kind "value": `expected` is the repr of a literal; the call's value must equal it with
    the same types (floats within 1e-6). kind "doctest": `expected` is doctest's "want"
    text for `call` (which may be a statement); checked like doctest does.
    """

    call: str
    expected: str
    kind: str = "value"


@dataclass(frozen=True)
class Task:
    task_id: str
    family: str
    difficulty: int  # 1 (one simple step) .. 4 (three-step composition or an algorithm)
    prompt: str  # signature + docstring, ends with a newline; the completion follows it
    entry_point: str
    solution: str  # reference body: prompt + solution is a correct program
    tests: tuple[TestCase, ...]
    params: dict = field(default_factory=dict, compare=False)
    plan: str = ""  # a short approach in words: the optional <think> trace for SFT
    source: str = "generated"  # generated | doctest
    split: str = "train"  # train | heldout

    @property
    def program(self) -> str:
        """The reference program: prompt followed by its solution."""
        return self.prompt + self.solution

    def asserts(self) -> str:
        """The hidden tests as HumanEval-style `check(candidate)` source (for humans/export)."""
        lines = ["def check(candidate):"]
        for t in self.tests:
            call = t.call.replace(f"{self.entry_point}(", "candidate(", 1)
            if t.kind == "value":
                lines.append(f"    assert {call} == {t.expected}")
            else:
                lines.append(f"    # doctest: {call!r} -> {t.expected!r}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tests"] = [asdict(t) for t in self.tests]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        d = dict(d)
        d["tests"] = tuple(TestCase(**t) for t in d["tests"])
        return cls(**d)


def save_tasks(path, tasks: list[Task]) -> None:
    """Write tasks as JSON lines (atomically)."""
    from dsv4.data.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(t.to_dict()) + "\n" for t in tasks))


def load_tasks(path) -> list[Task]:
    """Read tasks written by `save_tasks` (or `dsv4 tasks mine --out`)."""
    from dsv4.errors import UserError

    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(Task.from_dict(json.loads(line)))
                    except (json.JSONDecodeError, TypeError, KeyError) as e:
                        raise UserError(f"{path}:{i}: not a task record ({e})") from None
    except OSError as e:
        raise UserError(f"cannot read tasks from {path}: {e.strerror}") from None
    return out


@dataclass
class Spec:
    """What a family returns for one parameter draw."""

    params: dict  # identifies the instance within its family (JSON-able)
    name: str  # function name
    args: list[tuple[str, str]]  # (argument name, type annotation)
    returns: str  # return annotation
    doc: str  # what the function does, in prose (wrapped into the docstring)
    body: str  # reference body, unindented; indented by 4 when rendered
    gen: Callable[[random.Random], tuple]  # draws one argument tuple
    difficulty: int = 1
    plan: str = ""
    edge: list[tuple] = field(default_factory=list)  # argument tuples always tested


def instance_key(family: str, params: dict) -> str:
    return family + ":" + json.dumps(params, sort_keys=True, separators=(",", ":"))


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def render_prompt(spec: Spec, examples: list[tuple[tuple, object]]) -> str:
    sig = ", ".join(f"{a}: {t}" for a, t in spec.args)
    doc = textwrap.fill(spec.doc, width=84, initial_indent="    ", subsequent_indent="    ")
    lines = [f"def {spec.name}({sig}) -> {spec.returns}:", '    """' + doc.strip()]
    if examples:
        lines.append("")
    for args, out in examples:
        lines.append(f"    >>> {call_src(spec.name, args)}")
        lines.append(f"    {out!r}")
    lines.append('    """')
    return "\n".join(lines) + "\n"


def call_src(name: str, args: tuple) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"


def _run_reference(program: str, name: str) -> Callable:
    ns: dict = {"__name__": "__reference__"}
    exec(compile(program, f"<reference {name}>", "exec"), ns)
    return ns[name]


def build_task(family: str, spec: Spec, split: str, n_tests: int = 8, n_examples: int = 2) -> Task:
    """Run the reference on edge cases and drawn inputs; the first draws become examples."""
    key = instance_key(family, spec.params)
    h = key_hash(key)
    rng = random.Random(h)
    body = textwrap.indent(spec.body.strip("\n") + "\n", "    ")
    ref = _run_reference(render_prompt(spec, []) + body, spec.name)
    seen: set[str] = set()
    cases: list[tuple[tuple, object]] = []

    def add(args: tuple) -> None:
        src = call_src(spec.name, args)
        if src in seen:
            return
        seen.add(src)
        # The reference gets copies: a body that mutates its input must not change the test.
        cases.append((args, ref(*copy.deepcopy(args))))

    for _ in range(n_examples):
        # Worked examples should show something: the longest of a few draws.
        add(max((spec.gen(rng) for _ in range(3)), key=lambda a: len(repr(a))))
    for args in spec.edge:
        add(args)
    tries = 0
    while len(cases) < n_examples + len(spec.edge) + n_tests and tries < 20 * n_tests:
        add(spec.gen(rng))
        tries += 1
    examples = cases[:n_examples]
    prompt = render_prompt(spec, examples)
    tests = tuple(TestCase(call_src(spec.name, a), repr(out)) for a, out in cases)
    return Task(
        task_id=f"gen/{family}/{h:016x}"[: len(family) + 15],
        family=family,
        difficulty=spec.difficulty,
        prompt=prompt,
        entry_point=spec.name,
        solution=body,
        tests=tests,
        params=dict(spec.params),
        plan=spec.plan,
        source="generated",
        split=split,
    )
