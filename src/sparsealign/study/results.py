"""From the ledger to the outputs: `results.parquet` (one row per cell and metric) and the report.

Metric names in eval cells are `<dataset>_<metric>` (dataset: mbpp, generated, hh, uf, code) or plain
(`realized_sparsity`, `flops_skipped`, `tokens_per_s`, ...); `_ci_low` / `_ci_high` companions become the row's CI.
Generated-task results keep their own dataset name and never enter MBPP figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsealign.ledger import Ledger
from sparsealign.study.executor import ledger_stage

if TYPE_CHECKING:
    import pandas as pd

    from sparsealign.study.pipeline import Study

DATASETS = ("mbpp", "generated", "hh", "uf", "code")
CELL_FIELDS = ("size", "method", "subset", "mode", "target_sparsity")


def _split_metric(name: str) -> tuple[str, str]:
    head, _, rest = name.partition("_")
    return (head, rest) if head in DATASETS and rest else ("all", name)


def results_table(study: Study) -> pd.DataFrame:
    """Tidy table: size, params, method, subset_fraction, mode, target_sparsity, dataset, metric, value, CI, n."""
    import pandas as pd

    family_path = study.root / "pretrain" / "family.json"
    params = json.loads(family_path.read_text()).get("params", {}) if family_path.exists() else {}
    rows: list[dict[str, Any]] = []
    with Ledger(study.root / "ledger.sqlite") as ledger:
        eval_rows = ledger.rows(stage=ledger_stage("eval"), status="done")
    for row in eval_rows:
        m = row.metrics
        items_path = Path(row.artifacts.get("items", ""))
        items = json.loads(items_path.read_text()) if items_path.is_file() else {}
        for name, value in m.items():
            if name in CELL_FIELDS or name.endswith(("_ci_low", "_ci_high")) or not isinstance(value, (int, float)):
                continue
            dataset, metric = _split_metric(name)
            n = None
            for key in (f"{dataset}_passed", f"{dataset}_margin"):
                if key in items:
                    n = len(items[key])
            rows.append({
                "cell": row.cell, "size": m["size"], "params": params.get(m["size"]), "method": m["method"],
                "subset_fraction": float(m["subset"]), "mode": m["mode"], "target_sparsity": float(m["target_sparsity"]),
                "dataset": dataset, "metric": metric, "value": float(value),
                "ci_low": m.get(f"{name}_ci_low"), "ci_high": m.get(f"{name}_ci_high"), "n": n,
            })
    columns = ["cell", "size", "params", "method", "subset_fraction", "mode", "target_sparsity", "dataset", "metric",
               "value", "ci_low", "ci_high", "n"]
    return pd.DataFrame(rows, columns=columns)


def item_arrays(study: Study) -> dict[str, dict[str, list[float]]]:
    """Per eval cell, the per-item arrays (task passed, pair correct, margins) for paired bootstraps."""
    out: dict[str, dict[str, list[float]]] = {}
    for path in sorted((study.root / "eval").rglob("items.json")):
        key = str(path.parent.relative_to(study.root / "eval"))
        out[key] = json.loads(path.read_text())
    return out


def traces(study: Study) -> dict[str, dict[str, Any]]:
    """Realized-sparsity traces of the sparse eval cells, keyed by cell."""
    out = {}
    for path in sorted((study.root / "eval").rglob("trace.json")):
        out[str(path.parent.relative_to(study.root / "eval"))] = json.loads(path.read_text())
    return out
