"""Run untrusted Python programs (model-generated MBPP solutions + their asserts) in a sandbox that holds.

    with SandboxPool(workers=2, timeout_s=10) as pool:
        results = pool.map(programs)          # order preserved, programs run concurrently across workers
    run_program(source)                       # one-off, same guarantees (starts a one-worker pool)

Each program runs in its own session and PID namespace under a dedicated unprivileged uid, with rlimits (address
space, CPU, file size, open files, processes), a fresh private working directory, a clean environment, a private
/tmp, a read-only view of everything else, and no network (a network namespace with only a down loopback).
`passed` means the program ran to its last line and exited 0: the wrapper writes an unpredictable token only after
the final statement, so sys.exit(0), os._exit(0), quit() or raise SystemExit before the asserts are failures.
Where the kernel refuses a layer, `SandboxResult.isolation` says which ones were in force. The process tree and the
layer details live in `worker.py` (stdlib only; it runs as `python -I` by path). Stdlib-only here too, so
`sparsealign sandbox run` stays light.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sparsealign.sandbox.cgroup import remove as remove_cgroup
from sparsealign.sandbox.program import kill_uid, rlimit_values

WORKER = Path(__file__).with_name("worker.py")
Status = Literal["passed", "failed", "timeout", "error"]
STARTUP_TIMEOUT_S = 60.0
GRACE_S = 30.0  # beyond the program's own limit, before the pool declares a worker hung and replaces it


@dataclass
class SandboxResult:
    status: Status
    reason: str
    duration_s: float
    stdout: str
    stderr: str
    returncode: int | None
    isolation: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False  # stdout or stderr was longer than max_output_bytes

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Worker:
    """One warm worker process; not thread-safe (the pool hands each worker to one thread at a time)."""

    def __init__(self, namespaces: bool = True, memory_mb: int = 1024) -> None:
        # Clean environment from the start: the worker (and every program it forks) never holds the caller's.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.caps: dict[str, Any] = {}
        argv = [sys.executable, "-I", "-B", str(WORKER), "--memory-mb", str(memory_mb), "--parent-pid", str(os.getpid()),
                *([] if namespaces else ["--no-namespaces"])]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
                                     start_new_session=True, close_fds=True)
        hello = self._recv(STARTUP_TIMEOUT_S)
        if not hello or not hello.get("hello"):
            self.kill()
            raise RuntimeError("sandbox worker failed to start")
        self.caps = hello["caps"]
        self.uid: int | None = hello["uid"]

    def run(self, request: dict[str, Any]) -> dict[str, Any] | None:
        data = json.dumps(request).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except OSError:
            return None
        return self._recv(request["timeout_s"] + GRACE_S)

    def _recv(self, timeout: float) -> dict[str, Any] | None:
        head = self._read_exact(4, timeout)
        body = None if head is None else self._read_exact(struct.unpack(">I", head)[0], timeout)
        return None if body is None else json.loads(body)

    def _read_exact(self, n: int, timeout: float) -> bytes | None:
        fd, buf = self.proc.stdout.fileno(), b""
        while len(buf) < n:
            if not select.select([fd], [], [], timeout)[0]:
                return None
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        if not self.caps.get("pid_namespace") and getattr(self, "uid", None):
            kill_uid(self.uid)  # no namespace took the programs down with the worker: their uid does
        if self.caps.get("cgroup"):
            remove_cgroup(self.caps["cgroup"]["dirs"], wait_s=5.0)  # a SIGKILLed worker cannot clean up itself
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # EOF: the worker's loop ends
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class SandboxPool:
    """Warm workers (namespaces entered and modules imported once); each program is a fresh fork under the limits,
    killed with everything it started, its scratch space wiped, before the worker takes the next one."""

    def __init__(self, workers: int = 2, timeout_s: float = 10.0, memory_mb: int = 1024,
                 max_output_bytes: int = 64_000, *, namespaces: bool = True) -> None:
        """`namespaces=False` forgoes the PID/mount/network/IPC namespaces even where the kernel allows them: the
        degraded mode of machines that refuse them (containment then relies on the dedicated uid)."""
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout_s <= 0 or memory_mb < 16 or max_output_bytes < 0:
            raise ValueError("timeout_s must be > 0, memory_mb >= 16 and max_output_bytes >= 0")
        self.timeout_s, self.memory_mb, self.max_output_bytes = float(timeout_s), int(memory_mb), int(max_output_bytes)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._namespaces = namespaces
        self._pid = os.getpid()  # a forked copy of this object must not talk to (or close) our workers
        self._closed = False
        with ThreadPoolExecutor(workers) as ex:  # start them in parallel: each probes the kernel once
            for worker in ex.map(lambda _: _Worker(namespaces, self.memory_mb), range(workers)):
                self._all.append(worker)
                self._idle.put(worker)
        self.workers = workers

    @property
    def isolation(self) -> dict[str, Any]:
        worker = self._all[0]
        return isolation_of(worker.caps, worker.uid, self.timeout_s, self.memory_mb, self.max_output_bytes)

    def run(self, source: str, *, timeout_s: float | None = None, memory_mb: int | None = None,
            max_output_bytes: int | None = None) -> SandboxResult:
        if self._closed or self._pid != os.getpid():
            raise RuntimeError("SandboxPool is closed (or was created by the parent of this forked process)")
        request = {"source": source, "timeout_s": float(timeout_s or self.timeout_s),
                   "memory_mb": int(memory_mb or self.memory_mb),
                   "max_output_bytes": int(self.max_output_bytes if max_output_bytes is None else max_output_bytes)}
        worker = self._idle.get()
        try:
            reply = worker.run(request)
            if reply is None:  # hung or died: replace it, the program is an error, never a pass
                worker = self._replace(worker)
                reply = {"status": "error", "reason": "sandbox worker died or hung; replaced", "duration_s": 0.0,
                         "stdout": "", "stderr": "", "returncode": None}
        finally:
            self._idle.put(worker)
        isolation = isolation_of(worker.caps, worker.uid, request["timeout_s"], request["memory_mb"],
                                 request["max_output_bytes"])
        known = {k: reply[k] for k in ("status", "reason", "duration_s", "stdout", "stderr", "returncode")}
        return SandboxResult(**known, isolation=isolation, truncated=bool(reply.get("truncated")))

    def map(self, sources: Sequence[str]) -> list[SandboxResult]:
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(self.run, sources))

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self._namespaces, self.memory_mb)
        with self._lock:
            self._all[self._all.index(worker)] = fresh
        return fresh

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return  # a forked copy: the workers belong to the parent
        for worker in self._all:
            worker.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_pid", None) == os.getpid():
            try:
                self.close()
            except Exception:  # interpreter shutdown: the workers see EOF and exit on their own
                pass


def isolation_of(caps: dict[str, Any], uid: int | None, timeout_s: float, memory_mb: int,
                 max_output_bytes: int) -> dict[str, Any]:
    """Which layers were in force (the worker probed the kernel at start)."""
    return {
        "uid": uid, "unprivileged_uid": uid is not None,
        **{k: bool(caps.get(k)) for k in ("pid_namespace", "mount_namespace", "private_tmp", "private_proc",
                                          "readonly_root", "network_namespace", "ipc_namespace", "python_readable")},
        "cgroup": caps.get("cgroup") and {k: caps["cgroup"][k] for k in ("version", "memory_mb", "pids_max")},
        "own_session": True, "clean_env": True, "no_new_privs": bool(caps.get("no_new_privs")),
        "rlimits": rlimit_values(timeout_s, memory_mb, max_output_bytes),
    }


_shared: SandboxPool | None = None
_shared_lock = threading.Lock()


def _shared_pool(memory_mb: int) -> SandboxPool:
    """One lazily started worker for `run_program`, kept warm for the process (a fork gets its own), closed at exit;
    replaced when a call needs a larger cgroup than it was started with."""
    global _shared
    with _shared_lock:
        pool = _shared
        if pool is None or pool._closed or pool._pid != os.getpid() or pool.memory_mb < memory_mb:
            if pool is not None and pool._pid == os.getpid():
                pool.close()
            pool = _shared = SandboxPool(1, memory_mb=max(memory_mb, 1024))
            atexit.register(pool.close)
        return pool


def run_program(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024,
                max_output_bytes: int = 64_000) -> SandboxResult:
    """Run one program with the pool's guarantees, on a shared warm one-worker pool (the first call starts it).
    For many programs, a `SandboxPool` of your own runs them concurrently."""
    return _shared_pool(memory_mb).run(source, timeout_s=timeout_s, memory_mb=memory_mb,
                                       max_output_bytes=max_output_bytes)
