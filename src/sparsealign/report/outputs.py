"""A study run's outputs from its ledger: results.parquet, and the report (report.md, report.html, figures/).

Called by the `study` verbs (the entry point), after the cells ran: the study layer produces the results table, the
report layer above it renders them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sparsealign.errors import UserError
from sparsealign.io import atomic_path
from sparsealign.report.render import write_report
from sparsealign.study.layout import Study
from sparsealign.study.results import item_arrays, results_table, traces


def write_outputs(study: Study) -> dict[str, Path]:
    """results.parquet + findings.json + report.md + report.html (+ figures/) in the run directory; all atomic.
    The config's `report` part (primary contrasts; kept out of the run's identity) is passed along explicitly."""
    table = results_table(study)
    if not table.empty:  # the report writes results.parquet itself (with the annotation-efficiency rows added)
        config = {**study.cfg.model_dump(mode="json"), "report": study.cfg.report.model_dump(mode="json")}
        return write_report(table, study.root, items=item_arrays(study), traces=traces(study), config=config,
                            beside=beside_rows(study.cfg.report.beside, study.root))
    results = study.root / "results.parquet"
    with atomic_path(results, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return {"results": results}


def beside_rows(runs: list[str], own: Path) -> pd.DataFrame | None:
    """`report.beside`: the results.parquet rows of other finished runs (a run without one is a one-line error)."""
    frames = []
    for run in runs:
        path = Path(run).expanduser() / "results.parquet"
        if not path.is_file():
            raise UserError(f"report.beside: {path} not found",
                            hint="name the directory of a finished study run (it holds results.parquet)")
        if path.parent.resolve() == own.resolve():
            continue
        frame = pd.read_parquet(path)
        if "family" not in frame:  # a run from before rows carried their family: its family.json, else its name
            fam = path.parent / "pretrain" / "family.json"
            frame["family"] = (json.loads(fam.read_text()).get("family") if fam.is_file() else None) or \
                path.parent.name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else None
