"""Sessions as append-only JSONL files, one record per line, flushed as they happen.

    {"type": "meta", "id", "cwd", "created", "model"}     first line
    {"type": "message", "message": {...}}                 one chat message
    {"type": "compact", "messages": [...]}                history replaced by a summary
    {"type": "clear"}                                     /clear
    {"type": "snapshot" | "undo" | "git_base", ...}       the undo journal (snapshots.py)
    {"type": "usage", "turn", "prompt_tokens", ...}       per-turn token counts

Because each record is flushed on its own, a Ctrl-C or a kill leaves a file that loads:
a torn last line is skipped, and tool calls left without results are answered with an
"interrupted" tool message so the history stays valid for the API.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from dsv4.errors import UserError
from dsv4.lic.config import data_home


def sessions_dir() -> Path:
    return data_home() / "sessions"


def _newest_first(d: Path) -> list[Path]:
    """Session files, most recently written first (what --continue means by "latest")."""
    return sorted(d.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


class Session:
    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.meta = meta
        self.messages: list[dict] = []  # the conversation, system prompt excluded
        self.records: list[dict] = []  # non-message records, for the undo journal
        self._f = None

    @property
    def id(self) -> str:
        return self.meta["id"]

    # -- create / find / load -----------------------------------------------------------
    @classmethod
    def create(cls, cwd: Path, model: str | None) -> Session:
        sid = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        d = sessions_dir()
        d.mkdir(parents=True, exist_ok=True)
        s = cls(
            d / f"{sid}.jsonl",
            {"type": "meta", "id": sid, "cwd": str(cwd), "created": time.time(), "model": model},
        )
        s._write(s.meta)
        return s

    @classmethod
    def load(cls, sid: str) -> Session:
        path = sessions_dir() / f"{sid}.jsonl"
        if not path.is_file() or "/" in sid:
            raise UserError(f"no session {sid!r} in {sessions_dir()} (see `lic --list-sessions`)")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        recs = []
        for line in lines:
            try:
                recs.append(json.loads(line))
            except ValueError:
                continue  # a torn line from a killed process
        if not recs or recs[0].get("type") != "meta":
            raise UserError(f"session file {path} is not a lic session")
        s = cls(path, recs[0])
        for rec in recs[1:]:
            t = rec.get("type")
            if t == "message":
                s.messages.append(rec["message"])
            elif t == "compact":
                s.messages = list(rec["messages"])
            elif t == "clear":  # the conversation restarts; the undo journal and turn count go on
                s.messages = []
            else:
                s.records.append(rec)
        s.repair()
        return s

    @classmethod
    def latest(cls, cwd: Path) -> Session:
        """The most recent session started in `cwd` (for --continue)."""
        d = sessions_dir()
        for path in _newest_first(d) if d.is_dir() else []:
            try:
                with open(path, encoding="utf-8") as f:
                    meta = json.loads(f.readline())
            except (OSError, ValueError):
                continue
            if meta.get("cwd") == str(cwd):
                return cls.load(meta["id"])
        raise UserError(f"no previous session in {cwd} to continue")

    @staticmethod
    def list(cwd: Path | None = None) -> list[dict]:
        out = []
        d = sessions_dir()
        for path in _newest_first(d) if d.is_dir() else []:
            try:
                with open(path, encoding="utf-8") as f:
                    meta = json.loads(f.readline())
                    first = next(
                        (json.loads(x)["message"]["content"] for x in f if '"role": "user"' in x), ""
                    )
            except (OSError, ValueError, KeyError):
                continue
            if cwd is None or meta.get("cwd") == str(cwd):
                out.append({**meta, "first": (first or "")[:60]})
        return out

    # -- writing ------------------------------------------------------------------------
    def _write(self, rec: dict) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()

    def add(self, msg: dict) -> None:
        self.messages.append(msg)
        self._write({"type": "message", "message": msg})

    def record(self, rec: dict) -> None:
        self.records.append(rec)
        self._write(rec)

    def replace(self, messages: list[dict]) -> None:
        self.messages = list(messages)
        self._write({"type": "compact", "messages": self.messages})

    def clear(self) -> None:
        self.messages = []
        self._write({"type": "clear"})

    def repair(self) -> None:
        """Answer tool calls left without a result (the run was interrupted)."""
        answered = {m.get("tool_call_id") for m in self.messages if m.get("role") == "tool"}
        fixed: list[dict] = []
        for i, m in enumerate(self.messages):
            fixed.append(m)
            if m.get("role") != "assistant":
                continue
            # results must directly follow their assistant message
            j = i + 1
            following = set()
            while j < len(self.messages) and self.messages[j].get("role") == "tool":
                following.add(self.messages[j].get("tool_call_id"))
                j += 1
            for c in m.get("tool_calls") or []:
                if c["id"] not in following and c["id"] not in answered:
                    msg = {
                        "role": "tool",
                        "tool_call_id": c["id"],
                        "content": "Interrupted: this call may not have completed; check its effect "
                        "before relying on it.",
                    }
                    fixed.append(msg)
        if len(fixed) != len(self.messages):
            self.messages = fixed
            self._write({"type": "compact", "messages": fixed})

    def last_turn(self) -> int:
        """The number of the latest agent turn (monotonic, survives compaction)."""
        return max((r["n"] for r in self.records if r.get("type") == "turn"), default=0)

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None
