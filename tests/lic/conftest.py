"""Fixtures for LIC tests: an isolated lic home and config, and a small temp git repo."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture
def lic_env(tmp_path, monkeypatch):
    """Sessions and config under tmp_path; no real API keys leak into the tests."""
    monkeypatch.setenv("LIC_HOME", str(tmp_path / "lichome"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    return tmp_path


@pytest.fixture
def repo(lic_env):
    """A small git repository with one commit, as the workspace."""
    r = lic_env / "repo"
    (r / "pkg").mkdir(parents=True)
    (r / "pkg" / "calc.py").write_text(
        "def add(a, b):\n    return a - b\n\n\nclass Calc:\n    def run(self):\n        return add(1, 2)\n"
    )
    (r / "README.md").write_text("# demo\n")
    (r / ".gitignore").write_text("build/\n*.log\n")
    (r / "build").mkdir()
    (r / "build" / "out.py").write_text("def add(): pass\n")
    (r / "debug.log").write_text("add add add\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=r, check=True)
    subprocess.run(["git", "add", "-A"], cwd=r, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=r, check=True)
    return r
