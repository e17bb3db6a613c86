"""`run_study`: open the run directory, expand the grid, execute the cells, then write the outputs (the caller's
`write`: the `study` verb passes the report's, which sits a layer above)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparsealign.config import config_hash
from sparsealign.io import atomic_write_json
from sparsealign.rundir import RunDir
from sparsealign.study.cells import Cell, expand, select_cells, sizes_of
from sparsealign.study.config import ExecutorConfig, StudyConfig
from sparsealign.study.executor import run_local, run_ray
from sparsealign.study.layout import REPORT_SETTINGS
from sparsealign.study.pipeline import Study, run_cell
from sparsealign.study.progress import Eta


def run_identity(cfg: StudyConfig) -> StudyConfig:
    """What the results depend on: the config minus `executor` (where cells run, not what they compute), so a study
    started locally can be resumed on Ray or pointed at a cluster address without being refused as changed."""
    return cfg.model_copy(update={"executor": ExecutorConfig()})


def largest_first(cells: list[Cell], sizes: list[str]) -> list[Cell]:
    """Execution order: the largest size's cells first (its chain pairs -> align -> eval is the longest), so the
    last cells to run are small ones that fill both workers; parents still precede children (cells of one size
    keep their order, and a size depends only on the family cell, which comes first)."""
    rank = {size: -i for i, size in enumerate(sizes)}
    return sorted(cells, key=lambda c: rank.get(c.size, -len(sizes) - 1))


def run_study(cfg: StudyConfig, *, name: str | None = None, restart: bool = False, progress: bool = True,
              only: list[str] | None = None,
              write: Callable[[Study], dict[str, Path]] | None = None) -> dict[str, Any]:
    cells = largest_first(select_cells(expand(cfg), only), sizes_of(cfg))  # config errors before anything is written
    identity = run_identity(cfg)
    run = RunDir.open(name or cfg.name, "study", identity, restart=restart)
    study = Study(cfg, run.root.resolve())  # absolute: Ray workers need not share this process's cwd
    # the report settings are not part of the run's identity (study.yaml leaves them out), but `study report --name`
    # must rebuild the same report: they are saved beside it, rewritten by every run
    atomic_write_json(run.root / REPORT_SETTINGS, cfg.report.model_dump(mode="json"))
    chash = config_hash(identity)
    ledger_path = run.ledger.path.resolve()
    run.ledger.close()  # the executor opens its own connections; the study log stays attached until the end
    fn = functools.partial(run_cell, study)  # picklable: Ray ships it to the workers
    eta = Eta.of(cells, cfg)
    try:
        if cfg.executor.kind == "ray":
            counts = run_ray(cells, ledger_path, chash, fn, address=cfg.executor.address,
                             cpus_per_cell=cfg.executor.cpus_per_cell, gpus_per_cell=cfg.executor.gpus_per_cell,
                             progress=progress, eta=eta)
        else:
            counts = run_local(cells, ledger_path, chash, fn, progress=progress, workers=cfg.executor.workers,
                               eta=eta)
        outputs = write(study) if write is not None else {}
    finally:
        run.close()
    summary = {"run": str(run.root), "cells": len(cells), **counts, **{k: str(v) for k, v in outputs.items()}}
    if counts["failed"]:
        print(f"warning: {counts['failed']} cell(s) failed; see {run.root / 'ledger.sqlite'} "
              f"(re-running the same command retries them)", file=sys.stderr)
    return summary
