"""Corpus sources: `--source` arguments -> the files they name -> documents.

A source is one of:
- a directory: every `*.py` file below it (recursive, sorted; `__pycache__`,
  `site-packages`, `dist-packages` and hidden directories are skipped);
- a glob (`src/**/*.py`, `data/*.jsonl`): the files and directories it matches;
- a `.jsonl` file: one JSON object per line, the document in "text" or "content";
- any other file: one document.
`None` means the default corpus: the running interpreter's standard library.

Files named explicitly must be readable UTF-8 (else `UserError` naming the file); files
found by walking a directory or expanding a glob that are not UTF-8 or not readable are
skipped and counted, because real trees (the stdlib included) contain a few such files.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dsv4.errors import UserError

SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages"}
DIR_SUFFIX = ".py"
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class SourceFile:
    path: Path
    explicit: bool  # named on the command line: errors are fatal, not skipped

    @property
    def is_jsonl(self) -> bool:
        return self.path.suffix.lower() == ".jsonl"


@dataclass
class Document:
    name: str  # "path" or "path:line" for a JSONL record
    text: str


@dataclass
class ReadStats:
    n_skipped_non_utf8: int = 0
    n_skipped_unreadable: int = 0
    skipped: list[str] = field(default_factory=list)


def default_sources() -> list[str]:
    return [sysconfig.get_paths()["stdlib"]]


def _walk(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(DIR_SUFFIX)]
    return found


def resolve_sources(sources: list[str] | None) -> list[SourceFile]:
    """Expand sources into a de-duplicated, ordered list of files (no reading yet)."""
    items = default_sources() if sources is None else list(sources)
    if not items:
        raise UserError("no sources given (pass --source PATH, or none for the stdlib default)")
    out: list[SourceFile] = []
    seen: set[Path] = set()

    def add(p: Path, explicit: bool) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(SourceFile(p, explicit))

    for src in items:
        src = os.path.expanduser(str(src))
        if GLOB_CHARS & set(src) and not os.path.exists(src):
            matches = sorted(glob.glob(src, recursive=True))
            if not matches:
                raise UserError(f"source glob {src!r} matched no files")
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    for f in _walk(mp):
                        add(f, False)
                elif mp.is_file():
                    add(mp, False)
            continue
        p = Path(src)
        if not p.exists():
            raise UserError(f"source {src!r} does not exist")
        if p.is_dir():
            for f in _walk(p):
                add(f, False)
        else:
            add(p, True)
    return out


def stat_fingerprint(files: list[SourceFile]) -> str:
    """Hash of the file list with sizes and mtimes: cheap change detection for reuse."""
    h = hashlib.sha256()
    for sf in files:
        try:
            st = sf.path.stat()
            h.update(f"{sf.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "replace"))
        except OSError:
            h.update(f"{sf.path}\0missing\n".encode("utf-8", "replace"))
    return h.hexdigest()[:16]


def _read_text(sf: SourceFile, stats: ReadStats) -> str | None:
    try:
        data = sf.path.read_bytes()
    except OSError as e:
        if sf.explicit:
            raise UserError(f"cannot read source file {sf.path}: {e.strerror or e}") from None
        stats.n_skipped_unreadable += 1
        stats.skipped.append(str(sf.path))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if sf.explicit:
            raise UserError(
                f"source file {sf.path} is not UTF-8 (bad byte at offset {e.start}); "
                "convert it or leave it out"
            ) from None
        stats.n_skipped_non_utf8 += 1
        stats.skipped.append(str(sf.path))
        return None


def _jsonl_documents(sf: SourceFile, text: str) -> Iterator[Document]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{sf.path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        body = obj.get("text", obj.get("content")) if isinstance(obj, dict) else None
        if not isinstance(body, str):
            raise UserError(f'{where}: expected an object with a string "text" or "content" field')
        yield Document(where, body)


def read_documents(sf: SourceFile, stats: ReadStats) -> list[Document]:
    """The documents of one file: [] if it was skipped (counted in `stats`)."""
    text = _read_text(sf, stats)
    if text is None:
        return []
    if sf.is_jsonl:
        return list(_jsonl_documents(sf, text))
    return [Document(str(sf.path), text)]
