"""Processes that end with the process that started them, and the identity a ledger claim is tied to.

A study's pool workers (and the sandbox workers they start) must not outlive a killed study: an orphan keeps its
memory and may finish a cell that a resumed run has already re-run. On Linux the kernel's parent-death signal does
this (`PR_SET_PDEATHSIG`); because that signal follows the *thread* that started the child, and does not exist
elsewhere, a watchdog thread on the parent's pid backs it up (a pidfd where the kernel has one, polling otherwise).
Stdlib only: pool workers call it before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1
POLL_S = 0.25
LEASE_S = 60.0  # a claim from another host counts as live while its heartbeat is younger than this
HEARTBEAT_S = 15.0


def die_with_parent(parent_pid: int) -> None:
    """In a child process: be killed as soon as `parent_pid` dies, however it dies (SIGKILL included)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    watch_parent(parent_pid)


def watch_parent(parent_pid: int) -> threading.Thread:
    """A daemon thread that SIGKILLs this process when `parent_pid` exits (the portable half of die_with_parent)."""
    thread = threading.Thread(target=_wait_then_die, args=(parent_pid,), name="parent-watchdog", daemon=True)
    thread.start()
    return thread


def _wait_then_die(parent_pid: int) -> None:
    wait_for_exit(parent_pid)
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for_exit(pid: int, timeout: float | None = None) -> bool:
    """Block until `pid` (our parent, or any process we may signal) exits; False if `timeout` passed first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)
    while deadline is None or time.monotonic() < deadline:
        if not pid_alive(pid):  # a dead parent is a zombie only until init reaps it
            return True
        time.sleep(POLL_S)
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] == "Z"


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().decode(errors="replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str:
    """The kernel's start time of `pid` (clock ticks since boot): with the pid, a name no later process reuses.
    "" where /proc is absent (the lease's heartbeat then decides)."""
    stat = _stat(pid)
    return stat[19] if stat else ""


def descendants(root: int) -> dict[int, str]:
    """Every live process under `root`, itself included: pid -> start time (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append(int(entry))
            starts[int(entry)] = stat[19]
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in starts:
            found[pid] = starts[pid]
            stack += children.get(pid, [])
    return found


def alive_of(processes: dict[int, str]) -> list[int]:
    """Those of `processes` (pid -> start time) still running: not zombies, and not a later process on a reused pid."""
    return [pid for pid, start in processes.items() if (stat := _stat(pid)) is not None and stat[0] != "Z"
            and stat[19] == start]


def reap_tree_on_exit(root: int | None = None) -> subprocess.Popen:
    """Start a small reaper that follows `root`'s process tree (this process by default) and, once `root` dies,
    SIGKILLs whatever of it is left: for trees whose members we do not start ourselves and cannot arm (Ray's
    raylet starts agents that outlive a killed driver)."""
    root = os.getpid() if root is None else root
    code = "import sys; from sparsealign.lifetime import _reap; _reap(int(sys.argv[1]))"
    return subprocess.Popen([sys.executable, "-c", code, str(root)], stdin=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _reap(root: int) -> None:
    seen: dict[int, str] = {}
    while True:
        seen.update({pid: start for pid, start in descendants(root).items() if pid not in (root, os.getpid())})
        if wait_for_exit(root, timeout=1.0):
            break
    for pid in alive_of(seen):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def owner_id(pid: int | None = None) -> str:
    """`host:pid:start` of this process (or `pid` on this host): who holds a ledger claim."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_time(pid)}"


def owner_alive(owner: str, heartbeat: float | None, now: float | None = None) -> bool:
    """Whether the process named by `owner` may still be running. On this host: its pid exists and started when the
    claim says (a reused pid is not it). On another host: its heartbeat is younger than LEASE_S."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host == socket.gethostname() and pid_text.isdigit() and started:
        return bool(alive_of({int(pid_text): started}))
    return heartbeat is not None and (now or time.time()) - heartbeat < LEASE_S


@contextlib.contextmanager
def child_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context process pool whose workers die with this process.  On an exception (Ctrl-C included) the
    running workers are killed and nothing waits for them: `ProcessPoolExecutor`'s own exit joins its running tasks,
    which kept an interrupted study waiting until every worker finished (167 s measured while pretraining).  (A killed
    worker's semaphores are reported by multiprocessing's resource tracker at exit; SIGINT to the workers first did
    not end them within 5 s while pretraining.)"""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch/OpenMP state
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent,
                               initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        for process in list((pool._processes or {}).values()):  # no public handle on the workers
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)  # the workers are dead: this only releases the queues
        raise
    pool.shutdown(wait=True)
