"""The exceptions the agent loop distinguishes.

`ToolError` is reported back to the model as the tool's result (the loop never dies on
it); `Refused` is a ToolError that says a boundary or permission rule stopped the call;
`ProviderError` ends the run with a clear one-line message (auth, unreachable, bad reply).
"""


class ToolError(Exception):
    """A tool could not do what the model asked; the message goes back to the model."""


class Refused(ToolError):
    """The call was refused by the workspace boundary or the permission mode."""


class ProviderError(Exception):
    """The model endpoint failed: `kind` is 'auth', 'unreachable', 'http' or 'protocol'."""

    def __init__(self, message: str, kind: str = "http", status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
