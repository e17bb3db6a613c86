"""The sandboxed program's own process (Q in `worker`): drop to the limits, then run the source.

Stdlib only: imported by the worker (run by path) and by `sandbox` (for the rlimit table in `isolation`).
"""

from __future__ import annotations

import _signal
import atexit
import builtins
import io
import json
import os
import resource  # imported here, in the warm worker: a fresh import in every program costs ~1 ms
import signal
import sys
import threading
import traceback
import types

FSIZE_FLOOR = 16 << 20  # files a program writes (its captured output included) stop growing here
NOFILE, NPROC = 128, 64  # NPROC counts per uid, and every worker has its own uid
RESET_SIGNALS = (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2)
REPORT_FD = 3
# Bound now, in the worker: a program that monkeypatches `os` cannot stop the wrapper from reporting or exiting.
_write, _exit = os.write, os._exit
_STREAMS: list[io.TextIOWrapper] = []  # the program's real stdout and stderr, whatever it rebinds sys.stdout to


PROGRAM_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


def set_program_env() -> None:
    """The whole environment a program sees; clear() also clears the C-level environ (nothing of the caller)."""
    os.environ.clear()
    os.environ.update(PROGRAM_ENV)


def rlimit_values(timeout_s: float, memory_mb: int, max_output_bytes: int) -> dict[str, int]:
    """Soft limits (the CPU hard limit is one second above: SIGXCPU first, SIGKILL after)."""
    return {
        "RLIMIT_AS": memory_mb << 20,
        "RLIMIT_CPU": int(timeout_s) + 1,
        "RLIMIT_FSIZE": fsize_limit(max_output_bytes),
        "RLIMIT_NOFILE": NOFILE,
        "RLIMIT_NPROC": NPROC,
        "RLIMIT_CORE": 0,
        "RLIMIT_MSGQUEUE": 0,
    }


def fsize_limit(max_output_bytes: int) -> int:
    return max(FSIZE_FLOOR, max_output_bytes)


def _apply_rlimits(req: dict) -> None:
    for name, value in rlimit_values(req["timeout_s"], req["memory_mb"], req["max_output_bytes"]).items():
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))


def run(req: dict, workdir: str, uid: int | None, nonce: str) -> None:
    """fds on entry: 0=/dev/null 1=stdout file 2=stderr file 3=report file. Never returns."""
    try:
        os.setsid()
        os.closerange(REPORT_FD + 1, 65536)
        for sig in RESET_SIGNALS:
            _signal.signal(sig, _signal.SIG_DFL)  # _signal: the enum-wrapping `signal.signal` costs ~40 us a call
        _signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(workdir)
        if set(os.environ) - set(PROGRAM_ENV):  # the worker already holds exactly PROGRAM_ENV: normally skipped
            set_program_env()
        os.environ["HOME"] = workdir
        _apply_rlimits(req)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                                       errors="backslashreplace", line_buffering=True)
        _STREAMS[:] = [sys.stdout, sys.stderr]
        path = os.path.join(workdir, "main.py")
        main = types.ModuleType("__main__")
        main.__file__, main.__builtins__ = path, builtins
        sys.modules["__main__"], sys.argv = main, [path]
    except BaseException as exc:  # the sandbox could not set up: never blame (or run) the program
        traceback.print_exc(file=sys.__stderr__)
        _report(nonce, "setup", type(exc).__name__, str(exc))
        _flush_and_exit(1)
    try:
        code = compile(req["source"], path, "exec")
    except BaseException as exc:  # SyntaxError and friends: the program is wrong
        traceback.print_exception(type(exc), exc, None, file=_STREAMS[1])
        _report(nonce, "exception", type(exc).__name__, str(exc))
        _flush_and_exit(1)
    _execute(code, main.__dict__, nonce)


def _execute(code: types.CodeType, namespace: dict, nonce: str) -> None:
    try:
        exec(code, namespace)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=_STREAMS[1])
        _report(nonce, "exit", "SystemExit", str(exc.code))
        _flush_and_exit(status)
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next, file=_STREAMS[1])
        _report(nonce, "exception", type(exc).__name__, str(exc)[:500])
        _flush_and_exit(1)
    # Only here did the last line run. The token comes after the flush: an unwritable stdout is no pass.
    try:
        _STREAMS[0].flush()
    except BaseException as exc:
        _report(nonce, "exception", type(exc).__name__, str(exc)[:500])
        _flush_and_exit(120)
    _write(REPORT_FD, f"{nonce} done\n".encode())
    threading._shutdown()  # like interpreter exit: wait for the program's non-daemon threads, run atexit
    atexit._run_exitfuncs()
    _flush_and_exit(0)


def _report(nonce: str, kind: str, etype: str, message: str) -> None:
    line = json.dumps({"kind": kind, "type": etype, "message": message})
    try:
        _write(REPORT_FD, f"{nonce} {line}\n".encode())
    except OSError:
        pass


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr, *_STREAMS):  # whatever the program bound, then the real ones
        try:
            stream.flush()
        except BaseException:
            pass
    _exit(code & 0xFF)


# ---- containment without a PID namespace (used by the worker, and by the pool when it kills a worker) ----------

def processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is `uid`, from /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                out.append(int(name))
        except (OSError, KeyError, ValueError):
            continue
    return out


def kill_uid(uid: int, between=None) -> int:
    """Kill every process of the dedicated `uid` (exactly the sandbox's programs): a forked helper drops to that uid
    and calls kill(-1), which reaches all of that uid's processes and nothing else, and no fork can outrun it.
    Repeats until /proc shows none; `between` runs after each round (e.g. reaping). Returns the most seen at once."""
    if uid <= 0:
        raise ValueError("kill_uid needs a dedicated non-root uid")
    most = 0
    for _ in range(100):
        stray = processes_of(uid)
        if not stray:
            break
        most = max(most, len(stray))
        killer = os.fork()
        if killer == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                if os.getuid() == uid:
                    os.kill(-1, signal.SIGKILL)
            finally:
                _exit(0)
        os.waitpid(killer, 0)
        if between is not None:
            between()
    return most


# ---- verdict (computed by the worker from what the wrapper reported) -----------------------------------------

def reports(data: bytes, nonce: str) -> list[dict | str]:
    """Lines the wrapper wrote; a line without the token is the program's own writing and is ignored."""
    out: list[dict | str] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        token, _, rest = line.partition(" ")
        if token == nonce:
            out.append("done" if rest == "done" else json.loads(rest))
    return out


def classify(timed_out: bool, status: int, reported: list[dict | str], flooded: bool, req: dict,
             cpu_s: float = 0.0) -> dict[str, str]:
    """Map what happened to passed | failed | timeout | error with a one-line reason (`cpu_s`: the program's own
    CPU time, which tells RLIMIT_CPU's SIGKILL from any other)."""
    if timed_out:
        return {"status": "timeout", "reason": f"wall-clock limit of {req['timeout_s']:g} s exceeded; process group killed"}
    code = os.waitstatus_to_exitcode(status)
    info = next((r for r in reported if isinstance(r, dict)), None)
    if code == 0 and "done" in reported:
        return {"status": "passed", "reason": "ran to the last line and exited 0"}
    if code < 0:
        sig = signal.Signals(-code).name
        cpu_limit = rlimit_values(req["timeout_s"], req["memory_mb"], req["max_output_bytes"])["RLIMIT_CPU"]
        if -code == signal.SIGXCPU or (-code == signal.SIGKILL and cpu_s >= cpu_limit):
            return {"status": "timeout", "reason": f"CPU time limit reached (killed by {sig})"}
        return {"status": "failed", "reason": f"killed by signal {sig}"}
    if flooded:
        return {"status": "error", "reason": f"output limit exceeded ({fsize_limit(req['max_output_bytes'])} bytes)"}
    if info and info["kind"] == "setup":
        return {"status": "error", "reason": f"sandbox setup failed: {info['type']}: {info['message']}"[:300]}
    if info and info["type"] == "MemoryError":
        return {"status": "error", "reason": f"memory limit of {req['memory_mb']} MiB exceeded (MemoryError)"}
    if info and info["kind"] == "exit":
        return {"status": "failed", "reason": f"exited early via SystemExit({info['message']}) before the last line"}
    if info:
        return {"status": "failed", "reason": f"{info['type']}: {info['message']}".strip().rstrip(":")[:300]}
    if code == 0:
        return {"status": "failed", "reason": "exited with code 0 before the last line ran (os._exit or exec)"}
    return {"status": "failed", "reason": f"exited with code {code}"}
