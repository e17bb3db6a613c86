"""Optional cgroup for one sandbox worker: caps the memory and the process count of the whole program tree.

RLIMIT_AS bounds each process, RLIMIT_NPROC their number; only a cgroup bounds their product (64 forks x 1 GiB) and
the tmpfs pages a program writes. Best effort: cgroup v2 (a child of the root cgroup, which has no internal-process
rule) or v1 (memory and pids hierarchies, under our own cgroup so the caller's limits still apply); `None` where
neither is writable. Stdlib only (imported by the worker, which runs by path).
"""

from __future__ import annotations

import os

ROOT = "/sys/fs/cgroup"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_v1_path(controller: str) -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return "/"


def create(name: str, memory_bytes: int, pids_max: int) -> dict | None:
    """Make the cgroup(s) and set the limits; returns {"version", "dirs", "events"} or None."""
    try:
        if os.path.exists(f"{ROOT}/cgroup.controllers"):  # unified hierarchy
            with open(f"{ROOT}/cgroup.subtree_control") as f:
                available = f.read().split()
            missing = [c for c in ("memory", "pids") if c not in available]
            if missing:
                _write(f"{ROOT}/cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
            d = f"{ROOT}/{name}"
            os.mkdir(d)
            _write(f"{d}/memory.max", str(memory_bytes))
            _write(f"{d}/memory.swap.max", "0") if os.path.exists(f"{d}/memory.swap.max") else None
            _write(f"{d}/pids.max", str(pids_max))
            return {"version": 2, "dirs": [d], "events": f"{d}/memory.events"}
        mem = f"{ROOT}/memory{_own_v1_path('memory').rstrip('/')}/{name}"
        pids = f"{ROOT}/pids{_own_v1_path('pids').rstrip('/')}/{name}"
        os.mkdir(mem)
        _write(f"{mem}/memory.limit_in_bytes", str(memory_bytes))
        try:
            _write(f"{mem}/memory.memsw.limit_in_bytes", str(memory_bytes))
        except OSError:
            pass  # no swap accounting
        dirs = [mem]
        try:
            os.mkdir(pids)
            _write(f"{pids}/pids.max", str(pids_max))
            dirs.append(pids)
        except OSError:
            pass
        return {"version": 1, "dirs": dirs, "events": f"{mem}/memory.oom_control"}
    except (OSError, ValueError):
        return None


def join(cgroup: dict, pid: int = 0) -> None:
    for d in cgroup["dirs"]:
        _write(f"{d}/cgroup.procs", str(pid or os.getpid()))


def oom_kills(cgroup: dict | None) -> int:
    """How many processes the cgroup's OOM killer has killed so far (kernel >= 4.13 counts them)."""
    if cgroup is None:
        return 0
    try:
        with open(cgroup["events"]) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def remove(dirs: list[str], wait_s: float = 0.0) -> bool:
    """Remove the (emptied) cgroups; a process killed a moment ago may still be leaving them, so retry for `wait_s`.
    Called from outside the worker's mount namespace: by its outer process, or by the pool after a SIGKILL."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for d in dirs:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        if not left or time.monotonic() >= deadline:
            return not left
        dirs = left
        time.sleep(0.01)
