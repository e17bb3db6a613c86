"""Hostile programs against the real sandbox: each one contained, classified, and nothing left running afterwards.

Runs as root (here and in CI): programs drop to the pool's dedicated uid. Stray processes are looked for on the host's
/proc by that uid and by a marker in their command line.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from sparsealign.sandbox.pool import SandboxPool, SandboxResult

TIMEOUT_S = 2.0


def _pgrep(*args: str) -> list[str]:
    """procps `pgrep`, independent of the sandbox's own /proc scanning: matching processes as `pid cmdline`."""
    proc = subprocess.run(["pgrep", "-a", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode in (0, 1), proc.stderr  # 1: nothing matched
    return proc.stdout.splitlines()


def assert_no_strays(pool: SandboxPool, marker: str | None = None) -> None:
    uid = pool.isolation["uid"]
    left = (_pgrep("-u", str(uid)) if uid is not None else []) + (_pgrep("-f", marker) if marker else [])
    assert not left, f"processes survived the program: {left}"


def run(pool: SandboxPool, source: str) -> SandboxResult:
    result = pool.run(textwrap.dedent(source))
    assert result.status in ("passed", "failed", "timeout", "error")
    return result


@pytest.fixture(scope="module", params=["namespaces", "uid-only"])
def pool(request):
    """Every hostile case runs twice: with all layers, and in the degraded mode of kernels that refuse namespaces."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox tests run as root (as in CI): programs drop to a dedicated uid")
    with SandboxPool(workers=2, timeout_s=TIMEOUT_S, memory_mb=512, namespaces=request.param == "namespaces") as p:
        yield p


def test_layers_in_force(pool):
    iso = pool.isolation
    assert iso["unprivileged_uid"] and iso["uid"] not in (0, None)
    assert iso["rlimits"]["RLIMIT_NPROC"] > 0 and iso["rlimits"]["RLIMIT_AS"] == 512 << 20
    seen = run(pool, """
        import os, resource
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print(os.getuid(), os.getgid(), os.getgroups(), status["NoNewPrivs"].strip(), os.getsid(0) == os.getpid(),
              resource.getrlimit(resource.RLIMIT_NPROC)[0], resource.getrlimit(resource.RLIMIT_AS)[0] >> 20)
    """)
    assert seen.stdout.split() == [str(iso["uid"]), str(iso["uid"]), "[]", "1", "True", "64", "512"], seen
    if iso["pid_namespace"]:
        assert iso["mount_namespace"] and iso["private_tmp"] and iso["private_proc"] and iso["python_readable"]
        result = run(pool, "import os, csv, json, socket, sqlite3\nprint(sorted(os.listdir('/proc'))[:1], os.getpid())")
        assert result.status == "passed", result  # modules the worker did not pre-import still load


def test_fork_bomb_is_contained(pool):
    result = run(pool, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    assert result.status == "timeout", result
    assert_no_strays(pool)
    assert run(pool, "assert 1 + 1 == 2").status == "passed"  # the pool is healthy afterwards


def test_memory_bomb_is_stopped(pool):
    result = run(pool, """
        chunks = []
        while True:
            chunks.append(bytearray(64 << 20))
    """)
    assert result.status == "error" and "memory limit" in result.reason, result
    assert_no_strays(pool)


@pytest.mark.parametrize("loop", ["sum(range(10**13))", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')"])
def test_infinite_loop_inside_one_c_call_times_out(pool, loop):
    result = run(pool, f"import signal\nsignal.alarm(0)\n{loop}\nprint('finished?')")
    assert result.status == "timeout" and "wall-clock" in result.reason, result
    assert TIMEOUT_S <= result.duration_s < TIMEOUT_S + 5
    assert result.stdout == ""
    assert_no_strays(pool)


def test_output_flood_is_capped(pool):
    result = run(pool, "import sys\nwhile True:\n    sys.stdout.write('spam' * 4096)\n")
    assert result.status == "error" and "output limit" in result.reason, result
    assert result.truncated and len(result.stdout) <= 64_000 and result.stdout.startswith("spam")


def test_invalid_utf8_output_is_decoded_safely(pool):
    result = run(pool, r"""
        import sys
        sys.stdout.buffer.write(b"ok \xff\xfe\xc3 end\n")
        sys.stderr.buffer.write(b"\x80\x81 err\n")
        sys.stdout.flush(); sys.stderr.flush()
    """)
    assert result.status == "passed", result
    assert result.stdout == "ok \ufffd\ufffd\ufffd end\n" and result.stderr == "\ufffd\ufffd err\n"


def test_writes_outside_the_workdir_do_not_survive(pool, tmp_path):
    marker = f"sandbox-escape-{secrets.token_hex(4)}"
    open_dir = tmp_path / "world-writable"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)  # a directory any uid may write: only the read-only view protects it
    targets = [f"/tmp/{marker}", f"/var/tmp/{marker}", f"/dev/shm/{marker}", str(open_dir / marker),
               str(Path.cwd() / marker)]
    result = run(pool, f"""
        import os
        print(os.getcwd())
        for path in {targets!r}:
            try:
                with open(path, "w") as f:
                    f.write("escaped")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, exc.errno)
        open("inside.txt", "w").write("fine")
    """)
    assert result.status == "passed", result
    workdir = result.stdout.splitlines()[0]
    for path in targets:
        if path.startswith(str(open_dir)) and not pool.isolation["readonly_root"]:
            continue  # without a mount namespace a world-writable directory is writable: isolation says so
        assert not Path(path).exists(), f"{path} survived: {result.stdout}"
    assert not Path(workdir).exists()
    seen = run(pool, f"import os\nprint(os.path.exists('/tmp/{marker}'), os.listdir('/tmp'))")
    assert seen.stdout.startswith("False"), seen.stdout  # the next program does not see the last one's files


def test_sysv_ipc_objects_do_not_survive(pool):
    key = secrets.randbelow(1 << 30) + 1
    libc = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    made = run(pool, libc + f"""
print(libc.shmget({key}, 4096, 0o1600) >= 0, libc.semget({key}, 1, 0o1600) >= 0, libc.msgget({key}, 0o1600) >= 0)
""")
    assert made.stdout == "True True True\n", made  # IPC_CREAT | 0600: all three were created
    for _ in range(pool.workers):  # the next program of every worker, the one that ran the first included
        seen = run(pool, libc + f"print(libc.shmget({key}, 0, 0), libc.semget({key}, 0, 0), libc.msgget({key}, 0))")
        assert seen.stdout == "-1 -1 -1\n", seen
    for kind in ("shm", "sem", "msg"):  # and nothing of it on the host either
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        assert key not in {int(line.split()[0]) for line in lines if line.strip()}


def test_network_connect_to_a_local_listener_fails(pool):
    if not pool.isolation["network_namespace"]:
        pytest.skip("no network namespace on this kernel/mode (isolation reports network_namespace=False)")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        result = run(pool, f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"exfiltrate")
        """)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result.status == "failed" and ("unreachable" in result.reason or "refused" in result.reason), result


def _daemon_then(then: str) -> tuple[str, str]:
    """A program that double-forks a daemon (`sleep <unique marker>` in its own session), then runs `then`."""
    marker = f"{secrets.randbelow(10**6) + 10**6}.{secrets.randbelow(1000):03d}"
    source = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "{marker}"])
            os._exit(0)
    """) + textwrap.dedent(then)
    return source, marker


@pytest.mark.parametrize(("then", "status"), [
    ("time.sleep(0.3)\nprint('parent done')\n", "passed"),
    ("while True:\n    pass\n", "timeout"),
])
def test_double_forked_daemon_does_not_survive(pool, then, status):
    source, marker = _daemon_then(then)
    result = run(pool, source)
    assert result.status == status, result
    assert_no_strays(pool, marker)


def test_secret_env_var_is_not_visible(monkeypatch):
    secret = f"sk-test-{secrets.token_hex(8)}"
    monkeypatch.setenv("SPARSEALIGN_TEST_API_KEY", secret)
    with SandboxPool(workers=1, timeout_s=TIMEOUT_S) as fresh:  # started after the variable exists
        result = run(fresh, """
            import os
            print(dict(os.environ))
            for path in ("/proc/self/environ", f"/proc/{os.getppid()}/environ", "/proc/1/environ"):
                try:
                    print(open(path, "rb").read())
                except OSError as exc:
                    print(path, exc.errno)
        """)
    assert result.status == "passed", result
    assert secret not in result.stdout and "SPARSEALIGN_TEST_API_KEY" not in result.stdout


def test_killing_the_parent_does_not_take_the_harness_down(pool):
    result = run(pool, """
        import os, signal
        attempts = [
            lambda: os.kill(os.getppid(), signal.SIGKILL),
            lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL),
            lambda: os.kill(1, signal.SIGKILL),
            lambda: os.kill(-1, signal.SIGKILL),
        ]
        for attempt in attempts:
            try:
                attempt()
            except OSError:
                pass
        os.killpg(0, signal.SIGKILL)
    """)
    assert result.status == "failed" and "SIGKILL" in result.reason, result
    os.kill(os.getpid(), 0)  # we are here, and the pool still runs programs
    assert run(pool, "print('still here')").stdout == "still here\n"
    assert_no_strays(pool)


@pytest.mark.parametrize("exit_call", [
    "import sys\nsys.exit(0)", "import os\nos._exit(0)", "quit()", "exit()", "raise SystemExit",
    "raise SystemExit(0)", "import os\nos.execv('/bin/true', ['true'])",
])
def test_early_exit_zero_is_not_a_pass(pool, exit_call):
    result = run(pool, f"def f(x):\n    return x\n{exit_call}\nassert f(1) == 2\n")
    assert result.status == "failed" and result.returncode == 0, result
    assert "before the last line" in result.reason


def test_forged_completion_token_is_not_a_pass(pool):
    result = run(pool, """
        import os, secrets
        for fd in range(3, 10):
            try:
                os.write(fd, f"{secrets.token_hex(16)} done\\n".encode())
            except OSError:
                pass
        os._exit(0)
    """)
    assert result.status == "failed", result


def test_signal_to_self_is_classified(pool):
    result = run(pool, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert result.status == "failed" and "SIGSEGV" in result.reason and result.returncode == -signal.SIGSEGV


def test_forked_memory_bomb_is_bounded_by_the_cgroup():
    """RLIMIT_AS caps each process; only the cgroup caps 8 forks x 160 MiB (over the 256+384 MiB tree limit)."""
    with SandboxPool(workers=1, timeout_s=20, memory_mb=256) as fresh:
        if not fresh.isolation["cgroup"]:
            pytest.skip("no writable cgroup here (isolation reports cgroup=None)")
        result = run(fresh, """
            import os
            kids = []
            for _ in range(8):
                pid = os.fork()
                if pid == 0:
                    block = bytearray(160 << 20)
                    for i in range(0, len(block), 4096):
                        block[i] = 1
                    os._exit(0)
                kids.append(pid)
            assert all(os.waitpid(pid, 0)[1] == 0 for pid in kids)
        """)
        assert result.status == "error" and "OOM" in result.reason, result
        assert_no_strays(fresh)
