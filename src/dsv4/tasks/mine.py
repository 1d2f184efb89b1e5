"""Mine tasks from the corpus: top-level functions whose docstrings carry doctests.

A function becomes a task when it is self-contained: every name it (or its doctests)
reads is a parameter, a local, a builtin, itself, or bound by a module-level `import`
(those import lines are put in front of the prompt). The prompt is the signature plus the
docstring, the reference solution is the rest of the body, and the hidden tests are the
doctest examples (checked with doctest's own output comparison in the harness).

Static analysis can be fooled (a name read through `globals()`, a doctest that depends on
the file system), so every candidate is validated by running its reference solution
against its doctests in the sandbox; only those that pass are kept. Contaminated ones
(13-gram overlap with HumanEval) are dropped, and the train/held-out split is by hash of
(file, function), as for generated tasks.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import hashlib
from collections.abc import Iterable
from pathlib import Path

from dsv4.data.sources import resolve_sources
from dsv4.tasks.execute import run_many
from dsv4.tasks.generate import split_of
from dsv4.tasks.task import Task, TestCase

_BUILTINS = set(dir(builtins)) | {"__name__", "__file__", "__doc__"}
MAX_BODY_LINES = 60
MAX_HELPER_LINES = 80


def _py_files(paths: Iterable[str | Path]) -> list[Path]:
    """The .py files the corpus would read from these sources (same walking rules)."""
    files = [sf.path for sf in resolve_sources([str(p) for p in paths]) if sf.path.suffix == ".py"]
    # Test suites' doctests test the test machinery (doctest itself), not a function.
    return [f for f in files if not f.name.startswith("test_") and not {"test", "tests"} & set(f.parts[:-1])]


def _names(node: ast.AST) -> tuple[set[str], set[str]]:
    """(names read, names bound) anywhere under node."""
    read, bound = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (read if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    return read, bound


def _module_imports(tree: ast.Module, src: str) -> dict[str, str]:
    """Name -> the module-level import statement (one name each) that binds it."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                out[(a.asname or a.name).split(".")[0]] = f"import {a.name}" + (
                    f" as {a.asname}" if a.asname else ""
                )
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                if a.name != "*":
                    out[a.asname or a.name] = f"from {node.module} import {a.name}" + (
                        f" as {a.asname}" if a.asname else ""
                    )
    return out


def _module_defs(tree: ast.Module) -> dict[str, ast.stmt]:
    """Name -> the module-level def/class or single-name assignment that binds it."""
    out: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name) and node.value is not None:
                out[targets[0].id] = node
    return out


def _closure(free: set[str], imports: dict[str, str], defs: dict[str, ast.stmt]):
    """The imports and module-level helpers that make `free` names resolvable, or None.

    Helpers are followed transitively (a helper's own free names must resolve too) and
    returned in file order, so definitions come before the code that uses them.
    """
    need_imports: set[str] = set()
    helpers: dict[str, ast.stmt] = {}
    todo = sorted(free)
    while todo:
        name = todo.pop()
        if name in need_imports or name in helpers:
            continue
        if name in imports:
            need_imports.add(name)
        elif name in defs:
            node = defs[name]
            helpers[name] = node
            read, bound = _names(node)
            todo.extend(sorted(read - bound - _BUILTINS - {name}))
        else:
            return None
    return need_imports, sorted(helpers.values(), key=lambda n: n.lineno)


def _candidate(
    fn: ast.FunctionDef, lines: list[str], imports: dict[str, str], defs: dict[str, ast.stmt], path: Path
) -> Task | None:
    doc = ast.get_docstring(fn, clean=True)
    if not doc or fn.decorator_list or len(fn.body) < 2:
        return None
    if any(isinstance(n, (ast.Global, ast.Nonlocal, ast.Yield, ast.YieldFrom)) for n in ast.walk(fn)):
        return None
    try:
        examples = doctest.DocTestParser().get_examples(doc)
    except ValueError:
        return None
    if not examples or not any(ex.want.strip() for ex in examples):
        return None
    if any(ex.options.get(doctest.SKIP) for ex in examples):
        return None
    read, bound = _names(fn)
    bound |= {fn.name}
    for ex in examples:
        try:
            r, b = _names(ast.parse(ex.source))
        except SyntaxError:
            return None
        read |= r
        bound |= b
    free = read - bound - _BUILTINS
    closure = _closure(free, imports, {k: v for k, v in defs.items() if v is not fn})
    if closure is None:
        return None
    need_imports, helpers = closure
    body_start, end = fn.body[0].end_lineno, fn.end_lineno
    if end - body_start > MAX_BODY_LINES or fn.col_offset != 0:
        return None
    if sum(h.end_lineno - h.lineno + 1 for h in helpers) > MAX_HELPER_LINES:
        return None
    header = "".join(imports[n] + "\n" for n in sorted(need_imports))
    header += "".join("\n\n" + "".join(lines[_first_line(h) - 1 : h.end_lineno]) for h in helpers)
    prompt = (header.strip("\n") + "\n\n\n" if header else "") + "".join(lines[fn.lineno - 1 : body_start])
    solution = "".join(lines[body_start:end])
    if not prompt.endswith("\n"):
        return None
    n_lines = sum(1 for ln in solution.splitlines() if ln.strip())
    tests = tuple(TestCase(ex.source.rstrip("\n"), ex.want, "doctest") for ex in examples)
    params = {"path": f"{path.parent.name}/{path.name}", "name": fn.name}
    h = hashlib.sha256(f"{params['path']}:{fn.name}".encode()).hexdigest()[:10]
    return Task(
        task_id=f"doctest/{path.stem}.{fn.name}/{h}",
        family="doctest",
        difficulty=1 if n_lines <= 5 else 2 if n_lines <= 15 else 3 if n_lines <= 35 else 4,
        prompt=prompt,
        entry_point=fn.name,
        solution=solution,
        tests=tests,
        params=params,
        plan="",
        source="doctest",
        split=split_of("doctest", params),
    )


def _first_line(node: ast.stmt) -> int:
    decos = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decos])


def find_candidates(paths: Iterable[str | Path]) -> list[Task]:
    """Statically self-contained doctested functions (not yet validated)."""
    out: list[Task] = []
    for path in _py_files(paths):
        try:
            src = path.read_text(encoding="utf-8")
            if ">>>" not in src:  # most files: no doctest at all, skip the parse
                continue
            tree = ast.parse(src)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = src.splitlines(keepends=True)
        imports = _module_imports(tree, src)
        defs = _module_defs(tree)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                task = _candidate(node, lines, imports, defs, path)
                if task is not None:
                    out.append(task)
    return out


def mine_doctests(
    paths: Iterable[str | Path],
    validate: bool = True,
    decontaminate: bool = True,
    workers: int | None = None,
    max_tasks: int | None = None,
) -> list[Task]:
    """Tasks from doctested functions under `paths` (files or directories).

    With `validate`, keep only tasks whose reference solution passes all its doctests in
    the sandbox; with `decontaminate`, drop any that share a 13-gram with HumanEval.
    """
    tasks = find_candidates(paths)
    if decontaminate and tasks:
        from dsv4.data.decontam import HumanEvalFilter

        filt = HumanEvalFilter()
        tasks = [t for t in tasks if not filt.is_contaminated(t.program)]
    if max_tasks is not None:
        tasks = tasks[:max_tasks]
    if validate and tasks:
        runs = run_many([(t.program, t.tests) for t in tasks], batch=16, workers=workers)
        tasks = [t for t, r in zip(tasks, runs, strict=True) if r.status == "passed"]
    return tasks
