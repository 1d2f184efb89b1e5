"""The test harness: one sandboxed Python program that runs candidate code against tests.

Why not just `exec(prompt + completion + asserts)` and read the exit code (HumanEval's
way)? Because under RL a policy learns whatever the reward pays for, and that pays for
`sys.exit(0)` at the top of the answer. So the harness:

- reads a fresh random nonce from stdin *before* any candidate code runs, and the reward
  only counts a result line that carries it (early exits, `os._exit(0)` and printed fake
  results earn nothing);
- execs each candidate program in its own namespace, catching BaseException (SystemExit
  and KeyboardInterrupt included) around loading and around every test;
- compares results by type and value with references to builtins taken before the
  candidate runs, so `__eq__` that always returns True, or a patched `isinstance`, does
  not pass a test; doctest-kind tests use doctest's own output checker;
- ends with `os._exit(0)` right after writing the result, so candidate atexit hooks and
  finalizers cannot change the outcome.

It is a speed bump, not a proof: code in the same process can in principle find the nonce
by introspection. The sandbox (dsv4.sandbox) is what protects the machine.

Several units (program + tests) can share one run (`build(units)`) for fast bulk checks of
trusted reference solutions; rewards use one unit per run.
"""

from __future__ import annotations

import json
import secrets

from dsv4.tasks.task import TestCase

_HARNESS = r"""
import sys as _sys, os as _os
import ast as _ast, json as _json, math as _math
# doctest (heavy-ish) only when some unit has doctest-kind tests (mined tasks).
_doctest = __import__("doctest") if any(t[2] == "doctest" for _, ts in _UNITS for t in ts) else None
_DT = (_doctest.DocTestParser, _doctest.DocTestRunner, _doctest.DocTest,
       _doctest.NORMALIZE_WHITESPACE) if _doctest else None

def _run_units(_units, _nonce, _out=_sys.stdout, _literal_eval=_ast.literal_eval, _type=type,
               _len=len, _isinstance=isinstance, _abs=abs, _zip=zip, _sorted=sorted, _repr=repr,
               _exit=_os._exit, _dumps=_json.dumps, _BaseException=BaseException, _eval=eval,
               _compile=compile, _exec=exec, _dict=dict, _list=list, _tuple=tuple, _float=float,
               _set=set, _frozenset=frozenset, _str=str, _isfinite=_math.isfinite,
               _dt=_DT, _all=all, _max=max):
    try:
        _sys.stdin.close()  # the nonce line was read; candidates get EOF, not the nonce
    except _BaseException:
        pass
    def same(a, b):
        ta = _type(a)
        if ta is not _type(b):
            return False
        if ta is _float:
            if not (_isfinite(a) and _isfinite(b)):
                return _repr(a) == _repr(b)
            return _abs(a - b) <= 1e-6 * _max(1.0, _abs(b))
        if ta is _list or ta is _tuple:
            return _len(a) == _len(b) and _all(same(x, y) for x, y in _zip(a, b))
        if ta is _dict:
            if _len(a) != _len(b):
                return False
            for k in b:
                if k not in a or not same(a[k], b[k]):
                    return False
            return True
        if ta is _set or ta is _frozenset:
            return _sorted(_repr(x) for x in a) == _sorted(_repr(x) for x in b)
        return a == b

    results = []
    parser = _dt[0]() if _dt else None
    for program, tests in _units:
        ns = {"__name__": "__candidate__", "__builtins__": __builtins__}
        res = {"passed": 0, "total": _len(tests), "error": None, "loaded": False}
        try:
            _exec(_compile(program, "<candidate>", "exec"), ns)
        except _BaseException as e:
            res["error"] = _type(e).__name__ + ": " + _str(e)[:300]
            results.append(res)
            continue
        res["loaded"] = True
        doc_examples = []
        for call, expected, kind in tests:
            if kind == "doctest":
                src = "\n".join((">>> " if i == 0 else "... ") + ln for i, ln in enumerate(call.split("\n")))
                doc_examples.extend(parser.get_examples(src + "\n" + expected))
                continue
            try:
                ok = same(_eval(call, ns), _literal_eval(expected))
            except _BaseException as e:
                ok = False
                if res["error"] is None:
                    res["error"] = _type(e).__name__ + ": " + _str(e)[:300]
            res["passed"] += bool(ok)
        if doc_examples:
            runner = _dt[1](verbose=False, optionflags=_dt[3])
            try:
                failed, attempted = runner.run(_dt[2](doc_examples, ns, "candidate", None, 0, None),
                                               out=lambda s: None, clear_globs=False)
                res["passed"] += attempted - failed
            except _BaseException as e:
                res["error"] = _type(e).__name__ + ": " + _str(e)[:300]
        results.append(res)
    _out.write("\n" + _nonce + " " + _dumps(results) + "\n")
    _out.flush()
    _exit(0)

# The nonce is read before any candidate code runs and lives only in this call's frame.
_run_units(_UNITS, _sys.stdin.readline().strip())
"""


def build(units: list[tuple[str, tuple[TestCase, ...] | list[TestCase]]]) -> str:
    """The harness source for (program, tests) units; feed it `nonce + "\\n"` on stdin."""
    plain = [[prog, [[t.call, t.expected, t.kind] for t in tests]] for prog, tests in units]
    # JSON text is a valid Python literal here (only strings, lists and None-free data).
    return "_UNITS = " + repr(json.loads(json.dumps(plain))) + "\n" + _HARNESS


def new_nonce() -> str:
    return "DSV4-RESULT-" + secrets.token_hex(16)


def parse(stdout: str, nonce: str) -> list[dict] | None:
    """The per-unit results from a harness run, or None if no line carries the nonce."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce + " "):
            try:
                out = json.loads(line[len(nonce) + 1 :])
            except json.JSONDecodeError:
                return None
            return out if isinstance(out, list) else None
    return None
