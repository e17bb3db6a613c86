"""Sandbox worker: a warm, stdlib-only process that runs untrusted Python programs one at a time.

`SandboxPool` starts it as `python -I worker.py` (by path: it never imports sparsealign) and speaks
length-prefixed JSON on its stdin/stdout. Pre-importing the modules programs use, and forking per program, is what
makes the pool fast; this process tree is what makes it hold:

    outer       the Popen'd process: unshares PID, network and IPC namespaces, waits for W, removes the cgroup
      W         pid 1 of the new PID namespace, root, in the worker's cgroup, in a mount namespace of its own:
                read-only view of the filesystem with a private tmpfs /tmp and /dev/shm, its own /proc, no network
                (`namespaces`). Supervises one program at a time, owns the wall clock.
        Q       the program (`program.run`): own session, rlimits, a dedicated unprivileged uid, clean env
          ...   whatever Q forks, daemons included: orphans are reparented to W

After every program W kills every other process in its namespace (`kill(-1)` from pid 1 of a PID namespace reaches
exactly that namespace), reaps them all, and wipes /tmp and /dev/shm. The program cannot signal W: W is root and
namespace init (immune to SIGKILL from inside), and the harness is outside the namespace altogether. Where the kernel
refuses namespaces, containment falls back to killing by the dedicated uid (`_contain`).
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import signal
import struct
import sys
import time

if __name__ == "__main__":  # run by path: import the sibling, then leave sys.path as a plain `python -I` has it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cgroup
    import namespaces as ns
    import program
    del sys.path[0]
else:
    from sparsealign.sandbox import cgroup, program
    from sparsealign.sandbox import namespaces as ns

# Warm imports: what MBPP-style programs import, so `import re` in a program costs a dict lookup after fork.
# (`random` reseeds itself in every forked child: programs do not replay one stream.)
# Every module more also makes each fork dearer; hence no secrets/tempfile (OpenSSL) in the worker itself.
WARM_MODULES = ("bisect", "collections", "copy", "functools", "heapq", "itertools", "math", "operator", "random",
                "re", "string", "array", "datetime", "typing", "cmath")
LIBC = ns.LIBC
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
IPC_RMID = 0
SCRATCH = ns.SCRATCH
DEVNULL = os.open("/dev/null", os.O_RDONLY)  # the programs' stdin
_hard_exit = os._exit
CGROUP_HEADROOM_MB = 384  # the cgroup holds the worker (~15 MiB) and the private tmpfs pages, besides the program


def _become_w(allowed: bool, cg: dict | None, parent: int, uid: int | None) -> dict:
    """The outer process forks W and stays behind only to wait for it and then remove the cgroup (from outside W's
    read-only mount namespace), or to kill W when `parent` (the pool's process) dies first: the pool's thread that
    started us may end long before the pool, so the kernel's parent-death signal cannot be used here. Returns, in W,
    the layers in force. `allowed=False` skips the namespaces (to exercise the fallback where the kernel refuses
    them)."""
    caps = ns.new_caps()
    if allowed:
        ns.enter_outer(caps)
    w = os.fork()
    if w:  # outer
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _parent_dies_first(parent, w):  # the pool's process died (even SIGKILLed): take W and its programs down
            os.kill(w, signal.SIGKILL)
            if not caps["pid_namespace"] and uid is not None:
                program.kill_uid(uid)  # no namespace dies with W: the programs' uid does
        status = os.waitpid(w, 0)[1]
        if cg is not None:
            cgroup.remove(cg["dirs"], wait_s=5.0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # outer killed -> W killed -> the namespace dies
    if cg is not None:
        cgroup.join(cg)  # before /sys turns read-only; every program inherits it
    if caps["pid_namespace"]:
        ns.enter_mounts(caps)
    return caps


# ---- one program ------------------------------------------------------------------------------------------------

def _parent_dies_first(parent: int, w: int) -> bool:
    """Wait for W to exit or `parent` to die, whichever comes first; True if the parent did."""
    try:
        fds = [os.pidfd_open(parent), os.pidfd_open(w)]
    except OSError:  # no pidfd (kernel < 5.3), or the parent is already gone
        while os.getppid() == parent:
            if os.waitid(os.P_PID, w, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return False
            time.sleep(0.2)
        return True
    try:
        while True:
            try:
                ready = select.select(fds, [], [])[0]
                return fds[0] in ready and fds[1] not in ready
            except InterruptedError:
                continue
    finally:
        for fd in fds:
            os.close(fd)


def _reap_all(block: bool) -> None:
    try:
        while os.waitpid(-1, 0 if block else os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _contain(caps: dict, uid: int | None, session: int) -> int:
    """Kill everything the program left running; returns whether (namespace) or how many (uid) it had left."""
    me = os.getpid()
    if caps["pid_namespace"] and me == 1:  # guard: kill(-1) from pid 1 of a PID namespace reaches only that namespace
        try:
            os.kill(-1, signal.SIGKILL)
            left = 1
        except ProcessLookupError:  # nobody else in the namespace
            left = 0
        _reap_all(block=True)  # orphans are reparented to us before their parent is reaped: this gets them all
        return left
    left = 0 if uid is None else program.kill_uid(uid, between=lambda: _reap_all(block=False))
    if uid is None and session > 0:  # not root: the program's session is all we can name
        try:
            os.killpg(session, signal.SIGKILL)
        except OSError:
            pass
    _reap_all(block=False)
    return left


def _wipe(caps: dict, base: str, uid: int | None) -> None:
    if caps["private_tmp"]:  # our own tmpfs: everything in it is the program's
        try:  # the usual case, without rmtree's walk: the program wrote nothing of its own
            os.unlink(os.path.join(base, "work", "main.py"))
            os.rmdir(os.path.join(base, "work"))
            os.rmdir(base)
        except OSError:
            pass
        for scratch in SCRATCH:
            for entry in os.scandir(scratch):
                shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
        return
    shutil.rmtree(base, ignore_errors=True)
    for scratch in ("/tmp", "/var/tmp", "/dev/shm"):  # shared dirs: remove what the dedicated uid created
        try:
            entries = [e for e in os.scandir(scratch) if uid is not None and e.stat(follow_symlinks=False).st_uid == uid]
        except OSError:
            continue
        for entry in entries:
            shutil.rmtree(entry.path, ignore_errors=True) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)


def _fresh_dir(parent: str) -> str:
    """mkdir (atomic, never follows a planted symlink) of an unguessable name: mkdtemp without importing tempfile."""
    while True:
        path = os.path.join(parent, f"sandbox-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


def run_one(req: dict, caps: dict, uid: int | None, cg: dict | None = None) -> dict:
    base = _fresh_dir("/tmp")  # 0700 root: the capture files are created here
    workdir = os.path.join(base, "work")
    os.mkdir(workdir, 0o700)
    main_py = os.path.join(workdir, "main.py")
    fd = os.open(main_py, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, req["source"].encode("utf-8", errors="surrogatepass"))  # for tracebacks' source lines
    finally:
        os.close(fd)
    if uid is not None:
        os.chmod(base, 0o711)
        for path in (workdir, main_py):
            os.chown(path, uid, uid)
    # Capture files, unlinked once open: the program holds them only as fds 1-3, sized by RLIMIT_FSIZE.
    fds = [DEVNULL]
    for name in ("stdout", "stderr", "report"):
        path = os.path.join(base, name)
        fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(path)
    nonce = os.urandom(16).hex()
    start = time.monotonic()
    q = os.fork()
    if q == 0:
        try:
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            program.run(req, workdir, uid, nonce)
        finally:
            _hard_exit(70)  # never fall back into the worker's code, whatever the program did to `os`
    timed_out = not _exits_within(q, req["timeout_s"])
    if timed_out:
        _kill_group(q)
    _, status, usage = os.wait4(q, 0)
    duration = time.monotonic() - start
    _contain(caps, uid, q)
    cap = req["max_output_bytes"]
    (out, out_n), (err, err_n), (rep, _) = (_read_capped(fd, max(cap, 1 << 16)) for fd in fds[1:])
    for fd in fds[1:]:
        os.close(fd)
    _wipe(caps, base, uid)
    flooded = max(out_n, err_n) >= program.fsize_limit(cap)
    cpu_s = usage.ru_utime + usage.ru_stime
    verdict = program.classify(timed_out, status, program.reports(rep, nonce), flooded, req, cpu_s)
    if verdict["status"] == "failed" and cg is not None:  # OOM kills happen only in programs: compare with the last
        seen, cg["oom_kills"] = cg.get("oom_kills", 0), cgroup.oom_kills(cg)
        if cg["oom_kills"] > seen:
            verdict = {"status": "error", "reason": "memory limit exceeded: the cgroup OOM killer stopped a process"}
    return {**verdict, "duration_s": round(duration, 6), "stdout": _decode(out, cap), "stderr": _decode(err, cap),
            "returncode": os.waitstatus_to_exitcode(status), "truncated": out_n > cap or err_n > cap}


def _exits_within(pid: int, timeout: float) -> bool:
    """Wait (without reaping) until `pid` exits or `timeout` passes; a pidfd where the kernel has one (>= 5.3)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        deadline, nap = time.monotonic() + timeout, 0.0005
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(nap)
            nap = min(nap * 2, 0.02)
        return False
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _kill_group(q: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(q, signal.SIGKILL)
        except OSError:
            pass


def _read_capped(fd: int, cap: int) -> tuple[bytes, int]:
    return os.pread(fd, cap, 0), os.fstat(fd).st_size


def _decode(data: bytes, cap: int) -> str:
    return data[:cap].decode("utf-8", errors="replace")  # invalid UTF-8 becomes U+FFFD, never an exception


SYSV_IPC = {"shm": (9, "shmctl"), "sem": (6, "semctl"), "msg": (9, "msgctl")}  # kind: (creator-uid column, remover)


def _sysv_objects(kind: str) -> list[list[str]]:
    try:
        fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY)
    except OSError:
        return []
    try:
        data = b""
        while chunk := os.read(fd, 1 << 16):
            data += chunk
    finally:
        os.close(fd)
    return [line.split() for line in data.decode().splitlines()[1:] if line.strip()]  # a header, then one per object


def _clean_ipc(caps: dict, uid: int | None) -> None:
    """SysV IPC objects outlive their processes. With an IPC namespace: if a program left any, move to a fresh one.
    Without: remove those the dedicated uid created (the creator column cannot be changed, unlike the owner)."""
    for kind, (cuid_col, remover) in SYSV_IPC.items():
        objects = _sysv_objects(kind)
        if not objects:
            continue
        if caps["ipc_namespace"]:
            ns.unshare(ns.CLONE_NEWIPC)
            return
        for obj in objects:
            if uid is not None and int(obj[cuid_col]) == uid:
                ipc_id = int(obj[1])
                getattr(LIBC, remover)(*((ipc_id, 0, IPC_RMID) if kind == "sem" else (ipc_id, IPC_RMID, None)))


# ---- protocol -----------------------------------------------------------------------------------------------

def _send(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _recv(fd: int) -> dict | None:
    head = _read_exact(fd, 4)
    body = None if head is None else _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def main() -> None:
    import importlib

    proto_in, proto_out = os.dup(0), os.dup(1)  # non-inheritable: programs never see the protocol pipes
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the caller's terminal: the pool shuts us down
    for name in WARM_MODULES:
        importlib.import_module(name)
    args = sys.argv[1:]
    memory_mb = int(args[args.index("--memory-mb") + 1]) if "--memory-mb" in args else 1024
    parent = int(args[args.index("--parent-pid") + 1]) if "--parent-pid" in args else os.getppid()
    if os.getppid() != parent:  # the pool's process died while we were starting
        os._exit(1)
    cg = cgroup.create(f"sparsealign-sandbox-{os.getpid()}", (memory_mb + CGROUP_HEADROOM_MB) << 20,
                       program.NPROC + 16)
    # A dedicated uid no one else uses: RLIMIT_NPROC counts only our programs, kill-by-uid reaches only them.
    uid = 100_000 + int.from_bytes(os.urandom(4), "little") % (1 << 30) if os.geteuid() == 0 else None
    caps = _become_w(allowed="--no-namespaces" not in args, cg=cg, parent=parent, uid=uid)
    program.set_program_env()  # once here, so each fork only sets HOME
    # First in line for the OOM killer, inherited by every program (no write per fork). Within the cgroup the
    # largest process still goes first: the program, not the small worker. If the worker goes, the pool replaces it.
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    # Inherited by every program and irreversible: exec of a setuid binary cannot raise privileges.
    caps["no_new_privs"] = LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    caps["python_readable"] = ns.python_readable()
    caps["cgroup"] = None if cg is None else {"version": cg["version"], "dirs": cg["dirs"],
                                              "memory_mb": memory_mb + CGROUP_HEADROOM_MB, "pids_max": program.NPROC + 16}
    gc.freeze()  # imported objects move to a permanent generation: programs' GC passes skip them (fewer COW faults)
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # without a PID namespace, orphans still come back to us
    _send(proto_out, {"hello": True, "caps": caps, "uid": uid})
    while (req := _recv(proto_in)) is not None:
        try:
            result = run_one(req, caps, uid, cg)
        except Exception as exc:  # the worker's own failure: the program is an error, the worker goes on
            result = {"status": "error", "reason": f"sandbox failure: {type(exc).__name__}: {exc}",
                      "duration_s": 0.0, "stdout": "", "stderr": "", "returncode": None}
            _contain(caps, uid, 0)
        _clean_ipc(caps, uid)
        _send(proto_out, result)


if __name__ == "__main__":
    main()
