"""The shared sandbox for untrusted programs (HumanEval, RL rewards, LIC's shell tool).

    from dsv4.sandbox import SandboxLimits, run, run_python, SandboxPool, capabilities
    res = run("echo hi", cwd=workspace, network=False, limits=SandboxLimits(wall_seconds=5))
    res.status  # passed | failed | timeout | memory | error

Layers (isolation.py, cgroup.py, runner.py): bubblewrap or unshare namespaces (read-only
root, private pid/net/ipc/uts), capabilities dropped, cgroup process and memory limits,
rlimits, a scrubbed environment, a session killed as a whole. Never imports torch.
"""

from dsv4.sandbox.isolation import capabilities
from dsv4.sandbox.limits import STATUSES, SandboxLimits, SandboxResult
from dsv4.sandbox.pool import SandboxPool
from dsv4.sandbox.runner import run, run_python

__all__ = ["STATUSES", "SandboxLimits", "SandboxResult", "SandboxPool", "capabilities", "run", "run_python"]
