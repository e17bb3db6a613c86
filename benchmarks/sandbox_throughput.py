"""Programs per second: the warm `SandboxPool` vs one plain `python -I` subprocess per program.

Both run the same MBPP programs (reference solution + its asserts, from the shared data) with the same rlimits
(address space, CPU time, file size, open files, processes) and the same wall-clock timeout, in one run; the baseline
is what a naive harness does (and it has none of the sandbox's isolation). Prints both rates and their ratio.

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

from sparsealign.data.mbpp import load_mbpp
from sparsealign.evaluate.sandbox import SandboxPool
from sparsealign.evaluate.sandbox_program import rlimit_values


def mbpp_programs(limit: int) -> list[str]:
    tasks = load_mbpp(split="test")[:limit]
    return [t.test_program(t.code) for t in tasks]


def baseline(programs: list[str], timeout_s: float, memory_mb: int) -> tuple[float, int]:
    """One `python -I file.py` per program, serially, with the sandbox's rlimits set in the child."""
    limits = rlimit_values(timeout_s, memory_mb, 64_000)

    def preexec() -> None:
        for name, value in limits.items():
            hard = value + 1 if name == "RLIMIT_CPU" else value
            resource.setrlimit(getattr(resource, name), (value, hard))

    passed = 0
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for i, source in enumerate(programs):
            path = Path(tmp, f"p{i}.py")
            path.write_text(source, encoding="utf-8")
            try:
                proc = subprocess.run([sys.executable, "-I", str(path)], capture_output=True, timeout=timeout_s,
                                      preexec_fn=preexec, cwd=tmp, stdin=subprocess.DEVNULL)
                passed += proc.returncode == 0
            except subprocess.TimeoutExpired:
                pass
        elapsed = time.perf_counter() - start
    return len(programs) / elapsed, passed


def pooled(programs: list[str], workers: int, timeout_s: float, memory_mb: int) -> tuple[float, int, dict]:
    with SandboxPool(workers, timeout_s=timeout_s, memory_mb=memory_mb) as pool:
        pool.map(programs[:workers * 2])  # touch every worker once; startup is not what we measure
        start = time.perf_counter()
        results = pool.map(programs)
        elapsed = time.perf_counter() - start
        return len(programs) / elapsed, sum(r.passed for r in results), pool.isolation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=500, help="how many MBPP test-split programs (default all 500)")
    ap.add_argument("--workers", type=int, default=2, help="pool workers (default 2: the machine has 2 cores)")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    programs = mbpp_programs(args.limit)
    base_rate, base_passed = baseline(programs, args.timeout, args.memory_mb)
    pool_rate, pool_passed, isolation = pooled(programs, args.workers, args.timeout, args.memory_mb)
    report = {"programs": len(programs), "workers": args.workers, "cpus": os.cpu_count(),
              "baseline_programs_per_s": round(base_rate, 1), "pool_programs_per_s": round(pool_rate, 1),
              "ratio": round(pool_rate / base_rate, 2), "baseline_passed": base_passed, "pool_passed": pool_passed,
              "load_avg_1m": round(os.getloadavg()[0], 2), "isolation": isolation}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{len(programs)} MBPP programs, same limits (timeout {args.timeout:g} s, {args.memory_mb} MiB)")
    print(f"  python -I per program : {base_rate:8.1f} programs/s  ({base_passed} passed)")
    print(f"  SandboxPool({args.workers})        : {pool_rate:8.1f} programs/s  ({pool_passed} passed)")
    print(f"  ratio                 : {pool_rate / base_rate:8.2f}x  (goal >= 10x; 1-min load avg "
          f"{report['load_avg_1m']} on {report['cpus']} CPUs)")


if __name__ == "__main__":
    main()
