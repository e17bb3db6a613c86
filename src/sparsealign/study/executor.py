"""Executors run the cell DAG: `local` (sequential, the default) or `ray` (cells as Ray tasks with resources).

Both go through the same `run_one`, which consults the ledger: a finished cell is skipped, a failed dependency
marks the cell failed without running it, and an exception in one cell is recorded without losing the others.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sparsealign.ledger import CellHeld, Ledger
from sparsealign.lifetime import child_pool, reap_tree_on_exit
from sparsealign.study.cells import Cell
from sparsealign.study.progress import Eta, format_left

log = logging.getLogger("sparsealign.study")
CellFn = Callable[[Cell], dict[str, Any] | tuple[dict[str, Any], dict[str, Any]]]


def ledger_stage(stage: str) -> str:
    """Study cells are recorded as `study.<stage>`, apart from the rows the stages write for themselves."""
    return f"study.{stage}"


def run_one(ledger_path: Path, cell: Cell, config_hash: str, fn: CellFn) -> str:
    """Run one cell through the ledger; returns 'done', 'skipped' or 'failed'."""
    stage = ledger_stage(cell.stage)
    with Ledger(ledger_path) as ledger:
        try:
            for parent in cell.parents:
                row = ledger.get(ledger_stage(parent.stage), parent.key)
                if row is None or row.status != "done":
                    ledger.start(stage, cell.key, config_hash)
                    ledger.fail(stage, cell.key, f"dependency {parent.id} did not finish")
                    return "failed"
            _, ran = ledger.run_cell(stage, cell.key, config_hash, lambda: fn(cell))
        except CellHeld as exc:  # a survivor of a killed run still computes it: never a second writer
            log.error("cell %s not started: %s", cell.id, exc)
            print(f"warning: cell {cell.id} not started: {exc}", file=sys.stderr)
            return "failed"
        except Exception as exc:  # recorded by the ledger; the study goes on with the other cells
            log.error("cell %s failed: %s", cell.id, exc)
            print(f"warning: cell {cell.id} failed: {exc}", file=sys.stderr)
            return "failed"
        return "done" if ran else "skipped"


class Progress:
    """The study's progress line: cells finished, and the time left priced from the ledger's measured seconds per
    unit of work (`study.progress.Eta`; without one, tqdm's own per-cell rate, which is meaningless across stages)."""

    def __init__(self, total: int, desc: str, ledger_path: Path, eta: Eta | None, enabled: bool, parallel: int = 1):
        self.ledger_path, self.eta, self.parallel = ledger_path, eta, parallel  # cells at once share the time left
        fmt = "{desc}: {n_fmt}/{total_fmt} cells |{bar}| [{elapsed}]{postfix}" if eta is not None else None
        self.bar = tqdm(total=total, desc=desc, unit="cell", file=sys.stderr, disable=not enabled,
                        dynamic_ncols=True, bar_format=fmt)

    def show(self, cell_id: str) -> None:
        left = ""
        if self.eta is not None:
            seconds = self.eta.seconds_left()
            left = format_left(None if seconds is None else seconds / self.parallel, self.eta.unpriced()) + " | "
        self.bar.set_postfix_str(f"{left}{cell_id[:60]}")

    def finished(self, cell: Cell) -> None:
        if self.eta is not None:
            with Ledger(self.ledger_path) as ledger:
                row = ledger.get(ledger_stage(cell.stage), cell.key)
            ok = row is not None and row.status == "done" and row.started_at and row.ended_at
            self.eta.finished(cell.id, row.ended_at - row.started_at if ok else None)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_local(cells: list[Cell], ledger_path: Path, config_hash: str, fn: CellFn, *, progress: bool = True,
              workers: int = 1, eta: Eta | None = None) -> dict:
    """Cells in order, one at a time, or with `workers` > 1 in that many spawned processes, each cell starting as
    soon as its parents have finished (the ledger serialises their writes)."""
    if workers > 1:
        return _run_parallel(cells, ledger_path, config_hash, fn, progress=progress, workers=workers, eta=eta)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    bar = Progress(len(cells), "study", ledger_path, eta, progress)
    for cell in cells:
        bar.show(cell.id)
        counts[run_one(ledger_path, cell, config_hash, fn)] += 1
        bar.finished(cell)
    bar.close()
    return counts


def _run_parallel(cells: list[Cell], ledger_path: Path, config_hash: str, fn: CellFn, *, progress: bool,
                  workers: int, eta: Eta | None = None) -> dict:
    counts = {"done": 0, "skipped": 0, "failed": 0}
    ids = {c.id for c in cells}
    pending, finished, running = list(cells), set(), {}
    bar = Progress(len(cells), f"study ({workers} workers)", ledger_path, eta, progress, parallel=workers)
    # Workers die with this process, however it dies: a killed study leaves no orphan holding memory or a cell.
    with child_pool(workers) as pool:
        while pending or running:
            for cell in [c for c in pending if all(d in finished or d not in ids for d in c.deps)]:
                if len(running) == workers:
                    break
                pending.remove(cell)
                running[pool.submit(run_one, ledger_path, cell, config_hash, fn)] = cell
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell = running.pop(future)
                counts[future.result()] += 1
                finished.add(cell.id)
                bar.finished(cell)
                bar.show(cell.id)
    bar.close()
    return counts


def run_ray(
    cells: list[Cell],
    ledger_path: Path,
    config_hash: str,
    fn: CellFn,
    *,
    address: str | None = None,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    num_cpus: int | None = None,
    progress: bool = True,
    eta: Eta | None = None,
) -> dict:
    """Each cell is a Ray task; parents are passed as object refs so Ray schedules them in DAG order."""
    import ray  # the optional `ray` extra: only this executor needs it

    started_here = not ray.is_initialized()
    if started_here:
        # "local": a fresh single-machine Ray, never a cluster some other `ray start` left running on this host
        kwargs: dict[str, Any] = {"address": "local", "num_cpus": num_cpus, "include_dashboard": False}
        if address:  # workers on other nodes do not inherit this shell: send the settings that locate data/runs
            kwargs = {"address": address, "runtime_env": {"env_vars": forwarded_env()}}
        ray.init(ignore_reinit_error=True, log_to_driver=False, **kwargs)
        if not address:  # the local Ray we started must not outlive us (its agents survive a killed driver)
            reap_tree_on_exit()

    @ray.remote
    def task(cell: Cell, *dep_statuses: str) -> str:
        return run_one(ledger_path, cell, config_hash, fn)

    refs: dict[str, Any] = {}
    for cell in cells:
        opts = {"num_cpus": cpus_per_cell, "num_gpus": gpus_per_cell}
        if cell.stage == "pretrain" or cell.stage == "calibrate":
            opts["num_cpus"] = max(cpus_per_cell, 1.0)
        refs[cell.id] = task.options(**opts).remote(cell, *[refs[p.id] for p in cell.parents if p.id in refs])
    counts = {"done": 0, "skipped": 0, "failed": 0}
    pending = {ref: cell_id for cell_id, ref in refs.items()}
    by_id = {cell.id: cell for cell in cells}
    bar = Progress(len(pending), "study (ray)", ledger_path, eta, progress)
    try:
        while pending:  # in completion order, so the progress line moves as cells finish anywhere in the cluster
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell_id = pending.pop(ready[0])
            try:
                counts[ray.get(ready[0])] += 1
            except ray.exceptions.RayError as exc:  # a crashed worker (e.g. out of memory), or a crashed dependency
                counts["failed"] += 1
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.error("cell %s failed in Ray: %s", cell_id, first)
                print(f"warning: cell {cell_id} failed in Ray: {first}", file=sys.stderr)
            bar.finished(by_id[cell_id])
            bar.show(cell_id)
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
    return counts


def forwarded_env() -> dict[str, str]:
    """sparsealign's and Hugging Face's settings (data/runs/cache dirs, offline flags), paths made absolute."""
    out = {}
    for key, value in os.environ.items():
        if key.startswith(("SPARSEALIGN_", "HF_")) or key in ("TRANSFORMERS_OFFLINE",):
            out[key] = str(Path(value).resolve()) if key.endswith("_DIR") else value
    return out
