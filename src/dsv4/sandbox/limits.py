"""What a sandboxed program may use (`SandboxLimits`) and what came back (`SandboxResult`).

Plain dataclasses with no imports beyond the standard library, so that eval, RL rewards
and LIC's shell tool can build and inspect them without pulling in anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The statuses a run can end in. "error" means the sandbox itself could not run the
# program (bad arguments, missing executable, isolation tool failure), never the
# program's own fault.
STATUSES = ("passed", "failed", "timeout", "memory", "error")


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 10.0  # RLIMIT_CPU, per process
    wall_seconds: float = 15.0  # whole run, then the process tree is killed
    memory_mb: int = 1024  # cgroup memory limit (or RLIMIT_AS where no cgroup)
    max_processes: int = 64  # cgroup pids.max for the whole tree (threads count too)
    max_file_mb: int = 64  # RLIMIT_FSIZE: largest file it can write
    max_output_bytes: int = 64_000  # per stream; the rest is drained and dropped

    def __post_init__(self):
        for name in ("cpu_seconds", "wall_seconds", "memory_mb", "max_processes", "max_file_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_output_bytes < 0:
            raise ValueError("SandboxLimits.max_output_bytes must be >= 0")


@dataclass
class SandboxResult:
    status: str  # one of STATUSES
    exit_code: int | None  # None when it never started; 128+N (or -N) when killed by signal N
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0  # wall seconds from spawn to reap
    truncated: bool = False  # stdout or stderr went over max_output_bytes
    info: dict = field(default_factory=dict)  # diagnostics: signal, oom kills, backend

    @property
    def passed(self) -> bool:
        return self.status == "passed"
