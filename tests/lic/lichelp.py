"""Helpers for LIC tests: run the real CLI in a subprocess, read its JSON result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_cli(args: list[str], cwd: Path, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """The real `lic` CLI in a subprocess (python -m dsv4.lic, this tree's sources)."""
    env = {**os.environ, "PYTHONPATH": SRC, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "dsv4.lic", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def tool_messages(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]
