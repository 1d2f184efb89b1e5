"""Glob patterns as regexes, and .gitignore rules for directories that are not git repos.

Inside a git repository the file list comes from `git ls-files` (exact git semantics);
elsewhere `walk_files` applies the .gitignore files it meets on the way down with the
common subset of the syntax: comments, `!` negation, trailing `/` (directories only),
leading or inner `/` (anchored), `*`, `?`, `[...]` and `**`. The last matching rule wins.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

ALWAYS_SKIPPED = {".git", ".hg", ".svn"}


@lru_cache(maxsize=512)
def glob_to_regex(pattern: str) -> re.Pattern:
    """Translate a path glob to a regex over '/'-separated relative paths.

    `*` and `?` stay inside one path segment; `**` crosses segments (`a/**/b` also matches
    `a/b`, `**/x` matches `x` at any depth).
    """
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


class IgnoreRules:
    """The .gitignore rules of one directory, matched against paths relative to it."""

    def __init__(self, lines: list[str]):
        self.rules: list[tuple[re.Pattern, bool, bool]] = []  # (regex, negate, dir_only)
        for raw in lines:
            line = raw.rstrip("\n").rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.strip("/") if dir_only else line
            anchored = "/" in line
            line = line.lstrip("/")
            if not anchored:
                line = "**/" + line
            self.rules.append((glob_to_regex(line), negate, dir_only))

    def match(self, rel: str, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included by `!`, None: no rule speaks about it."""
        verdict = None
        for rx, negate, dir_only in self.rules:
            if dir_only and not is_dir:
                continue
            if rx.match(rel):
                verdict = not negate
        return verdict


def _load_rules(directory: str) -> IgnoreRules | None:
    try:
        with open(os.path.join(directory, ".gitignore"), encoding="utf-8", errors="replace") as f:
            return IgnoreRules(f.readlines())
    except OSError:
        return None


def walk_files(root: Path, start: Path | None = None, limit: int | None = None) -> list[Path]:
    """Files under `start` (default `root`), skipping VCS dirs and .gitignored paths (at most `limit`)."""
    start = start or root
    # Rules from the .gitignore files of root and of start's ancestors inside root.
    stack: list[tuple[str, IgnoreRules]] = []
    chain, d = [], start
    while True:
        chain.append(d)
        if d == root or root not in d.parents:
            break
        d = d.parent
    for d in reversed(chain[1:]):
        rules = _load_rules(str(d))
        if rules:
            stack.append((str(d), rules))

    def ignored(path: str, is_dir: bool, rules_stack) -> bool:
        verdict = False
        for base, rules in rules_stack:
            rel = os.path.relpath(path, base).replace(os.sep, "/")
            v = rules.match(rel, is_dir)
            if v is not None:
                verdict = v
        return verdict

    out: list[Path] = []

    def visit(directory: str, rules_stack):
        own = _load_rules(directory)
        if own:
            rules_stack = rules_stack + [(directory, own)]
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if limit is not None and len(out) >= limit:
                return
            if e.name in ALWAYS_SKIPPED:
                continue
            is_dir = e.is_dir(follow_symlinks=False)
            if ignored(e.path, is_dir, rules_stack):
                continue
            if is_dir:
                visit(e.path, rules_stack)
            elif e.is_file(follow_symlinks=True) or e.is_symlink():
                out.append(Path(e.path))

    if start.is_dir():
        visit(str(start), stack)
    elif start.exists():
        out.append(start)
    return out
