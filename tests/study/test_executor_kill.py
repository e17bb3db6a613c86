"""The Ray executor's local cluster dies with the study that started it: `kill -9` of the driver mid-cell leaves
no Ray process (raylet, GCS, agents, task workers) alive 5 s later. (The local executor's pool workers: see
tests/e2e/test_study_kill.py.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from process_tree import descendants, wait_until_gone

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent("""
    import sys, time
    from sparsealign.study.cells import PretrainCell
    from sparsealign.study.executor import run_ray

    def slow(cell):
        time.sleep(120)
        return {}

    run_ray([PretrainCell()], sys.argv[1], "h", slow, num_cpus=1, progress=False)
""")


def test_kill_9_of_a_ray_study_leaves_no_ray_process(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(ledger)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, running = time.monotonic() + 120, []
        while not running and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
            if ledger.exists():
                try:
                    with sqlite3.connect(ledger, timeout=1) as conn:
                        running = conn.execute("select cell from cells where status = 'running'").fetchall()
                except sqlite3.OperationalError:  # the schema is being created
                    continue
        assert running, "the Ray task never started its cell"
        tree = {pid: start for pid, start in descendants(driver.pid).items() if pid != driver.pid}
        assert len(tree) >= 4, tree  # GCS, raylet, its agents, the task's worker, the reaper
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        left = wait_until_gone(tree, within_s=5.0)
        assert left == {}, f"alive 5 s after kill -9 of the driver: {left}"
    finally:
        driver.kill()
        driver.wait()
