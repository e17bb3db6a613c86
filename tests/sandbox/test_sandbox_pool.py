"""The sandbox's ordinary behaviour: pass/fail/exception, pool == single runs on real MBPP programs, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.sandbox.pool import SandboxPool, SandboxResult, run_program
from sparsealign.sandbox.program import classify

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox tests run as root (as in CI)")


def _key(r: SandboxResult) -> tuple:
    return r.status, r.reason, r.stdout, re.sub(r"/tmp/sandbox-[^/]+/", "", r.stderr), r.returncode


@pytest.mark.parametrize(("source", "status", "reason"), [
    ("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')\n", "passed", "last line"),
    ("def add(a, b):\n    return a - b\nassert add(2, 3) == 5, 'add is wrong'\n", "failed", "AssertionError: add is wrong"),
    ("import math\nmath.sqrt(-1)\n", "failed", "ValueError: math domain error"),
    ("def broken(:\n    pass\n", "failed", "SyntaxError"),
    ("import os\nos._exit(3)\n", "failed", "exited with code 3"),
    ("raise SystemExit('bye')\n", "failed", "SystemExit(bye)"),
])
def test_normal_programs(source, status, reason):
    result = run_program(source, timeout_s=5)
    assert result.status == status and reason in result.reason, result
    assert result.duration_s > 0 and result.isolation["clean_env"]
    d = result.to_dict()
    assert d["status"] == status and set(d) >= {"status", "reason", "duration_s", "stdout", "stderr", "returncode",
                                                 "isolation"}
    json.dumps(d)


@pytest.mark.parametrize(("source", "status", "stdout"), [
    ("import sys, io\nprint('before')\nsys.stdout = io.StringIO()\nprint('hidden')\n", "passed", "before\n"),
    ("import os\nos._exit = lambda code: None\nos.write = lambda *a: 0\nprint('x')\n", "passed", "x\n"),
    ("import os, sys\nos._exit = lambda code: None\nsys.exit(0)\n", "failed", ""),
])
def test_wrapper_survives_what_the_program_rebinds(source, status, stdout):
    result = run_program(source, timeout_s=5)
    assert (result.status, result.stdout) == (status, stdout), result


def test_traceback_names_the_program_line():
    result = run_program("x = 1\ny = [][x]\n", timeout_s=5)
    assert result.status == "failed" and "IndexError" in result.reason
    assert 'main.py", line 2' in result.stderr and "y = [][x]" in result.stderr
    assert "sandbox" not in result.stderr.split("main.py")[-1]  # no frame of the harness after the program's


def test_program_state_does_not_leak_between_runs():
    with SandboxPool(workers=1, timeout_s=5) as pool:
        first = pool.run("import random, sys\nsys.modules['math'].pi = 3\nprint(random.random())")
        second = pool.run("import random, math\nassert math.pi > 3.14\nprint(random.random())")
    assert first.status == second.status == "passed", (first, second)
    assert first.stdout != second.stdout  # each fork reseeds: no replayed random stream


def test_pool_results_equal_single_runs_on_mbpp(data_dir):
    tasks = load_mbpp(data_dir / "mbpp" / "mbpp.jsonl", split="test")[:12]
    programs = [t.test_program(t.code) for t in tasks]
    programs += [programs[0] + "assert False, 'broken'\n", "import time\nwhile True: time.sleep(0.1)\n",
                 "print('é' * 3)\n", "import sys\nsys.exit(0)\nassert 0\n"]
    with SandboxPool(workers=2, timeout_s=1) as pool:
        pooled = pool.map(programs)
    single = [run_program(p, timeout_s=1) for p in programs]
    assert [_key(r) for r in pooled] == [_key(r) for r in single]
    assert [r.status for r in pooled[:12]] == ["passed"] * 12
    assert [r.status for r in pooled[12:]] == ["failed", "timeout", "passed", "failed"]


def test_pool_overrides_and_closes():
    pool = SandboxPool(workers=2, timeout_s=5)
    pids = [w.proc.pid for w in pool._all]
    cgroups = [d for w in pool._all if w.caps["cgroup"] for d in w.caps["cgroup"]["dirs"]]
    assert all(os.path.isdir(d) for d in cgroups)
    assert pool.run("import time\ntime.sleep(3)", timeout_s=0.5).status == "timeout"
    assert pool.run("x = bytearray(200 << 20)", memory_mb=128).status == "error"
    assert pool.run("print('a' * 100)", max_output_bytes=10).stdout == "a" * 10
    pool.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: no worker left behind
    assert not [d for d in cgroups if os.path.exists(d)]  # no cgroup left behind
    with pytest.raises(RuntimeError):
        pool.run("pass")


def test_a_dead_worker_is_replaced():
    with SandboxPool(workers=1, timeout_s=5) as pool:
        dead = pool._all[0]
        os.killpg(dead.proc.pid, signal.SIGKILL)  # from outside: no program can reach the worker
        result = pool.run("print('lost')")
        assert result.status == "error" and "worker" in result.reason, result
        assert pool.run("print('back')").stdout == "back\n"
        assert not [d for d in (dead.caps["cgroup"] or {}).get("dirs", []) if os.path.exists(d)]


def test_classify_is_strict_about_completion():
    req = {"timeout_s": 1.0, "memory_mb": 64, "max_output_bytes": 10}
    assert classify(False, 0, ["done"], False, req)["status"] == "passed"
    assert classify(False, 0, [], False, req)["status"] == "failed"  # exit 0 without the token
    assert classify(False, 1 << 8, ["done"], False, req)["status"] == "failed"  # token but a non-zero exit
    assert classify(True, 9, ["done"], False, req)["status"] == "timeout"
    assert classify(False, 9, [], False, req, cpu_s=2.5)["status"] == "timeout"  # SIGKILL at RLIMIT_CPU's hard limit
    assert classify(False, 9, [], False, req, cpu_s=0.1)["reason"] == "killed by signal SIGKILL"


def test_cli_json(cli, tmp_path):
    program = tmp_path / "prog.py"
    program.write_text("print('hello from the sandbox')\nassert sum([1, 2]) == 3\n")
    res = cli("sandbox", "run", str(program), "--timeout", "5", "--memory-mb", "256", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["status"] == "passed" and out["stdout"] == "hello from the sandbox\n" and out["stderr"] == ""
    assert out["duration_s"] > 0 and out["isolation"]["rlimits"]["RLIMIT_AS"] == 256 << 20
    program.write_text("while True:\n    pass\n")
    res = cli("sandbox", "run", str(program), "--timeout", "1", "--json")
    assert res.returncode == 1 and res.json()["status"] == "timeout"


def test_cli_errors_are_one_line(cli, tmp_path):
    from conftest import assert_one_line_error

    assert_one_line_error(cli("sandbox", "run", str(tmp_path / "missing.py")), "missing.py")
    bad = tmp_path / "latin1.py"
    bad.write_bytes(b"print('caf\xe9')\n")
    assert_one_line_error(cli("sandbox", "run", str(bad), "--json"), "latin1.py", "UTF-8")


def test_cli_does_not_import_heavy_libraries(tmp_path):
    program = tmp_path / "p.py"
    program.write_text("print(1)\n")
    probe = textwrap.dedent(f"""
        import atexit, json, sys
        atexit.register(lambda: print(json.dumps(sorted(m for m in sys.modules
                                                        if m.split('.')[0] in ('torch', 'numpy', 'pandas'))),
                                      file=sys.stderr))
        from sparsealign.cli import main
        sys.exit(main(["sandbox", "run", {str(program)!r}, "--json"]))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "passed"
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def test_run_program_keeps_one_warm_worker_per_process():
    from sparsealign.sandbox import pool as sandbox

    first = run_program("print(1)", timeout_s=5)
    worker = sandbox._shared._all[0].proc.pid
    second = run_program("import time\ntime.sleep(5)", timeout_s=0.5, memory_mb=256)
    assert (first.status, second.status) == ("passed", "timeout")
    assert second.isolation["rlimits"]["RLIMIT_AS"] == 256 << 20  # per-call limits on the shared worker
    assert sandbox._shared._all[0].proc.pid == worker
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a forked process gets a worker of its own; the parent's stays untouched
        ok = run_program("print(2)").stdout == "2\n" and sandbox._shared._all[0].proc.pid != worker
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 1) == b"1"
    assert run_program("print(3)").stdout == "3\n" and sandbox._shared._all[0].proc.pid == worker


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "uid-only"])
def test_killing_a_busy_worker_leaves_no_program_behind(namespaces):
    """What the pool does to a hung worker: the program and its daemon go with it, namespace or not."""
    from sparsealign.sandbox.program import processes_of

    def wait_for(predicate, seconds=10.0):
        deadline = time.monotonic() + seconds
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.02)
        return predicate()

    with SandboxPool(workers=1, timeout_s=60, namespaces=namespaces) as pool:
        uid, worker = pool.isolation["uid"], pool._all[0]
        results = []
        runner = threading.Thread(target=lambda: results.append(pool.run(
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(120)\ntime.sleep(120)\n")))
        runner.start()
        assert wait_for(lambda: len(processes_of(uid)) >= 2)  # the program and its own-session child
        worker.kill()
        runner.join(timeout=30)
        assert results and results[0].status == "error"
        assert wait_for(lambda: not processes_of(uid)), processes_of(uid)
        assert pool.run("print('replaced')").stdout == "replaced\n"
