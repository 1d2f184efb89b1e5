"""Permission modes: what the agent may do without asking.

    read-only   read_file, glob, grep, todo_write; every write and shell command refused
    ask         reads free; each edit and shell command needs the user's yes (default)
    auto-edit   reads and file edits free; shell commands need a yes
    full-auto   everything free (shell still runs in the sandbox, workspace-only writes)

Where the sandbox cannot confine writes to the workspace, shell commands need a yes in
every mode ("unconfined_shell").

Without an interactive user (headless `lic -p`), "needs a yes" means refused, with a hint
to pass a wider --permission-mode. The workspace boundary applies in every mode.
"""

from __future__ import annotations

from collections.abc import Callable

from dsv4.lic.errors import Refused

MODES = ("read-only", "ask", "auto-edit", "full-auto")

# mode -> {category: "allow" | "ask" | "deny"}
_POLICY = {
    "read-only": {"edit": "deny", "shell": "deny", "unconfined_shell": "deny"},
    "ask": {"edit": "ask", "shell": "ask", "unconfined_shell": "ask"},
    "auto-edit": {"edit": "allow", "shell": "ask", "unconfined_shell": "ask"},
    "full-auto": {"edit": "allow", "shell": "allow", "unconfined_shell": "ask"},
}

# An approver gets (category, summary) and answers "yes", "no" or "always".
Approver = Callable[[str, str], str]


class Permissions:
    def __init__(self, mode: str = "ask", approver: Approver | None = None):
        self.set_mode(mode)
        self.approver = approver
        self.always: set[str] = set()  # categories the user said "always" to this session

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown permission mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode

    def check(self, category: str, summary: str) -> None:
        """Return if `category` ('read', 'edit', 'shell') is allowed now, else raise Refused."""
        verdict = _POLICY[self.mode].get(category, "allow")
        if verdict == "allow" or category in self.always and verdict == "ask":
            return
        if verdict == "deny":
            raise Refused(f"Refused: {summary} is not allowed in {self.mode} mode.")
        if self.approver is None:
            wider = {
                "edit": " rerun with --permission-mode auto-edit",
                "shell": " rerun with --permission-mode full-auto",
            }.get(category, " run lic interactively to approve it")
            raise Refused(
                f"Refused: {summary} needs approval, and no one is there to approve it "
                f"(headless run in {self.mode} mode;{wider})."
            )
        answer = self.approver(category, summary)
        if answer == "always":
            self.always.add(category)
        elif answer != "yes":
            raise Refused(f"Refused: the user declined {summary}.")
