"""Programs per second: the warm `SandboxPool` vs one plain `python -I` subprocess per program.

Both run the same MBPP programs (reference solution + its asserts, test split, from the shared data) with the same
rlimits (address space, CPU time, file size, open files, processes) and the same wall-clock timeout, in one run. The
baseline is what a naive harness does, serially (and it has none of the sandbox's isolation). Printed: both rates and
their ratio on all programs; the same with the compute-bound outliers left out (a program that computes for seconds,
like task 123, bounds any harness: the pool cannot finish before its slowest program); and CPU per program over
all programs (harness, workers and programs included), which other load on the machine distorts less.

    .venv/bin/python benchmarks/sandbox_throughput.py [--limit 500] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.sandbox.pool import SandboxPool
from sparsealign.sandbox.program import rlimit_values

OUTLIER_S = 1.0  # a program whose own baseline run takes longer than this is compute-bound


def mbpp_programs(limit: int) -> list[str]:
    tasks = load_mbpp(split="test")[:limit]
    return [t.test_program(t.code) for t in tasks]


def cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the baseline's subprocesses)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def baseline(programs: list[str], timeout_s: float, memory_mb: int) -> tuple[list[float], int, list[float]]:
    """One `python -I file.py` per program, serially, with the sandbox's rlimits set in the child.
    Returns each program's wall time, how many exited 0, and each program's CPU seconds (harness included)."""
    limits = rlimit_values(timeout_s, memory_mb, 64_000)

    def preexec() -> None:
        for name, value in limits.items():
            hard = value + 1 if name == "RLIMIT_CPU" else value
            resource.setrlimit(getattr(resource, name), (value, hard))

    walls, passed, cpus = [], 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, source in enumerate(programs):
            path = Path(tmp, f"p{i}.py")
            start, cpu0 = time.perf_counter(), cpu_s()
            path.write_text(source, encoding="utf-8")
            try:
                proc = subprocess.run([sys.executable, "-I", str(path)], capture_output=True, timeout=timeout_s,
                                      preexec_fn=preexec, cwd=tmp, stdin=subprocess.DEVNULL)
                passed += proc.returncode == 0
            except subprocess.TimeoutExpired:
                pass
            walls.append(time.perf_counter() - start)
            cpus.append(cpu_s() - cpu0)
    return walls, passed, cpus


def worker_tree_cpu_s(pool: SandboxPool) -> float:
    """CPU seconds of the pool's worker processes and of the programs they have reaped so far (from /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for worker in pool._all:
        outer = worker.proc.pid
        children = Path(f"/proc/{outer}/task/{outer}/children").read_text().split()
        for pid in [outer, *map(int, children)]:  # outer, and W when the worker runs in its own PID namespace
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def pooled(pool: SandboxPool, programs: list[str]) -> tuple[float, int, float]:
    """Wall seconds, passes, and CPU seconds (harness + workers + programs) of one `map` over the programs."""
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    tree0, start = worker_tree_cpu_s(pool), time.perf_counter()
    results = pool.map(programs)
    wall, cpu1 = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    own = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return wall, sum(r.passed for r in results), own + worker_tree_cpu_s(pool) - tree0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=500, help="how many MBPP test-split programs (default all 500)")
    ap.add_argument("--workers", type=int, default=2, help="pool workers (default 2: the machine has 2 cores)")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    programs = mbpp_programs(args.limit)
    walls, base_passed, base_cpus = baseline(programs, args.timeout, args.memory_mb)
    keep = [w <= OUTLIER_S for w in walls]
    typical = [p for p, k in zip(programs, keep, strict=True) if k]
    with SandboxPool(args.workers, timeout_s=args.timeout, memory_mb=args.memory_mb) as pool:
        pool.map(programs[:args.workers * 2])  # touch every worker once; starting the pool is not measured
        pool_wall, pool_passed, pool_cpu = pooled(pool, programs)
        typical_wall, _, pool_typ_cpu = pooled(pool, typical)
        isolation = pool.isolation
    base_cpu = sum(base_cpus)
    base_typ_cpu = sum(c for c, k in zip(base_cpus, keep, strict=True) if k)
    base_rate, pool_rate = len(programs) / sum(walls), len(programs) / pool_wall
    base_typ = len(typical) / sum(w for w in walls if w <= OUTLIER_S)
    pool_typ = len(typical) / typical_wall
    report = {
        "programs": len(programs), "workers": args.workers, "cpus": os.cpu_count(),
        "baseline_programs_per_s": round(base_rate, 1), "pool_programs_per_s": round(pool_rate, 1),
        "ratio": round(pool_rate / base_rate, 2), "baseline_passed": base_passed, "pool_passed": pool_passed,
        "outliers": len(programs) - len(typical), "typical_ratio": round(pool_typ / base_typ, 2),
        "baseline_typical_per_s": round(base_typ, 1), "pool_typical_per_s": round(pool_typ, 1),
        "baseline_cpu_ms_per_program": round(1000 * base_cpu / len(programs), 2),
        "pool_cpu_ms_per_program": round(1000 * pool_cpu / len(programs), 2), "cpu_ratio": round(base_cpu / pool_cpu, 2),
        "baseline_cpu_ms_per_typical": round(1000 * base_typ_cpu / len(typical), 2),
        "pool_cpu_ms_per_typical": round(1000 * pool_typ_cpu / len(typical), 2),
        "typical_cpu_ratio": round(base_typ_cpu / pool_typ_cpu, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2), "isolation": isolation,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{len(programs)} MBPP programs, same limits (timeout {args.timeout:g} s, {args.memory_mb} MiB), "
          f"1-min load avg {report['load_avg_1m']} on {report['cpus']} CPUs")
    print(f"  python -I per program : {base_rate:8.1f} programs/s  ({base_passed} passed)")
    print(f"  SandboxPool({args.workers})        : {pool_rate:8.1f} programs/s  ({pool_passed} passed)")
    print(f"  ratio                 : {pool_rate / base_rate:8.2f}x  (goal >= 10x)")
    print(f"  without {report['outliers']} compute-bound program(s) (> {OUTLIER_S:g} s alone): "
          f"{base_typ:.1f} vs {pool_typ:.1f} programs/s = {report['typical_ratio']}x")
    print(f"  CPU per program       : {report['baseline_cpu_ms_per_program']} ms vs "
          f"{report['pool_cpu_ms_per_program']} ms = {report['cpu_ratio']}x less; typical programs: "
          f"{report['baseline_cpu_ms_per_typical']} ms vs {report['pool_cpu_ms_per_typical']} ms = "
          f"{report['typical_cpu_ratio']}x less")


if __name__ == "__main__":
    main()
