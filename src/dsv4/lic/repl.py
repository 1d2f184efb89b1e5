"""The interactive REPL: prompt_toolkit input, rich output, slash commands.

Input has history (saved under the lic data dir) and multi-line editing (Esc+Enter, or a
trailing backslash). Replies stream as live-rendered markdown; tool calls show as one
dim line each, with edit_file changes rendered as a coloured diff; every turn ends with
its token counts and cost. Ctrl-C during a run stops it between consistent states
(see agent.py) and returns to the prompt; Ctrl-D or /exit leaves.
"""

from __future__ import annotations

import difflib
import json

from dsv4.lic.agent import Events
from dsv4.lic.output import short_args
from dsv4.lic.provider import Usage


class RichEvents(Events):
    def __init__(self, console):
        from rich.live import Live  # noqa: F401  (imported here: only the REPL pays for rich)

        self.console = console
        self.live = None
        self.buf = ""

    def _stop_live(self):
        if self.live is not None:
            self.live.stop()
            self.live = None
        self.buf = ""

    def text(self, delta):
        from rich.live import Live
        from rich.markdown import Markdown

        self.buf += delta
        if self.live is None:
            self.live = Live(
                Markdown(self.buf), console=self.console, refresh_per_second=8, vertical_overflow="visible"
            )
            self.live.start()
        else:
            self.live.update(Markdown(self.buf))

    def tool_call(self, name, arguments):
        from rich.syntax import Syntax

        self._stop_live()
        self.console.print(f"[cyan]⏺ {name}[/]([dim]{short_args(arguments, 100)}[/])", highlight=False)
        if name == "edit_file":
            try:
                a = json.loads(arguments)
                diff = "\n".join(
                    difflib.unified_diff(
                        a["old_string"].splitlines(),
                        a["new_string"].splitlines(),
                        a["path"],
                        a["path"],
                        n=1,
                        lineterm="",
                    )
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                diff = ""
            if diff:
                self.console.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))

    def tool_result(self, name, result, ok):
        lines = result.splitlines() or [""]
        head = "\n".join(f"  {x[:160]}" for x in lines[:4]) + (
            f"\n  … {len(lines) - 4} more lines" if len(lines) > 4 else ""
        )
        self.console.print(head, style="dim" if ok else "red", highlight=False, markup=False)

    def notice(self, text):
        self._stop_live()
        self.console.print(text, style="yellow", highlight=False, markup=False)

    def step(self, usage: Usage, total: Usage, cost: float):
        self._stop_live()


def repl(cwd, settings, args, input=None, output=None, console=None) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings
    from rich.console import Console

    from dsv4.lic.app import App, open_session
    from dsv4.lic.config import data_home
    from dsv4.lic.slash import handle
    from dsv4.lic.workspace import Workspace

    console = console or Console()
    kb = KeyBindings()

    @kb.add("escape", "enter")
    def _newline(event):
        event.current_buffer.insert_text("\n")

    @kb.add("enter")
    def _enter(event):
        buf = event.current_buffer
        if buf.text.endswith("\\"):
            buf.delete_before_cursor(1)
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    data_home().mkdir(parents=True, exist_ok=True)
    history = FileHistory(str(data_home() / "history"))
    ps = PromptSession(history=history, key_bindings=kb, multiline=True, input=input, output=output)
    asker = PromptSession(input=input, output=output)

    def approver(category: str, summary: str) -> str:
        events._stop_live()
        while True:
            try:
                ans = asker.prompt(f"Allow {summary}? [y]es / [n]o / [a]lways: ").strip().lower()
            except (EOFError, KeyboardInterrupt):
                return "no"
            if ans in ("y", "yes", "n", "no", "a", "always"):
                return {"y": "yes", "n": "no", "a": "always"}.get(ans, ans)

    events = RichEvents(console)
    session = open_session(cwd, settings, args.resume, args.cont)
    app = App(settings, Workspace(cwd), session, events, approver)
    console.print(
        f"[bold]lic[/] · {settings.provider} · {settings.model or '(server model)'} · "
        f"mode {settings.permission_mode} · session {session.id}\n[dim]{cwd} — /help for commands[/]",
        highlight=False,
    )
    if session.messages:
        console.print(f"[dim]resumed with {len(session.messages)} messages[/]")
    pending = args.prompt
    try:
        while True:
            if pending:
                text, pending = pending, None
            else:
                try:
                    text = ps.prompt("› ")
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
            if not text.strip():
                continue
            if text.startswith("/"):
                res = handle(app, text)
                if res.kind == "diff":
                    from rich.syntax import Syntax

                    console.print(Syntax(res.text, "diff", theme="ansi_dark", background_color="default"))
                else:
                    console.print(
                        res.text, style="red" if res.kind == "error" else None, highlight=False, markup=False
                    )
                if res.exit:
                    break
                continue
            res = app.agent.run(text)
            events._stop_live()
            u = res.usage
            console.print(
                f"[dim]{res.turns} steps · {res.tool_calls} tool calls · {u.prompt_tokens:,} in"
                f"{f' ({u.cached_tokens:,} cached)' if u.cached_tokens else ''} / "
                f"{u.completion_tokens:,} out tokens · ${res.cost:.4f} "
                f"(session ${app.agent.cost(app.agent.total):.4f})[/]",
                highlight=False,
            )
    finally:
        events._stop_live()
        app.close()
    return 0
