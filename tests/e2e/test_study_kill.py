"""`kill -9` of a running study (local executor, two workers) mid-cell: within 5 s nothing of that run is left
alive (pool workers, sandbox workers, their programs), and the resumed run's results equal an uninterrupted run's
(`fixtures/reduced_study_results.csv`, which test_reduced_grid checks a live uninterrupted run against)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid

import pandas as pd
import pytest

from conftest import sparsealign_exe
from e2e.test_reduced_grid import FIXTURES, assert_columns_equal, canonical
from process_tree import cmdline, descendants, wait_until_gone, with_environ

pytestmark = pytest.mark.slow


def running_eval_cells(ledger) -> list[str]:
    if not ledger.exists():
        return []
    try:
        with sqlite3.connect(ledger, timeout=1) as conn:
            return [r[0] for r in conn.execute("select cell from cells where stage='study.eval' and status='running'")]
    except sqlite3.OperationalError:  # the schema is being created
        return []


def test_kill_9_mid_cell_leaves_nothing_running_and_resumes_exactly(tmp_path, data_dir):
    marker = f"SPARSEALIGN_TEST_RUN={uuid.uuid4().hex}"  # inherited by the study and its pool workers
    env = {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir), "SPARSEALIGN_CACHE_DIR": str(tmp_path / "cache"),
           "SPARSEALIGN_RUNS_DIR": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1", marker.split("=")[0]: marker.split("=")[1]}
    argv = [*sparsealign_exe(), "study", "--config", str(FIXTURES / "reduced_study.yaml"),
            "--set", "executor.workers=2", "--json"]
    study = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    ledger = tmp_path / "runs" / "reduced" / "ledger.sqlite"
    try:
        deadline, tree = time.monotonic() + 300, {}
        while time.monotonic() < deadline and study.poll() is None:  # mid-cell: an eval cell running its programs
            tree = descendants(study.pid)
            if running_eval_cells(ledger) and any("sandbox/worker.py" in cmd for cmd in map(cmdline, tree)):
                break
            time.sleep(0.02)
        assert study.poll() is None, "the study finished before an eval cell's sandbox could be seen"
        running = running_eval_cells(ledger)
        os.kill(study.pid, signal.SIGKILL)
        study.wait(timeout=10)
        assert len(tree) >= 4, tree  # the study, 2 pool workers, a sandbox worker (and its W)
        left = wait_until_gone({pid: start for pid, start in tree.items() if pid != study.pid}, within_s=5.0)
        assert left == {}, f"alive 5 s after kill -9 of the study: {left}"
        assert with_environ(marker) == {}
    finally:
        study.kill()
        study.wait()
    assert running, "no cell was running when the study was killed"

    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with sqlite3.connect(ledger) as conn:
        rows = dict(conn.execute("select cell, status from cells where stage='study.eval'").fetchall())
        attempts = dict(conn.execute("select cell, attempts from cells where stage='study.eval'").fetchall())
    assert set(rows.values()) == {"done"} and all(attempts[cell] == 2 for cell in running)
    expected = pd.read_csv(FIXTURES / "reduced_study_results.csv")
    assert_columns_equal(canonical(tmp_path / "runs" / "reduced" / "results.parquet"), expected, expected.columns)

