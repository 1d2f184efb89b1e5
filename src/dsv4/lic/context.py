"""What the model knows before the first message: the system prompt.

It holds the working rules, the environment (workspace, date, git, permission mode), the
project's own instructions from AGENTS.md (CLAUDE.md as a fallback), and a compact map of
the repository: file paths plus top-level symbols (Python via `ast`, other languages via a
regex), cut to a token budget so that big repositories still fit.
"""

from __future__ import annotations

import ast
import platform
import re
import time
from pathlib import Path

from dsv4.lic.workspace import Workspace

MAX_INSTRUCTIONS_CHARS = 20_000
MAP_MAX_FILE_BYTES = 200_000
MAP_MAX_FILES = 5_000
MAP_AST_SECONDS = 0.03  # files considered for the map (shallow ones first once sorted)
# Top-level definitions in common languages (first capture group is the name).
_SYMBOL_RX = {
    ".js": r"^(?:export\s+)?(?:default\s+)?(?:async\s+)?(?:function\*?|class)\s+([A-Za-z_$][\w$]*)",
    ".ts": r"^(?:export\s+)?(?:default\s+)?(?:abstract\s+)?(?:async\s+)?"
    r"(?:function|class|interface|type|enum)\s+"
    r"([A-Za-z_$][\w$]*)",
    ".go": r"^(?:func(?:\s+\([^)]*\))?|type)\s+([A-Za-z_]\w*)",
    ".rs": r"^(?:pub(?:\([^)]*\))?\s+)?(?:fn|struct|enum|trait|mod|type)\s+([A-Za-z_]\w*)",
    ".java": r"^(?:public\s+|final\s+|abstract\s+)*(?:class|interface|enum|record)\s+([A-Za-z_]\w*)",
    ".c": r"^[A-Za-z_][\w\s\*]*?\b([A-Za-z_]\w*)\s*\([^;]*$",
    ".rb": r"^(?:class|module|def)\s+([A-Za-z_][\w:.]*)",
    ".sh": r"^(?:function\s+)?([A-Za-z_]\w*)\s*\(\)",
}
_PY_RX = re.compile(r"^(?:async\s+)?(def|class)\s+([A-Za-z_]\w*)", re.M)
_SYMBOL_RX.update(
    {
        ".jsx": _SYMBOL_RX[".js"],
        ".mjs": _SYMBOL_RX[".js"],
        ".tsx": _SYMBOL_RX[".ts"],
        ".h": _SYMBOL_RX[".c"],
        ".cc": _SYMBOL_RX[".c"],
        ".cpp": _SYMBOL_RX[".c"],
        ".kt": _SYMBOL_RX[".java"],
    }
)

BASE_PROMPT = """You are LIC, a coding agent working in the user's terminal, inside one workspace directory.
Use the tools to inspect and change the code; do not guess file contents, read them first.
- Prefer edit_file (exact-string replace) over rewriting whole files; read before editing.
- Run the project's tests or the program with run_shell to check your work when you can.
- File tools only reach paths inside the workspace; a refusal is final, do not try to get around it.
- If a tool call fails, read the error and change your approach instead of repeating the same call.
- For multi-step work keep a plan with todo_write.
- When done, reply with a short summary of what you changed and how you checked it, without tool calls."""


def project_instructions(root: Path) -> tuple[str, str] | None:
    """(file name, text) of AGENTS.md, or CLAUDE.md if there is no AGENTS.md."""
    for name in ("AGENTS.md", "CLAUDE.md"):
        p = root / name
        if p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace")
            if len(text) > MAX_INSTRUCTIONS_CHARS:
                text = text[:MAX_INSTRUCTIONS_CHARS] + f"\n[{name} truncated]"
            return name, text
    return None


def file_symbols(path: Path, use_ast: bool = True) -> list[str]:
    """Top-level symbols of a source file ([] if unknown language or unparsable).

    Python goes through `ast` (classes with their public methods); with use_ast=False, or
    for other languages, a line regex finds the top-level definitions instead.
    """
    suffix = path.suffix.lower()
    if suffix not in _SYMBOL_RX and suffix != ".py":
        return []
    try:
        if path.stat().st_size > MAP_MAX_FILE_BYTES:
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    if suffix == ".py" and use_ast:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            return []
        out = []
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                methods = [
                    n.name
                    for n in node.body
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not n.name.startswith("_")
                ]
                out.append(f"class {node.name}" + (f"({', '.join(methods[:8])})" if methods else ""))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append(f"def {node.name}")
        return out
    if suffix == ".py":
        return [f"{m.group(1)} {m.group(2)}" for m in _PY_RX.finditer(text)]
    rx = re.compile(_SYMBOL_RX[suffix], re.M)
    return list(dict.fromkeys(m.group(1) for m in rx.finditer(text)))[:30]


def repo_map(ws: Workspace, budget_tokens: int = 1500) -> str:
    """Files and their top-level symbols, shallow paths first, within ~budget_tokens (4 chars/token)."""
    files = sorted(
        ws.list_files(limit=MAP_MAX_FILES), key=lambda f: (len(f.relative_to(ws.root).parts), ws.rel(f))
    )
    budget = budget_tokens * 4
    lines, used = [], 0
    # ast is ~50x slower than a regex; past a small time budget the map switches to the regex
    # so that a big repository cannot delay the first request (goal: < 0.3 s).
    deadline = time.perf_counter() + MAP_AST_SECONDS
    for i, f in enumerate(files):
        rel = ws.rel(f)
        syms = file_symbols(f, time.perf_counter() < deadline) if used < budget * 0.8 else []
        line = rel + (": " + ", ".join(syms) if syms else "")
        if used + len(line) + 1 > budget:
            line = rel
            if used + len(line) + 1 > budget:
                lines.append(f"[... {len(files) - i} more files]")
                break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def system_prompt(ws: Workspace, mode: str, map_tokens: int = 1500) -> str:
    parts = [
        BASE_PROMPT,
        f"""
# Environment
workspace: {ws.root}
platform: {platform.system()} {platform.machine()}, date: {time.strftime("%Y-%m-%d")}
git repository: {"yes (" + str(ws.git_root) + ")" if ws.git_root else "no"}
permission mode: {mode}""",
    ]
    instr = project_instructions(ws.root)
    if instr:
        parts.append(f"\n# Project instructions (from {instr[0]})\n{instr[1].strip()}")
    rmap = repo_map(ws, map_tokens)
    if rmap:
        parts.append(f"\n# Repository map (files and top-level symbols)\n{rmap}")
    return "\n".join(parts)
