"""The `local` provider's server: use a running `dsv4 serve`, or start one for a checkpoint.

`lic --provider local [--ckpt DIR]` first asks the configured base URL (default
http://127.0.0.1:8000/v1) whether a server answers. If none does and a checkpoint is known
(`--ckpt` or `ckpt` under `[providers.local]` in config.toml), lic starts
`dsv4 serve --ckpt DIR --host 127.0.0.1 --port <free port>` as a child process, waits for
its /health (bounded by `serve_timeout` seconds, with the server's log in the error if it
fails), points the client at it, and stops it when lic exits. Either way the context
window is capped at the server's `max_model_len` (a small local model has a short one).

Why a separate process: lic must stay light (no torch in lic itself, startup < 0.3 s), and
the server's decode thread and uvicorn loop should not share lic's interpreter. The child
gets its own session so that Ctrl-C in the REPL (which interrupts a turn) does not reach
it; on Linux it also gets SIGTERM if lic dies without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from dsv4.errors import UserError

PROBE_TIMEOUT = 1.0  # seconds for "is a server already there?"
LOG_TAIL = 1500  # characters of the server's log quoted in an error


def _get_json(url: str, timeout: float):
    """GET url -> parsed JSON, or None if nothing (valid) answers."""
    import urllib.error
    import urllib.request

    from dsv4.lic.transport import urlopen

    try:
        with urlopen(urllib.request.Request(url, headers={"User-Agent": "lic/0.1"}), timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        # a server that wants a key still answers: it is there
        return {"status": e.code} if e.code in (401, 403) else None
    except (OSError, ValueError):
        return None


def root_url(base_url: str) -> str:
    """http://host:port/v1 -> http://host:port (where /health lives)."""
    u = urlsplit(base_url)
    return f"{u.scheme}://{u.netloc}"


def models(base_url: str, timeout: float = PROBE_TIMEOUT):
    """The server's /models listing (or {"status": 401} if it wants a key); None if none answers."""
    return _get_json(base_url.rstrip("/") + "/models", timeout)


def model_limit(listing) -> int | None:
    """`max_model_len` of the first model listed (dsv4 serve and vLLM report it)."""
    try:
        n = listing["data"][0]["max_model_len"]
    except (TypeError, KeyError, IndexError):
        return None
    return n if isinstance(n, int) and n > 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when lic dies (Linux prctl PR_SET_PDEATHSIG = 1)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class LocalServer:
    """A `dsv4 serve` child process on 127.0.0.1; `stop()` ends it (and only it)."""

    def __init__(self, ckpt: Path, timeout: float, log=None):
        self.ckpt = ckpt
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = tempfile.NamedTemporaryFile(prefix="lic-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "dsv4.cli", "serve", "--ckpt", str(ckpt),
               "--host", "127.0.0.1", "--port", str(self.port)]
        if log:
            log(f"starting dsv4 serve --ckpt {ckpt} on 127.0.0.1:{self.port} (log: {self.log.name})")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        if log:
            log(f"dsv4 serve pid {self.proc.pid}")
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def log_tail(self) -> str:
        try:
            text = Path(self.log.name).read_text(errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL:].strip()

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health = root_url(self.base_url) + "/health"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise UserError(
                    f"dsv4 serve --ckpt {self.ckpt} exited with code {code} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            got = _get_json(health, 1.0)
            if isinstance(got, dict) and got.get("status") == "ok":
                return
            if time.monotonic() > deadline:
                raise UserError(
                    f"dsv4 serve --ckpt {self.ckpt} did not answer {health} within {timeout:g} s "
                    f"(raise serve_timeout in config.toml for big checkpoints); its log:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def ensure_local(settings, log=None) -> LocalServer | None:
    """For the `local` provider: keep `settings.base_url` if a server answers there, else start
    one for `settings.ckpt` and point `settings.base_url` at it. Returns the child, if any."""
    if settings.provider != "local":
        if settings.ckpt:
            raise UserError(
                f"--ckpt starts a local dsv4 serve; it does not apply to provider {settings.provider!r}"
            )
        return None
    server = None
    listing = models(settings.base_url)
    if listing is not None:
        if settings.ckpt and log:
            log(f"using the server already running at {settings.base_url} (not starting one for --ckpt)")
    elif not settings.ckpt:
        return None  # the client reports the unreachable endpoint with a hint
    else:
        ckpt = Path(settings.ckpt).expanduser().resolve()
        if not ckpt.is_dir():
            raise UserError(f"checkpoint directory {settings.ckpt} does not exist")
        server = LocalServer(ckpt, settings.serve_timeout, log)
        settings.base_url = server.base_url
        listing = models(settings.base_url, 10.0)
    # a small local model's context is what its server says, not the 8k default: compaction
    # and the repository map's budget follow it
    limit = model_limit(listing)
    if limit and limit < settings.context_window:
        settings.context_window = limit
    return server
