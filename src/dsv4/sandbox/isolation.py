"""Which OS isolation layers this machine offers, and the command line that applies them.

Backends, best first (what Codex CLI does on Linux, with the tools Debian ships):
- "bwrap"   bubblewrap: a mount namespace whose root is a read-only bind of `/` with only
            the working directory (and `writable` paths) bound read-write, a private /tmp,
            /dev and /proc; new pid, ipc, uts and (unless network=True) network namespaces;
            every capability dropped. The program runs as root *without capabilities*, so
            it cannot remount anything, while files in its (root-owned) working directory
            stay writable; no_new_privs stops setuid binaries from giving power back.
- "unshare" util-linux `unshare` + `setpriv`: the same namespaces, every mount remounted
            read-only except the writable paths, capabilities dropped; /tmp stays shared but
            read-only (TMPDIR points at the working directory instead).
- "plain"   only a process group, rlimits and cgroups: a loud warning says what is missing.
In the pid namespace the program's tree dies with its init, so killing our direct child
(its session, or the `bwrap` process) kills every descendant, including ones that called
setsid(). Cgroups (see cgroup.py) add the process-count and memory limits on top.

DSV4_SANDBOX_BACKEND=bwrap|unshare|plain forces a backend (tests use it for the fallbacks).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

from dsv4.sandbox import cgroup

BACKENDS = ("bwrap", "unshare", "plain")

# Runs inside the unshare'd namespaces as root: make every mount read-only (deepest first,
# so that a parent remount cannot hide a child), then re-open the writable paths, then drop
# all capabilities for good before exec'ing the program. Args: cwd, writable paths, "--", argv.
_UNSHARE_SCRIPT = r"""
set -e
mount --make-rprivate / 2>/dev/null || true
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -r); do
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
cwd=$1; shift
while [ "$1" != "--" ]; do
  mount --bind "$1" "$1"; mount -o remount,bind,rw "$1"; shift
done
shift
cd "$cwd"  # re-enter through the new read-write mount (the old cwd is the read-only one)
exec setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- "$@"
"""


def _probe(argv: list[str]) -> bool:
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def backend_argv(backend: str, cmd: list[str], cwd: str, writable: list[str], network: bool) -> list[str]:
    """The command line that runs `cmd` in `cwd` under `backend`."""
    binds = sorted({os.path.realpath(p) for p in [cwd, *writable]}, key=len)
    if backend == "bwrap":
        argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        for p in binds:
            argv += ["--bind", p, p]
        argv += ["--chdir", cwd, "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        if not network:
            argv.append("--unshare-net")
        argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--", *cmd]
        return argv
    if backend == "unshare":
        argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                "--mount-proc", "--ipc", "--uts"]
        if not network:
            argv.append("--net")
        return [*argv, "--", "/bin/sh", "-c", _UNSHARE_SCRIPT, "sh", cwd, *binds, "--", *cmd]
    return list(cmd)


def _detect() -> dict:
    return _detect_for(os.environ.get("DSV4_SANDBOX_BACKEND", "").strip())


@functools.cache
def _detect_for(forced: str) -> dict:
    if forced and forced not in BACKENDS:
        raise ValueError(f"DSV4_SANDBOX_BACKEND must be one of {BACKENDS}, got {forced!r}")
    tmp = os.path.realpath(os.environ.get("TMPDIR", "/tmp"))
    ok = {"bwrap": False, "unshare": False}
    if forced in ("", "bwrap") and shutil.which("bwrap"):
        ok["bwrap"] = _probe(backend_argv("bwrap", ["/bin/true"], tmp, [], network=False))
    if forced in ("", "unshare") and not ok["bwrap"] and shutil.which("unshare") and shutil.which("setpriv"):
        ok["unshare"] = _probe(backend_argv("unshare", ["/bin/true"], tmp, [], network=False))
    backend = "bwrap" if ok["bwrap"] else "unshare" if ok["unshare"] else "plain"
    if forced and forced != backend:
        raise RuntimeError(f"DSV4_SANDBOX_BACKEND={forced} was asked for but does not work here")
    isolated = backend != "plain"
    caps = {
        "backend": backend,
        "bwrap": backend == "bwrap",
        "unshare": backend == "unshare",
        "netns": isolated,
        "pidns": isolated,
        "mount_ns": isolated,
        "readonly_root": isolated,
        "private_tmp": backend == "bwrap",
        "caps_dropped": isolated,
        "process_group": True,
        "rlimits": shutil.which("prlimit") is not None,
        **cgroup.available(),
    }
    return caps


_warned: set[str] = set()


def capabilities() -> dict:
    """Which isolation layers are active here; warns once, loudly, about missing ones."""
    caps = _detect()
    if caps["backend"] not in _warned:
        _warned.add(caps["backend"])
        missing = [k for k, v in caps.items() if v is False and k not in ("bwrap", "unshare", "private_tmp")]
        if caps["backend"] != "bwrap":
            missing.insert(0, "bwrap (apt-get install bubblewrap)")
        if missing:
            print("=" * 72 + "\nWARNING dsv4.sandbox: isolation layers unavailable on this machine: "
                  + ", ".join(missing) + f"\n  running with backend={caps['backend']!r}; the rest of "
                  "the limits still apply.\n" + "=" * 72, file=sys.stderr, flush=True)
    return dict(caps)
