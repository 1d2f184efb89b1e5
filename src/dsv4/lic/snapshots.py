"""Undo and diff without git: each file is snapshotted before its first write in a turn.

`record(path)` keeps the file's bytes (or "absent") the first time the agent writes it in
the current turn; `undo()` puts back the files of the latest turn that has snapshots
(deleting files that turn created); `diff()` compares each touched file's state at its
first snapshot this session with its state now. Records are journaled to the session, so
/undo also works after `--continue`. In a git repository, `diff()` also reports what
shell commands changed in tracked files since the session's base commit.
"""

from __future__ import annotations

import base64
import difflib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from dsv4.lic.workspace import Workspace


def _encode(data: bytes | None) -> dict:
    if data is None:
        return {"absent": True}
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def _decode(d: dict) -> bytes | None:
    if d.get("absent"):
        return None
    if "text" in d:
        return d["text"].encode("utf-8")
    return base64.b64decode(d["b64"])


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so an interrupt never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.lic-tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Snapshots:
    def __init__(self, workspace: Workspace, journal: Callable[[dict], None] | None = None):
        self.ws = workspace
        self.journal = journal or (lambda rec: None)
        self.turn = 0
        self.turns: dict[int, dict[str, bytes | None]] = {}  # turn -> rel path -> original
        self.git_base: str | None = None

    # -- recording ----------------------------------------------------------------------
    def begin_turn(self, turn: int) -> None:
        self.turn = turn

    def record(self, path: Path) -> None:
        rel = self.ws.rel(path)
        files = self.turns.setdefault(self.turn, {})
        if rel in files:
            return
        data = path.read_bytes() if path.is_file() else None
        files[rel] = data
        self.journal({"type": "snapshot", "turn": self.turn, "path": rel, **_encode(data)})

    def replay(self, rec: dict) -> None:
        """Rebuild state from a journaled record (session resume)."""
        if rec["type"] == "snapshot":
            self.turns.setdefault(rec["turn"], {}).setdefault(rec["path"], _decode(rec))
        elif rec["type"] == "undo":
            self.turns.pop(rec["turn"], None)
        elif rec["type"] == "git_base":
            self.git_base = rec["commit"]

    # -- undo ---------------------------------------------------------------------------
    def undo(self) -> list[str]:
        """Restore the files of the latest turn with changes; returns what was done."""
        if not self.turns:
            return []
        turn = max(self.turns)
        done = []
        for rel, data in sorted(self.turns.pop(turn).items()):
            path = self.ws.root / rel
            if data is None:
                if path.exists():
                    path.unlink()
                done.append(f"removed {rel}")
            else:
                atomic_write(path, data)
                done.append(f"restored {rel}")
        self.journal({"type": "undo", "turn": turn})
        return done

    # -- diff ---------------------------------------------------------------------------
    def originals(self) -> dict[str, bytes | None]:
        """Each touched file's content before the agent's first write this session."""
        first: dict[str, bytes | None] = {}
        for turn in sorted(self.turns):
            for rel, data in self.turns[turn].items():
                first.setdefault(rel, data)
        return first

    def diff(self) -> str:
        parts = []
        for rel, before in sorted(self.originals().items()):
            path = self.ws.root / rel
            after = path.read_bytes() if path.is_file() else None
            if before == after:
                continue
            a = (before or b"").decode("utf-8", "replace").splitlines(keepends=True)
            b = (after or b"").decode("utf-8", "replace").splitlines(keepends=True)
            parts.append(
                "".join(
                    difflib.unified_diff(
                        a,
                        b,
                        "/dev/null" if before is None else f"a/{rel}",
                        "/dev/null" if after is None else f"b/{rel}",
                    )
                )
            )
        shell = self._git_shell_diff()
        if shell:
            parts.append("# changed outside the file tools (shell commands), per git:\n" + shell)
        return "\n".join(p if p.endswith("\n") else p + "\n" for p in parts if p)

    def start_git_base(self) -> None:
        """Remember the work tree's state at session start (`git stash create`, else HEAD)."""
        if self.ws.git_root is None or self.git_base:
            return
        # `stash create` writes a commit object (nothing else): it needs an identity, not a config
        ident = ("-c", "user.name=lic", "-c", "user.email=lic@localhost")
        commit = _git(self.ws.root, *ident, "stash", "create") or _git(self.ws.root, "rev-parse", "HEAD")
        if commit:
            self.git_base = commit
            self.journal({"type": "git_base", "commit": commit})

    def _git_shell_diff(self) -> str:
        if not self.git_base:
            return ""
        excludes = [f":(exclude){rel}" for rel in self.originals()]
        return _git(self.ws.root, "diff", "--no-color", self.git_base, "--", ".", *excludes) or ""


def _git(cwd: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
