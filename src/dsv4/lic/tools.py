"""The seven tools the model can call, their JSON schemas, and one `Toolbox.call` entry.

Names and arguments are fixed (SPEC §6): read_file(path, offset?, limit?),
write_file(path, content), edit_file(path, old_string, new_string, replace_all?),
glob(pattern), grep(pattern, path?, glob?), run_shell(command, timeout?), todo_write(items).
Every failure is a `ToolError` whose message goes back to the model; the workspace
boundary and the permission mode are checked before anything touches the disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dsv4.lic.errors import ToolError
from dsv4.lic.permissions import Permissions
from dsv4.lic.search import glob_files, grep, is_binary
from dsv4.lic.snapshots import Snapshots, atomic_write
from dsv4.lic.workspace import Workspace

MAX_READ_LINES = 2000
MAX_READ_CHARS = 100_000
MAX_LINE_CHARS = 2000


def _fn(name: str, description: str, props: dict, required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


_S, _I, _B = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
TOOL_SPECS = [
    _fn(
        "read_file",
        "Read a text file of the workspace. Lines come numbered ('   12\\tcode'); the numbers "
        "are not part of the file. Long files are truncated: page with offset/limit.",
        {
            "path": {**_S, "description": "path relative to the workspace root"},
            "offset": {**_I, "description": "first line to read, 1-based (default 1)"},
            "limit": {**_I, "description": f"number of lines (default {MAX_READ_LINES})"},
        },
        ["path"],
    ),
    _fn(
        "write_file",
        "Create or overwrite a file with the given content (parent dirs are created).",
        {"path": _S, "content": _S},
        ["path", "content"],
    ),
    _fn(
        "edit_file",
        "Replace an exact string in a file. old_string must match the file exactly (whitespace "
        "included, without read_file's line numbers) and be unique unless replace_all is true.",
        {
            "path": _S,
            "old_string": _S,
            "new_string": _S,
            "replace_all": {**_B, "description": "replace every occurrence (default false)"},
        },
        ["path", "old_string", "new_string"],
    ),
    _fn(
        "glob",
        "List workspace files matching a glob ('**/*.py', 'src/*.js'); .gitignore'd files are skipped.",
        {"pattern": _S},
        ["pattern"],
    ),
    _fn(
        "grep",
        "Search file contents with a Python regex; returns path:line:text. .gitignore is respected.",
        {
            "pattern": _S,
            "path": {**_S, "description": "file or directory to search (default: workspace)"},
            "glob": {**_S, "description": "only files matching this glob, e.g. '*.py'"},
        },
        ["pattern"],
    ),
    _fn(
        "run_shell",
        "Run a shell command in the workspace (sandboxed: writes only inside the workspace, "
        "no network unless allowed). Returns exit code, stdout and stderr.",
        {"command": _S, "timeout": {"type": "number", "description": "seconds (default 120, max 600)"}},
        ["command"],
    ),
    _fn(
        "todo_write",
        "Replace the task list that tracks your plan. Each item: {content, status} with status "
        "pending | in_progress | completed.",
        {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "content": _S,
                        "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                    },
                    "required": ["content", "status"],
                },
            }
        },
        ["items"],
    ),
]
TOOL_NAMES = [t["function"]["name"] for t in TOOL_SPECS]


@dataclass
class Toolbox:
    """Everything a tool call may touch: the workspace, the rules, the undo journal."""

    workspace: Workspace
    permissions: Permissions
    snapshots: Snapshots
    allow_network: bool = False
    shell_timeout: float = 120.0
    todos: list[dict] = field(default_factory=list)

    def call(self, name: str, args: dict) -> str:
        """Run one tool; returns its text result or raises ToolError (Refused included)."""
        fn = getattr(self, f"tool_{name}", None)
        if name not in TOOL_NAMES or fn is None:
            raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(TOOL_NAMES)}")
        if not isinstance(args, dict):
            raise ToolError(f"{name} arguments must be a JSON object")
        try:
            return fn(**args)
        except TypeError as e:  # missing or unexpected arguments
            raise ToolError(f"bad arguments for {name}: {e}".replace("Toolbox.tool_", "")) from None

    def _prepare_write(self, path: Path, what: str) -> None:
        self.permissions.check("edit", what)
        self.snapshots.start_git_base()
        self.snapshots.record(path)

    # -- files --------------------------------------------------------------------------
    def tool_read_file(self, path: str, offset: int | None = None, limit: int | None = None) -> str:
        p = self.workspace.resolve(path)
        if p.is_dir():
            raise ToolError(f"{path} is a directory; use glob to list files")
        if not p.is_file():
            raise ToolError(f"{path} does not exist")
        offset, limit = max(1, int(offset or 1)), max(1, min(int(limit or MAX_READ_LINES), MAX_READ_LINES))
        size = p.stat().st_size
        with open(p, "rb") as f:
            if is_binary(f.read(8192)):
                raise ToolError(f"{path} is a binary file ({size} bytes); read_file only shows text files.")
        out, chars, n, total_hint = [], 0, 0, ""
        with open(p, encoding="utf-8", errors="replace", newline="") as f:
            for n, line in enumerate(f, 1):
                if n < offset:
                    continue
                if len(out) >= limit or chars >= MAX_READ_CHARS:
                    total_hint = "more"
                    break
                line = line.rstrip("\r\n")
                if len(line) > MAX_LINE_CHARS:
                    line = line[:MAX_LINE_CHARS] + f" [line truncated, {len(line)} chars]"
                out.append(f"{n:>6}\t{line}")
                chars += len(line) + 8
        if not out:
            return f"{path} is empty." if n == 0 else f"{path} has only {n} lines (offset {offset})."
        if total_hint:
            last = offset + len(out) - 1
            out.append(
                f"[truncated: showed lines {offset}-{last} of a {size}-byte file; "
                f"continue with offset={last + 1}]"
            )
        return "\n".join(out)

    def tool_write_file(self, path: str, content: str) -> str:
        p = self.workspace.resolve(path)
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if p.is_dir():
            raise ToolError(f"{path} is a directory")
        existed = p.exists()
        self._prepare_write(p, f"write_file {self.workspace.rel(p)}")
        atomic_write(p, content.encode("utf-8"))
        lines = content.count("\n") + 1
        return f"{'Updated' if existed else 'Created'} {self.workspace.rel(p)} ({lines} lines)."

    def tool_edit_file(self, path: str, old_string: str, new_string: str, replace_all: bool = False) -> str:
        p = self.workspace.resolve(path)
        if not isinstance(old_string, str) or not isinstance(new_string, str):
            raise ToolError("old_string and new_string must be strings")
        if not p.is_file():
            raise ToolError(f"{path} does not exist (use write_file to create a file)")
        data = p.read_bytes()
        if is_binary(data):
            raise ToolError(f"{path} is a binary file; edit_file only edits text files.")
        if old_string == "":
            raise ToolError("old_string is empty; give the exact text to replace (or use write_file)")
        if old_string == new_string:
            raise ToolError("old_string and new_string are identical; nothing to change")
        text = data.decode("utf-8", "surrogateescape")
        count = text.count(old_string)
        if count == 0 and "\r\n" in text and "\n" in old_string:  # the model writes \n; the file has CRLF
            crlf = old_string.replace("\r\n", "\n").replace("\n", "\r\n")
            if crlf in text:
                old_string, new_string = crlf, new_string.replace("\r\n", "\n").replace("\n", "\r\n")
                count = text.count(crlf)
        if count == 0:
            hint = ""
            if old_string.strip() and old_string.strip() in text:
                hint = " (it does appear with different leading/trailing whitespace)"
            raise ToolError(f"old_string not found in {path}{hint}. Read the file and copy the text exactly.")
        if count > 1 and not replace_all:
            raise ToolError(
                f"old_string occurs {count} times in {path}; include more surrounding context to "
                "make it unique, or set replace_all to true."
            )
        self._prepare_write(p, f"edit_file {self.workspace.rel(p)}")
        new = text.replace(old_string, new_string) if replace_all else text.replace(old_string, new_string, 1)
        atomic_write(p, new.encode("utf-8", "surrogateescape"))
        return f"Edited {self.workspace.rel(p)}: replaced {count if replace_all else 1} occurrence(s)."

    # -- search -------------------------------------------------------------------------
    def tool_glob(self, pattern: str) -> str:
        return glob_files(self.workspace, pattern)

    def tool_grep(self, pattern: str, path: str | None = None, glob: str | None = None) -> str:
        return grep(self.workspace, pattern, path, glob)

    # -- shell and plan -----------------------------------------------------------------
    def tool_run_shell(self, command: str, timeout: float | None = None) -> str:
        from dsv4.lic.shell import run_shell, sandbox_confines

        if not isinstance(command, str) or not command.strip():
            raise ToolError("command must be a non-empty string")
        self.permissions.check("shell", f"run_shell `{command}`")
        if not sandbox_confines():
            self.permissions.check(
                "unconfined_shell",
                f"run_shell `{command}` without filesystem isolation (this machine's sandbox cannot "
                "make paths outside the workspace read-only)",
            )
        self.snapshots.start_git_base()
        t = self.shell_timeout if timeout is None else float(timeout)
        return run_shell(self.workspace, command, timeout=min(max(t, 1.0), 600.0), network=self.allow_network)

    def tool_todo_write(self, items: list) -> str:
        if not isinstance(items, list):
            raise ToolError("items must be a list of {content, status}")
        todos = []
        for it in items:
            if isinstance(it, str):
                it = {"content": it, "status": "pending"}
            if not isinstance(it, dict) or not isinstance(it.get("content"), str):
                raise ToolError(f"bad todo item {json.dumps(it)[:100]}: need {{content, status}}")
            status = it.get("status", "pending")
            if status not in ("pending", "in_progress", "completed"):
                raise ToolError(f"bad status {status!r}: use pending, in_progress or completed")
            todos.append({"content": it["content"], "status": status})
        self.todos = todos
        return "Todo list updated:\n" + render_todos(todos)


def render_todos(todos: list[dict]) -> str:
    mark = {"pending": "[ ]", "in_progress": "[>]", "completed": "[x]"}
    return "\n".join(f"{mark[t['status']]} {t['content']}" for t in todos) or "(empty)"
