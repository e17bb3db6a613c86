"""The run ledger: one SQLite file per run directory, one row per (stage, cell).

stdlib sqlite3 in WAL mode, so a reader (a progress view, a test polling it) never blocks the writer, and a crash
(even SIGKILL) leaves every committed row intact.  A cell moves running -> done | failed.  On resume, `done` cells
with the same config hash are skipped; a `running` row left by a killed process is simply re-run.

A running cell is *claimed* by one process (`owner`: host, pid and start time; `heartbeat` for other hosts): a
resumed run does not start a cell whose owner is still alive, and an owner that lost its claim (its cell was re-run
and finished meanwhile) can neither publish files (`io.atomic_path` asks the ledger before each rename) nor mark the
cell done.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsealign import io, lifetime
from sparsealign.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    stage       TEXT NOT NULL,
    cell        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    config_hash TEXT NOT NULL,
    metrics     TEXT NOT NULL DEFAULT '{}',
    artifacts   TEXT NOT NULL DEFAULT '{}',
    started_at  REAL,
    ended_at    REAL,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    heartbeat   REAL,
    PRIMARY KEY (stage, cell)
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    stage     TEXT NOT NULL,
    cell      TEXT NOT NULL,
    step      INTEGER,
    time      REAL NOT NULL,
    metrics   TEXT NOT NULL
);
"""


@dataclass
class CellRow:
    stage: str
    cell: str
    status: str
    config_hash: str
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    attempts: int = 0
    owner: str | None = None
    heartbeat: float | None = None


class CellHeld(UserError):
    """The cell is running in another live process (a survivor of a killed run, or a second run on this dir)."""


class ClaimLost(RuntimeError):
    """This process no longer holds the cell it is writing: its outputs must not replace another run's."""


class Ledger:
    """A thin, explicit wrapper over the SQLite file. Safe to open from several processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(cells)")}
        for column, kind in (("owner", "TEXT"), ("heartbeat", "REAL")):  # ledgers written before claims existed
            if column not in columns:
                self._conn.execute(f"ALTER TABLE cells ADD COLUMN {column} {kind}")
        self.owner = lifetime.owner_id()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -------------------------------------------------------------------------------------------------
    def get(self, stage: str, cell: str) -> CellRow | None:
        cur = self._conn.execute("SELECT * FROM cells WHERE stage=? AND cell=?", (stage, cell))
        row = cur.fetchone()
        return self._row(cur, row) if row else None

    def rows(self, stage: str | None = None, status: str | None = None) -> list[CellRow]:
        query, args = "SELECT * FROM cells WHERE 1=1", []
        if stage is not None:
            query += " AND stage=?"
            args.append(stage)
        if status is not None:
            query += " AND status=?"
            args.append(status)
        cur = self._conn.execute(query + " ORDER BY started_at, stage, cell", args)
        return [self._row(cur, r) for r in cur.fetchall()]

    def events(self, stage: str, cell: str) -> list[dict[str, Any]]:
        cur = self._conn.execute(
            "SELECT step, time, metrics FROM events WHERE stage=? AND cell=? ORDER BY id", (stage, cell)
        )
        return [{"step": s, "time": t, **json.loads(m)} for s, t, m in cur.fetchall()]

    @staticmethod
    def _row(cur: sqlite3.Cursor, row: tuple[Any, ...]) -> CellRow:
        data = dict(zip([d[0] for d in cur.description], row, strict=True))
        data["metrics"] = json.loads(data["metrics"] or "{}")
        data["artifacts"] = json.loads(data["artifacts"] or "{}")
        return CellRow(**data)

    # -- writes ------------------------------------------------------------------------------------------------
    def start(self, stage: str, cell: str, config_hash: str) -> None:
        """Claim the cell for this process (running); CellHeld if a live process other than this one holds it."""
        now = time.time()
        self._conn.execute("BEGIN IMMEDIATE")  # the check and the claim as one write: two runs cannot both take it
        try:
            row = self.get(stage, cell)
            if (row is not None and row.status == "running" and row.owner not in (None, self.owner)
                    and lifetime.owner_alive(row.owner, row.heartbeat, now)):
                raise CellHeld(f"{self.path}: cell {stage}/{cell} is running in another live process ({row.owner})",
                               hint="wait for it to finish, or stop that process, then run again")
            self._conn.execute(
                """INSERT INTO cells (stage, cell, status, config_hash, started_at, attempts, owner, heartbeat)
                   VALUES (?, ?, 'running', ?, ?, 1, ?, ?)
                   ON CONFLICT(stage, cell) DO UPDATE SET status='running', config_hash=excluded.config_hash,
                   started_at=excluded.started_at, ended_at=NULL, error=NULL, attempts=attempts+1,
                   owner=excluded.owner, heartbeat=excluded.heartbeat""",
                (stage, cell, config_hash, now, self.owner, now),
            )
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def finish(
        self, stage: str, cell: str, metrics: dict[str, Any] | None = None, artifacts: dict[str, Any] | None = None
    ) -> None:
        done = self._conn.execute(
            """UPDATE cells SET status='done', metrics=?, artifacts=?, ended_at=?, error=NULL
               WHERE stage=? AND cell=? AND status='running' AND (owner IS NULL OR owner=?)""",
            (_dumps(metrics or {}), _dumps({k: str(v) for k, v in (artifacts or {}).items()}), time.time(), stage, cell,
             self.owner),
        )
        if done.rowcount != 1:
            raise ClaimLost(f"{self.path}: cell {stage}/{cell} is no longer held by this process; result dropped")

    def fail(self, stage: str, cell: str, error: str) -> None:
        self._conn.execute(
            """UPDATE cells SET status='failed', error=?, ended_at=?
               WHERE stage=? AND cell=? AND status='running' AND (owner IS NULL OR owner=?)""",
            (error, time.time(), stage, cell, self.owner),
        )

    def log_event(self, stage: str, cell: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Per-step metrics (training logs, realized sparsity over time)."""
        self._conn.execute(
            "INSERT INTO events (stage, cell, step, time, metrics) VALUES (?, ?, ?, ?, ?)",
            (stage, cell, step, time.time(), _dumps(metrics)),
        )

    # -- the resumable unit ----------------------------------------------------------------------------------------
    @contextmanager
    def cell(self, stage: str, cell: str, config_hash: str) -> Iterator[dict[str, Any]]:
        """Run one cell; the yielded dict collects `metrics` and `artifacts`. Exceptions mark it failed and re-raise."""
        self.start(stage, cell, config_hash)
        out: dict[str, Any] = {"metrics": {}, "artifacts": {}}
        try:
            with self._claim_guard(stage, cell):
                yield out
        except BaseException as exc:
            msg = str(exc) if isinstance(exc, UserError) else "".join(traceback.format_exception_only(exc)).strip()
            self.fail(stage, cell, msg or type(exc).__name__)
            raise
        self.finish(stage, cell, out["metrics"], out["artifacts"])

    @contextmanager
    def _claim_guard(self, stage: str, cell: str) -> Iterator[None]:
        """While the cell runs: renew the claim's heartbeat, and refuse any atomic publish once the claim is lost."""
        if str(self.path) == ":memory:":  # one process by construction
            yield
            return
        stop = threading.Event()

        def beat() -> None:  # touches the file only while the cell runs, and only once a beat is due
            while not stop.wait(lifetime.HEARTBEAT_S):
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                try:
                    conn.execute("UPDATE cells SET heartbeat=? WHERE stage=? AND cell=? AND owner=?",
                                 (time.time(), stage, cell, self.owner))
                finally:
                    conn.close()

        def check(path: Path) -> None:
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                row = conn.execute("SELECT status, owner FROM cells WHERE stage=? AND cell=?", (stage, cell)).fetchone()
            finally:
                conn.close()
            if row is None or row[0] != "running" or row[1] not in (None, self.owner):
                raise ClaimLost(f"{self.path}: cell {stage}/{cell} was taken over by another run; {path} not written")

        heart = threading.Thread(target=beat, name="ledger-heartbeat", daemon=True)
        heart.start()
        try:
            with io.publish_check(check):
                yield
        finally:
            stop.set()
            heart.join()  # no beat after the cell ends (its run directory may be removed right after)

    def run_cell(
        self,
        stage: str,
        cell: str,
        config_hash: str,
        fn: Callable[[], tuple[dict[str, Any], dict[str, Any]] | dict[str, Any]],
    ) -> tuple[CellRow, bool]:
        """Run `fn` unless the cell is already done with the same config; returns (row, ran).

        `fn` returns metrics, or (metrics, artifacts).  A done cell with a *different* config hash is an error: the
        caller must choose a new run name or `--restart`, never silently mix two configs.
        """
        row = self.get(stage, cell)
        if row is not None and row.status == "done":
            if row.config_hash != config_hash:
                raise UserError(
                    f"{self.path}: cell {stage}/{cell} was finished with config {row.config_hash}, now {config_hash}",
                    hint="use a new --name, or --restart to discard the old results",
                )
            return row, False
        with self.cell(stage, cell, config_hash) as out:
            result = fn()
            metrics, artifacts = result if isinstance(result, tuple) else (result, {})
            out["metrics"].update(metrics)
            out["artifacts"].update(artifacts)
        row = self.get(stage, cell)
        assert row is not None
        return row, True


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_json_default, allow_nan=True)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
