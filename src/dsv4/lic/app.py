"""Assembly: settings + workspace + session -> the client, toolbox and agent of one `lic`.

Shared by the headless mode and the REPL so that both behave the same; the slash
commands operate on an `App`.
"""

from __future__ import annotations

from pathlib import Path

from dsv4.errors import UserError
from dsv4.lic.agent import Agent, Events
from dsv4.lic.config import Settings
from dsv4.lic.context import system_prompt
from dsv4.lic.permissions import Approver, Permissions
from dsv4.lic.provider import ChatClient, Endpoint
from dsv4.lic.session import Session
from dsv4.lic.snapshots import Snapshots
from dsv4.lic.tools import Toolbox
from dsv4.lic.workspace import Workspace


class App:
    def __init__(
        self,
        settings: Settings,
        workspace: Workspace,
        session: Session,
        events: Events | None = None,
        approver: Approver | None = None,
    ):
        if settings.api_key_env and not settings.api_key:
            raise UserError(
                f"${settings.api_key_env} is not set: provider {settings.provider!r} needs an API key "
                "(or choose another with --provider / --base-url)"
            )
        self.settings = settings
        self.workspace = workspace
        self.session = session
        self.permissions = Permissions(settings.permission_mode, approver)
        self.snapshots = Snapshots(workspace, journal=session.record)
        for rec in session.records:
            self.snapshots.replay(rec)
        self.toolbox = Toolbox(
            workspace,
            self.permissions,
            self.snapshots,
            allow_network=settings.allow_network,
            shell_timeout=settings.shell_timeout,
        )
        self.client = self.make_client()
        self.agent = Agent(
            self.client,
            self.toolbox,
            session,
            settings,
            self.system_prompt(),
            events,
        )

    def system_prompt(self) -> str:
        # the repository map gets at most 1/8 of the context window (small local models)
        map_tokens = min(1500, self.settings.context_window // 8)
        return system_prompt(self.workspace, self.settings.permission_mode, map_tokens)

    def make_client(self) -> ChatClient:
        s = self.settings
        return ChatClient(
            Endpoint(s.provider, s.base_url, s.model, s.api_key, s.api_key_env), stream=s.stream
        )

    def set_mode(self, mode: str) -> None:
        self.permissions.set_mode(mode)
        self.settings.permission_mode = mode
        self.agent.system = self.system_prompt()

    def set_model(self, model: str) -> None:
        self.settings.model = model
        self.client.endpoint.model = model

    def close(self) -> None:
        self.session.close()
        self.client.close()


def open_session(cwd: Path, settings: Settings, resume: str | None, cont: bool) -> Session:
    if resume:
        return Session.load(resume)
    if cont:
        return Session.latest(cwd)
    return Session.create(cwd, settings.model)
