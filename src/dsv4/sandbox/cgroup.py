"""One Linux control group per sandboxed run: a process-count and a memory limit for the
whole process tree, the count of OOM kills, and a way to kill every member.

Why cgroups: we run as root, and the kernel never applies RLIMIT_NPROC to root, so only
the `pids` controller can stop a fork bomb; the `memory` controller limits resident
memory of the whole tree (RLIMIT_AS is per process and breaks runtimes that reserve
address space). Both cgroup v1 (a hierarchy per controller) and v2 (one unified
hierarchy, where controllers must be enabled for our subtree) are handled. The group is
created below the cgroup we already live in, so an outer container limit still applies.
Where none of this is possible, `available()` says so and the caller falls back.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import threading
import time

_counter = itertools.count()
_layout_cache: dict | None = None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _layout() -> dict:
    """{"pids": dir, "memory": dir, "v2": bool}: our own cgroup directory per controller."""
    global _layout_cache
    if _layout_cache is not None:
        return _layout_cache
    mounts: dict[str, str] = {}
    try:
        for line in _read("/proc/self/mountinfo").splitlines():
            pre, _, post = line.partition(" - ")
            fstype, _src, opts = (post.split() + ["", "", ""])[:3]
            mountpoint = pre.split()[4]
            if fstype == "cgroup":
                for opt in opts.split(","):
                    if opt in ("pids", "memory"):
                        mounts[opt] = mountpoint
            elif fstype == "cgroup2":
                mounts.setdefault("unified", mountpoint)
        own: dict[str, str] = {}
        for line in _read("/proc/self/cgroup").splitlines():
            _id, ctrls, path = line.split(":", 2)
            for c in ctrls.split(",") if ctrls else ["unified"]:
                own[c] = path
    except OSError:
        mounts, own = {}, {}
    layout: dict = {"v2": False}
    for c in ("pids", "memory"):
        if c in mounts and c in own:
            layout[c] = os.path.join(mounts[c], own[c].lstrip("/"))
    if "pids" not in layout and "memory" not in layout and "unified" in mounts and "unified" in own:
        base = os.path.join(mounts["unified"], own["unified"].lstrip("/"))
        layout.update(v2=True, pids=base, memory=base)
        try:  # children get the controllers only if our group hands them down (root may)
            enabled = _read(os.path.join(base, "cgroup.subtree_control")).split()
            for c in ("pids", "memory"):
                if c not in enabled:
                    _write(os.path.join(base, "cgroup.subtree_control"), f"+{c}")
        except OSError:
            pass  # not ours to change: RunCgroup then fails and the caller falls back
    _layout_cache = layout
    return layout


class RunCgroup:
    """The per-run group(s). `procs_files` are the files to write the first pid into."""

    def __init__(self, max_processes: int, memory_bytes: int):
        lay = _layout()
        self.v2 = lay["v2"]
        self.dirs: dict[str, str] = {}
        name = f"dsv4-sbx-{os.getpid()}-{next(_counter)}"
        try:
            if self.v2:
                d = os.path.join(lay["pids"], name)
                os.mkdir(d)
                self.dirs = {"pids": d, "memory": d}
                _write(os.path.join(d, "pids.max"), str(max_processes))
                _write(os.path.join(d, "memory.max"), str(memory_bytes))
                try:
                    _write(os.path.join(d, "memory.swap.max"), "0")
                except OSError:
                    pass
            else:
                for c in ("pids", "memory"):
                    if c in lay:
                        d = os.path.join(lay[c], name)
                        try:
                            os.mkdir(d)
                        except OSError:
                            continue  # this controller is not ours to use; keep the other
                        self.dirs[c] = d
                if not self.dirs:
                    raise OSError("no writable cgroup controller")
                if "pids" in self.dirs:
                    _write(os.path.join(self.dirs["pids"], "pids.max"), str(max_processes))
                if "memory" in self.dirs:
                    m = self.dirs["memory"]
                    _write(os.path.join(m, "memory.limit_in_bytes"), str(memory_bytes))
                    try:  # no swap either, where swap accounting exists
                        _write(os.path.join(m, "memory.memsw.limit_in_bytes"), str(memory_bytes))
                    except OSError:
                        pass
        except OSError:
            self.close()
            raise

    @property
    def procs_files(self) -> list[str]:
        return sorted({os.path.join(d, "cgroup.procs") for d in self.dirs.values()})

    def has(self, controller: str) -> bool:
        return controller in self.dirs

    def oom_kills(self) -> int:
        d = self.dirs.get("memory")
        if d is None:
            return 0
        fname = "memory.events" if self.v2 else "memory.oom_control"
        try:
            for line in _read(os.path.join(d, fname)).splitlines():
                key, _, val = line.partition(" ")
                if key == "oom_kill":
                    return int(val)
            if not self.v2:  # old kernels without the counter: hitting the limit at all
                return int(_read(os.path.join(d, "memory.failcnt")).strip() or 0)
        except (OSError, ValueError):
            pass
        return 0

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files:
            try:
                out.update(int(x) for x in _read(f).split())
            except (OSError, ValueError):
                pass
        return sorted(out)

    def kill_all(self, timeout: float = 2.0) -> None:
        """SIGKILL every member until the group is empty (new forks are caught next round).
        timeout=0: one round, no waiting (when a dead pid namespace already dooms them all)."""
        if self.v2:
            try:
                _write(os.path.join(self.dirs["pids"], "cgroup.kill"), "1")
            except (OSError, KeyError):
                pass
        deadline = time.monotonic() + timeout
        while True:
            members = self.pids()
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if not members or time.monotonic() >= deadline:
                return
            time.sleep(0.002)

    def close(self, wait: bool = True) -> None:
        """Kill what is left and remove the group. rmdir stays EBUSY for a few ms after the
        last member died; rather than wait for it here, a background thread retries."""
        self.kill_all(timeout=2.0 if wait else 0.0)
        busy = []
        for d in set(self.dirs.values()):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(d)
        self.dirs = {}
        if busy:
            _reaper.add(busy)


class _Reaper:
    """Removes emptied cgroup directories off the caller's path (and at exit)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.todo: list[tuple[str, float]] = []
        self.thread: threading.Thread | None = None

    def add(self, dirs: list[str]) -> None:
        with self.cond:
            self.todo += [(d, time.monotonic() + 5.0) for d in dirs]
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="dsv4-cgroup-reaper", daemon=True)
                self.thread.start()
                atexit.register(self.flush)
            self.cond.notify()

    def _sweep(self) -> None:
        keep = []
        for d, give_up in self.todo:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                if time.monotonic() < give_up:
                    keep.append((d, give_up))
        self.todo = keep

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.todo:
                    self.cond.wait()
                self._sweep()
            time.sleep(0.01)

    def flush(self) -> None:
        with self.cond:
            while self.todo:
                self._sweep()
                if self.todo:
                    time.sleep(0.01)


_reaper = _Reaper()


def available() -> dict:
    """Which limits this machine lets us set: {"pids_cgroup": bool, "memory_cgroup": bool}."""
    try:
        g = RunCgroup(max_processes=64, memory_bytes=64 << 20)
    except OSError:
        return {"pids_cgroup": False, "memory_cgroup": False}
    try:
        return {"pids_cgroup": g.has("pids"), "memory_cgroup": g.has("memory")}
    finally:
        g.close()
