"""`run_shell`: a command in the workspace, through `dsv4.sandbox`, never around it.

The sandbox gives the command its own process group, time/memory/output limits, the
workspace as the only writable directory (everything else read-only) and no network
unless `--allow-network`, so even full-auto cannot delete or write outside the workspace.
A non-zero exit is a normal result for the model to read, not a tool error. Where the
sandbox cannot make the filesystem read-only (no bubblewrap or user namespaces), every
command needs an explicit yes, whatever the mode: full-auto's promise depends on it.
"""

from __future__ import annotations

from dsv4.lic.errors import ToolError
from dsv4.lic.workspace import Workspace

MAX_OUTPUT_BYTES = 64_000
MEMORY_MB = 4096


def sandbox_confines() -> bool:
    """True if the sandbox can make everything but the workspace read-only on this machine."""
    try:
        from dsv4.sandbox import capabilities
    except ImportError:
        return False
    caps = capabilities()
    return bool(caps.get("readonly_root") and caps.get("mount_ns"))


def run_shell(ws: Workspace, command: str, *, timeout: float, network: bool) -> str:
    try:
        from dsv4.sandbox import SandboxLimits, run
    except ImportError:
        raise ToolError("run_shell is unavailable: the dsv4.sandbox module is not installed") from None
    limits = SandboxLimits(
        cpu_seconds=timeout, wall_seconds=timeout, memory_mb=MEMORY_MB, max_output_bytes=MAX_OUTPUT_BYTES
    )
    res = run(command, cwd=str(ws.root), network=network, limits=limits)
    head = {
        "passed": f"exit code 0 ({res.duration:.1f}s)",
        "failed": f"exit code {res.exit_code} ({res.duration:.1f}s)",
        "timeout": f"timed out after {timeout:g}s and was killed",
        "memory": f"killed: exceeded the {MEMORY_MB} MB memory limit",
    }.get(res.status, f"sandbox error (exit code {res.exit_code})")
    parts = [head]
    for name, text in (("stdout", res.stdout), ("stderr", res.stderr)):
        if text:
            text = text if isinstance(text, str) else text.decode("utf-8", "replace")
            parts.append(f"--- {name} ---\n{text.rstrip()}")
    if res.truncated:
        parts.append(f"[output truncated to {MAX_OUTPUT_BYTES} bytes]")
    return "\n".join(parts)
