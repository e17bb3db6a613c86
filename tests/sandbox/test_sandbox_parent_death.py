"""A process that holds a SandboxPool and dies, even by SIGKILL, takes its sandbox workers and their programs with
it: nothing is left running (each worker watches its parent's pid and kills its namespace when the parent goes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from process_tree import descendants, wait_until_gone

HOLDER = textwrap.dedent("""
    import sys
    from sparsealign.sandbox.pool import SandboxPool
    pool = SandboxPool(workers=2, timeout_s=120, namespaces=sys.argv[1] == "namespaces")
    print("ready", flush=True)
    # each program starts a grandchild and both sleep far beyond the test: only the parent's death can end them
    pool.map(["import os, time\\nos.fork()\\ntime.sleep(100)\\n"] * 2)
""")


@pytest.mark.parametrize("layers", ["namespaces", "uid only"])
def test_sigkill_of_the_pool_holder_leaves_no_sandbox_process(layers):
    """With namespaces the worker's namespace dies with it; without, its programs' dedicated uid is killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, layers], stdout=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while len(tree := descendants(holder.pid)) < 1 + 2 * 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # holder + 2 x (outer, W, the program, its child)
        assert len(tree) >= 9, tree
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        left = wait_until_gone({pid: start for pid, start in tree.items() if pid != holder.pid}, within_s=5.0)
        assert left == {}, f"alive 5 s after the pool's process was killed: {left}"
    finally:
        holder.kill()
        holder.wait()
