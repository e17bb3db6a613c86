"""A running cell is claimed by one live process: a resumed run never starts a cell a survivor still computes, and
a process that lost its claim can neither publish files nor mark the cell done (real SQLite, real processes)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from sparsealign import lifetime
from sparsealign.io import atomic_write_text
from sparsealign.ledger import CellHeld, ClaimLost, Ledger
from sparsealign.study.cells import PretrainCell
from sparsealign.study.executor import run_one

HOLDER = textwrap.dedent("""
    import sys, time
    from sparsealign.ledger import Ledger
    Ledger(sys.argv[1]).start("study.pretrain", sys.argv[2], "h")
    print("claimed", flush=True)
    time.sleep(120)
""")

RESUMED = textwrap.dedent("""
    import sys
    from sparsealign.io import atomic_write_text
    from sparsealign.ledger import Ledger
    with Ledger(sys.argv[1]) as ledger:
        ledger.run_cell("study.eval", "c", "h", lambda: atomic_write_text(sys.argv[2], "resumed") and {"won": 1.0})
""")


def test_a_cell_held_by_a_live_process_is_not_started_until_that_process_dies(tmp_path):
    path = tmp_path / "ledger.sqlite"
    cell = PretrainCell()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), cell.key], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with Ledger(path) as ledger, pytest.raises(CellHeld, match=f":{holder.pid}:"):
            ledger.start("study.pretrain", cell.key, "h")
        ran = []
        assert run_one(path, cell, "h", lambda c: ran.append(c) or {}) == "failed" and ran == []
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert run_one(path, cell, "h", lambda c: ran.append(c) or {"x": 1.0}) == "done" and ran == [cell]
        with Ledger(path) as ledger:
            row = ledger.get("study.pretrain", cell.key)
        assert (row.status, row.attempts, row.metrics, row.owner) == ("done", 2, {"x": 1.0}, lifetime.owner_id())
    finally:
        holder.kill()
        holder.wait()


def test_a_process_that_lost_its_claim_cannot_publish_or_finish(tmp_path):
    """The survivor is on another host (no pid to check): its claim lapses with its heartbeat, another run takes
    the cell over and finishes it; the survivor's late write and late finish are refused."""
    path, out = tmp_path / "ledger.sqlite", tmp_path / "metrics.json"
    survivor = Ledger(path)
    survivor.owner = "elsewhere:4242:1"
    with pytest.raises(ClaimLost), survivor.cell("study.eval", "c", "h") as result:
        result["metrics"]["late"] = 1.0
        with sqlite3.connect(path) as conn:  # its heartbeat stopped LEASE_S ago (e.g. the host lost the network)
            conn.execute("update cells set heartbeat = ?", (time.time() - lifetime.LEASE_S - 1,))
        resumed = subprocess.run([sys.executable, "-c", RESUMED, str(path), str(out)], capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        atomic_write_text(out, "survivor")
    assert out.read_text() == "resumed"
    with pytest.raises(ClaimLost):
        survivor.finish("study.eval", "c", {"late": 1.0})
    row = survivor.get("study.eval", "c")
    assert (row.status, row.metrics) == ("done", {"won": 1.0}) and row.owner != survivor.owner
    assert sorted(p.name for p in tmp_path.iterdir() if "metrics" in p.name) == ["metrics.json"]  # no temp left
    survivor.close()


def test_claims_are_live_only_while_their_process_is(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = lifetime.owner_id(child.pid)
        assert lifetime.owner_alive(owner, heartbeat=None)
        assert not lifetime.owner_alive(owner.rsplit(":", 1)[0] + ":1", heartbeat=None)  # a reused pid is not it
    finally:
        child.kill()
        child.wait()
    assert not lifetime.owner_alive(owner, heartbeat=time.time())
    assert lifetime.owner_alive("elsewhere:1:1", heartbeat=time.time() - 1)
    assert not lifetime.owner_alive("elsewhere:1:1", heartbeat=time.time() - lifetime.LEASE_S - 1)


def test_a_ledger_written_before_claims_existed_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("""CREATE TABLE cells (stage TEXT NOT NULL, cell TEXT NOT NULL, status TEXT NOT NULL,
                        config_hash TEXT NOT NULL, metrics TEXT NOT NULL DEFAULT '{}',
                        artifacts TEXT NOT NULL DEFAULT '{}', started_at REAL, ended_at REAL, error TEXT,
                        attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (stage, cell))""")
        conn.execute("insert into cells (stage, cell, status, config_hash) values ('s', 'old', 'running', 'h')")
    with Ledger(path) as ledger:
        ledger.run_cell("s", "old", "h", lambda: {"v": 2.0})  # an unowned running row is a dead run's: re-run
        assert ledger.get("s", "old").metrics == {"v": 2.0}


def test_a_running_cell_renews_its_heartbeat_and_stops_with_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lifetime, "HEARTBEAT_S", 0.05)
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        with ledger.cell("s", "c", "h"):
            first = ledger.get("s", "c").heartbeat
            time.sleep(0.4)
            assert ledger.get("s", "c").heartbeat > first  # another host would still see the claim as live
        done = ledger.get("s", "c").heartbeat
        time.sleep(0.2)
        assert ledger.get("s", "c").heartbeat == done  # the beat ends with the cell
