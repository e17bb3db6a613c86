"""`run_study`: open the run directory, expand the grid, execute the cells, then write the results and the report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sparsealign.config import config_hash
from sparsealign.rundir import RunDir
from sparsealign.study.cells import expand
from sparsealign.study.config import StudyConfig
from sparsealign.study.executor import run_local, run_ray
from sparsealign.study.pipeline import Study


def run_study(cfg: StudyConfig, *, name: str | None = None, restart: bool = False, progress: bool = True,
              only: list[str] | None = None) -> dict[str, Any]:
    run = RunDir.open(name or cfg.name, "study", cfg, restart=restart)
    study = Study(cfg, run.root)
    cells = expand(cfg)
    if only:
        wanted = set(only)
        cells = [c for c in cells if c.id in wanted or c.stage in wanted]
    chash = config_hash(cfg)
    ledger_path = run.ledger.path
    run.close()
    if cfg.executor.kind == "ray":
        counts = run_ray(cells, ledger_path, chash, study.run, address=cfg.executor.address,
                         cpus_per_cell=cfg.executor.cpus_per_cell, gpus_per_cell=cfg.executor.gpus_per_cell)
    else:
        counts = run_local(cells, ledger_path, chash, study.run, progress=progress)
    from sparsealign.study.results import write_outputs

    outputs = write_outputs(study)
    summary = {"run": str(run.root), "cells": len(cells), **counts, **{k: str(v) for k, v in outputs.items()}}
    if counts["failed"]:
        print(f"warning: {counts['failed']} cell(s) failed; see {run.root / 'ledger.sqlite'} "
              f"(re-running the same command retries them)", file=sys.stderr)
    return summary


def default_config_path(preset: str) -> Path:
    from sparsealign.study.config import preset_path

    return preset_path(preset)
