"""The `glob` and `grep` tools: find files by name and lines by regex.

Both list files through `Workspace.list_files`, so .gitignore'd files (node_modules,
build outputs) stay out of the way and nothing outside the workspace is ever read.
"""

from __future__ import annotations

import re

from dsv4.lic.errors import Refused, ToolError
from dsv4.lic.ignore import glob_to_regex
from dsv4.lic.workspace import Workspace

MAX_GLOB_RESULTS = 500
MAX_GREP_MATCHES = 200
MAX_GREP_FILE_BYTES = 2_000_000
MAX_LINE_CHARS = 300


def _check_pattern(ws: Workspace, pattern: str) -> str:
    if not isinstance(pattern, str) or not pattern.strip():
        raise ToolError("pattern must be a non-empty glob such as '**/*.py'")
    pattern = pattern.strip()
    if pattern.startswith("/"):
        # An absolute pattern is fine only if it points inside the workspace.
        root = str(ws.root)
        if not pattern.startswith(root + "/"):
            raise Refused(f"Refused: glob {pattern!r} is outside the workspace {root}.")
        pattern = pattern[len(root) + 1 :] or "*"
    if ".." in pattern.split("/"):
        raise Refused(f"Refused: glob {pattern!r} reaches outside the workspace (no '..').")
    return pattern.removeprefix("./")


def glob_files(ws: Workspace, pattern: str) -> str:
    pattern = _check_pattern(ws, pattern)
    rx = glob_to_regex(pattern)
    hits = [ws.rel(f) for f in ws.list_files() if rx.match(ws.rel(f))]
    if not hits:
        hint = (
            ""
            if "/" in pattern
            else " (patterns without '/' match the top level only; try '**/" + pattern + "')"
        )
        return f"No files match {pattern!r}{hint}."
    out = hits[:MAX_GLOB_RESULTS]
    if len(hits) > len(out):
        out.append(f"[{len(hits) - len(out)} more files not shown; narrow the pattern]")
    return "\n".join(out)


def is_binary(head: bytes) -> bool:
    """A NUL byte in the first 8 KiB means binary (git's rule of thumb)."""
    return b"\0" in head[:8192]


def grep(ws: Workspace, pattern: str, path: str | None = None, glob: str | None = None) -> str:
    try:
        rx = re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ToolError(f"invalid regex {pattern!r}: {e}") from None
    base = ws.resolve(path) if path else ws.root
    if not base.exists():
        raise ToolError(f"{path} does not exist")
    name_rx = None
    if glob:
        g = _check_pattern(ws, glob)
        name_rx = (glob_to_regex(g), "/" in g)
    matches: list[str] = []
    total = 0
    files = [base] if base.is_file() else ws.list_files(base)
    for f in files:
        rel = ws.rel(f)
        if name_rx and not name_rx[0].match(rel if name_rx[1] else f.name):
            continue
        try:
            if f.stat().st_size > MAX_GREP_FILE_BYTES:
                continue
            data = f.read_bytes()
        except OSError:
            continue
        if is_binary(data):
            continue
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if rx.search(line):
                total += 1
                if len(matches) < MAX_GREP_MATCHES:
                    if len(line) > MAX_LINE_CHARS:
                        line = line[:MAX_LINE_CHARS] + " [...]"
                    matches.append(f"{rel}:{n}:{line}")
    if not matches:
        return f"No matches for {pattern!r}."
    if total > len(matches):
        matches.append(f"[{total - len(matches)} more matches not shown; narrow the pattern or path]")
    return "\n".join(matches)
