"""Slash commands of the REPL, as plain functions over an `App` (so tests call them directly).

/help  /diff  /undo  /compact  /model [NAME]  /mode [MODE]  /clear  /exit
"""

from __future__ import annotations

from dataclasses import dataclass

from dsv4.lic.permissions import MODES

HELP = """Commands:
  /help            this list
  /diff            what the agent changed this session (git-aware in a repository)
  /undo            restore the files changed in the last turn
  /compact         summarise old turns now, to free context
  /model [NAME]    show or switch the model
  /mode [MODE]     show or switch the permission mode: read-only | ask | auto-edit | full-auto
  /clear           start a fresh conversation (files are not touched)
  /exit            leave (the session stays resumable with `lic --continue`)
Input: Enter sends; Esc then Enter (or a line ending in \\) adds a new line; Ctrl-C stops a run;
Ctrl-D exits."""


@dataclass
class SlashResult:
    text: str = ""
    kind: str = "info"  # info | diff | error
    exit: bool = False


def handle(app, line: str) -> SlashResult:
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    fn = COMMANDS.get(name.lower())
    if fn is None:
        return SlashResult(f"unknown command {name}; /help lists the commands", "error")
    return fn(app, arg)


def _help(app, arg):
    return SlashResult(HELP)


def _diff(app, arg):
    diff = app.snapshots.diff()
    return SlashResult(diff, "diff") if diff else SlashResult("no changes this session")


def _undo(app, arg):
    done = app.snapshots.undo()
    if not done:
        return SlashResult("nothing to undo")
    return SlashResult("undid the last turn's file changes:\n  " + "\n  ".join(done))


def _compact(app, arg):
    from dsv4.lic.errors import ProviderError

    try:
        return SlashResult(app.agent.compact(force=True) or "nothing to compact")
    except ProviderError as e:
        return SlashResult(f"compaction failed: {e}", "error")


def _model(app, arg):
    if not arg:
        return SlashResult(
            f"model: {app.settings.model or '(server default)'} via {app.settings.provider} "
            f"({app.settings.base_url})"
        )
    app.set_model(arg)
    return SlashResult(f"model set to {arg}")


def _mode(app, arg):
    if not arg:
        return SlashResult(
            f"permission mode: {app.settings.permission_mode} (choose from {', '.join(MODES)})"
        )
    if arg not in MODES:
        return SlashResult(f"unknown mode {arg!r}; choose from {', '.join(MODES)}", "error")
    app.set_mode(arg)
    return SlashResult(f"permission mode set to {arg}")


def _clear(app, arg):
    app.session.clear()
    return SlashResult("conversation cleared")


def _exit(app, arg):
    return SlashResult(f"bye; resume with `lic --resume {app.session.id}`", exit=True)


COMMANDS = {
    "/help": _help,
    "/?": _help,
    "/diff": _diff,
    "/undo": _undo,
    "/compact": _compact,
    "/model": _model,
    "/mode": _mode,
    "/clear": _clear,
    "/exit": _exit,
    "/quit": _exit,
}
