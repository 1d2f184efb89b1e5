"""The workspace boundary: every file tool resolves its path here, in every mode.

A path is resolved against the workspace root with `..` collapsed and symlinks followed
(`Path.resolve`), then refused unless it lies inside the resolved root. So `../x`,
`/etc/passwd` and a symlink that points outside are all refused the same way, and the
refusal reaches the model as a refusal, not a crash.
"""

from __future__ import annotations

import stat
import subprocess
from functools import cached_property
from pathlib import Path

from dsv4.lic.errors import Refused, ToolError
from dsv4.lic.ignore import ALWAYS_SKIPPED, walk_files


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ToolError(f"workspace {root} is not a directory")

    def resolve(self, path: str) -> Path:
        """The real path of `path` (relative to the root unless absolute), or `Refused`."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("path must be a non-empty string")
        p = Path(path.strip()).expanduser()
        if not p.is_absolute():
            p = self.root / p
        real = p.resolve()
        if real != self.root and self.root not in real.parents:
            raise Refused(
                f"Refused: {path} resolves to {real}, outside the workspace {self.root}. "
                "File tools only work inside the workspace."
            )
        return real

    def rel(self, p: Path) -> str:
        """`p` relative to the root, '/'-separated (what the model sees)."""
        try:
            r = p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)
        return r or "."

    @cached_property
    def git_root(self) -> Path | None:
        """The enclosing git work tree, if any (and if git is installed)."""
        for d in (self.root, *self.root.parents):
            if (d / ".git").exists():
                return d
        return None

    def list_files(self, under: Path | None = None, limit: int | None = None) -> list[Path]:
        """Files under `under` (default: the root), .gitignore respected, inside the boundary.

        `limit` caps the walk (the repo map must stay fast even when lic starts in $HOME).
        """
        under = under or self.root
        files: list[Path] | None = None
        if self.git_root is not None:
            try:
                r = subprocess.run(
                    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", str(under)],
                    cwd=self.root,
                    capture_output=True,
                    timeout=30,
                )
                if r.returncode == 0:
                    names = [n for n in r.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
                    files = sorted({self.root / n for n in names})
            except (OSError, subprocess.TimeoutExpired):
                files = None
        if files is None:
            files = walk_files(self.root, under, limit)
        out = []
        for f in files:
            if limit is not None and len(out) >= limit:
                break
            if any(part in ALWAYS_SKIPPED for part in f.relative_to(self.root).parts):
                continue
            try:
                st = f.lstat()
                if stat.S_ISLNK(st.st_mode):  # a symlink that escapes is silently left out
                    real = f.resolve()
                    if not ((real == self.root or self.root in real.parents) and real.is_file()):
                        continue
                elif not stat.S_ISREG(st.st_mode):
                    continue
            except OSError:  # deleted but still in git's index, or unreadable
                continue
            out.append(f)
        return out
