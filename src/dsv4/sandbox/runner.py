"""`run` and `run_python`: one untrusted program, isolated, limited, and always reaped.

The spawn chain is `sh` (joins the per-run cgroups, only when there are some) -> `prlimit`
(CPU seconds, file size, no core dumps, address space only where no memory cgroup) ->
the isolation backend (isolation.py) -> the program, every step an `exec`, started in a
new session. Output is read with a selector into bounded buffers (a program printing
forever cannot eat our memory), stdin is fed in the same loop, and at the wall deadline
the whole tree is killed: the session, the pid namespace through its init, and the
cgroup member by member.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from dsv4.sandbox.cgroup import RunCgroup
from dsv4.sandbox.isolation import backend_argv, capabilities
from dsv4.sandbox.limits import SandboxLimits, SandboxResult

DEFAULT_LIMITS = SandboxLimits()
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Joins each cgroup given before "--", then execs the rest; refuses to run unconfined.
_JOIN_FAILED = "dsv4-sandbox: cannot join cgroup"
_JOIN_CGROUPS = ('while [ "$1" != "--" ]; do echo $$ 2>/dev/null > "$1" || '
                 f'{{ echo "{_JOIN_FAILED} $1" >&2; exit 126; }}; shift; done; shift; exec "$@"')
# After the program exits, how long stragglers (outside a pid namespace) may hold our pipes.
_EXIT_GRACE = 0.2


def _base_env(cwd: str, private_tmp: bool) -> dict:
    """A scrubbed environment: nothing of ours is inherited (no keys, no tokens)."""
    tmp = "/tmp" if private_tmp else cwd
    path = os.pathsep.join([os.path.dirname(sys.executable), _SYSTEM_PATH])
    return {"PATH": path, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def _signal_of(code: int | None, isolated: bool) -> int | None:
    if code is None:
        return None
    if code < 0:
        return -code
    if isolated and code > 128:  # bwrap and unshare report a killed child as 128 + N
        return code - 128
    return None


def run(cmd: str | list[str], stdin: str | bytes | None = None, cwd: str | None = None,
        writable: list[str] | tuple = (), network: bool = False, env: dict | None = None,
        limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `cmd` (a string goes through /bin/sh -c) in the sandbox and return its result.

    cwd=None: a fresh temporary directory, removed afterwards; a given cwd is kept and is,
    with `writable`, the only place the program can write. `env` adds to a scrubbed env.
    """
    limits = limits or DEFAULT_LIMITS
    caps = capabilities()
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
    if not argv:
        return SandboxResult("error", None, stderr="sandbox: empty command")
    own_dir = cwd is None
    if own_dir:
        cwd = tempfile.mkdtemp(prefix="dsv4-sbx-")
    cwd = os.path.realpath(cwd)
    if not os.path.isdir(cwd):
        return SandboxResult("error", None, stderr=f"sandbox: cwd {cwd!r} is not a directory")
    try:
        return _run_in(argv, stdin, cwd, list(writable), network, env, limits, caps)
    finally:
        if own_dir:
            shutil.rmtree(cwd, ignore_errors=True)


def _run_in(argv, stdin, cwd, writable, network, env, limits, caps) -> SandboxResult:
    backend = caps["backend"]
    isolated = backend != "plain"
    mem_bytes = int(limits.memory_mb) << 20
    group = None
    if caps["pids_cgroup"] or caps["memory_cgroup"]:
        try:
            group = RunCgroup(limits.max_processes, mem_bytes)
        except OSError:
            group = None
    full = backend_argv(backend, argv, cwd, writable, network)
    if caps["rlimits"]:
        cpu = max(1, int(limits.cpu_seconds + 0.999))
        pl = ["prlimit", f"--cpu={cpu}:{cpu + 1}", f"--fsize={int(limits.max_file_mb) << 20}", "--core=0"]
        if group is None or not group.has("memory"):
            pl.append(f"--as={mem_bytes}")
        full = [*pl, "--", *full]
    if group is not None:
        full = ["/bin/sh", "-c", _JOIN_CGROUPS, "sh", *group.procs_files, "--", *full]
    child_env = _base_env(cwd, caps["private_tmp"])
    child_env.update({str(k): str(v) for k, v in (env or {}).items()})
    data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")

    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(full, cwd=cwd, env=child_env, start_new_session=True,
                                stdin=subprocess.PIPE if data else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        if group is not None:
            group.close()
        return SandboxResult("error", None, stderr=f"sandbox: cannot start: {e}",
                             info={"backend": backend})
    try:
        out, err, truncated, timed_out = _communicate(proc, data, limits, t0 + limits.wall_seconds)
    finally:
        _kill_tree(proc, group, wait=not isolated)
    duration = time.monotonic() - t0
    oom = group.oom_kills() if group is not None else 0
    if group is not None:
        # In a pid namespace whose init is gone the kernel kills every member, so one
        # SIGKILL round without waiting suffices; elsewhere keep killing until empty.
        group.close(wait=not isolated)

    code = proc.returncode
    sig = _signal_of(code, isolated)
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if timed_out or (sig == signal.SIGXCPU and not oom):  # SIGXCPU: only RLIMIT_CPU sends it
        status = "timeout"
    elif oom or (code != 0 and "MemoryError" in stderr[-2000:]):
        status = "memory"
    elif group is not None and code == 126 and stderr.startswith(_JOIN_FAILED):
        status = "error"
    elif isolated and code == 1 and stderr.startswith(("bwrap: ", "unshare: ")):
        status = "error"  # the isolation tool itself failed
    elif code == 0:
        status = "passed"
    else:
        status = "failed"
    return SandboxResult(status, code, stdout, stderr, duration, truncated,
                         info={"backend": backend, "signal": sig, "oom_kills": oom})


def _communicate(proc, data: bytes, limits: SandboxLimits, deadline: float):
    """Feed stdin and read both streams until EOF or the deadline; keep max_output_bytes each."""
    cap = limits.max_output_bytes
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    truncated = False
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    view = memoryview(data)
    if data:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    exited_at = None
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline:
            return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), truncated, True
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > _EXIT_GRACE:
            break  # the program is gone; whatever still holds our pipes gets killed
        wait = deadline - now if exited_at is None else _EXIT_GRACE
        for key, _ in sel.select(timeout=min(wait, 0.05 if exited_at is None else wait)):
            f = key.fileobj
            if f is proc.stdin:
                try:
                    n = os.write(f.fileno(), view[:65536])
                    view = view[n:]
                except (BrokenPipeError, BlockingIOError, OSError) as e:
                    if isinstance(e, BlockingIOError):
                        continue
                    view = view[len(view):]
                if not len(view):
                    sel.unregister(f)
                    f.close()
                continue
            chunk = os.read(f.fileno(), 65536)
            if not chunk:
                sel.unregister(f)
                continue
            buf = bufs[f]
            room = cap - len(buf)
            if len(chunk) > room:
                truncated = True
                chunk = chunk[:max(room, 0)]
            buf += chunk
    timed_out = False
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), truncated, timed_out


def _kill_tree(proc: subprocess.Popen, group: RunCgroup | None, wait: bool = True) -> None:
    """SIGKILL the session (in a pid namespace that kills all of it), then the cgroup."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if group is not None:
        group.kill_all(timeout=2.0 if wait else 0.0)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


# Source larger than this goes to a file instead of `-c` (Linux caps one argument at 128 KiB).
_MAX_INLINE_SOURCE = 100_000


def run_python(code: str, stdin: str | bytes | None = None, cwd: str | None = None,
               writable: list[str] | tuple = (), network: bool = False, env: dict | None = None,
               limits: SandboxLimits | None = None, python: str | None = None,
               no_site: bool = False) -> SandboxResult:
    """Run Python source in the sandbox with `python -I` (isolated: no user site, no PYTHON* env).

    no_site=True adds `-S`: only the standard library is importable, and startup is ~4x
    faster (no site-packages scan, no .pth hooks) — right for HumanEval and RL rewards.
    """
    exe = python or sys.executable
    flags = ["-I", "-S"] if no_site else ["-I"]
    if len(code.encode()) <= _MAX_INLINE_SOURCE:
        return run([exe, *flags, "-c", code], stdin=stdin, cwd=cwd, writable=writable,
                   network=network, env=env, limits=limits)
    own = cwd is None
    d = tempfile.mkdtemp(prefix="dsv4-sbx-") if own else cwd
    path = os.path.join(d, f".dsv4_sandbox_main_{os.getpid()}_{time.monotonic_ns()}.py")
    with open(path, "w") as f:
        f.write(code)
    try:
        return run([exe, *flags, path], stdin=stdin, cwd=d, writable=writable, network=network,
                   env=env, limits=limits)
    finally:
        if own:
            shutil.rmtree(d, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
