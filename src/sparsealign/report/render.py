"""Study report: `results.parquet`, `findings.json`, PNG figures, `report.md` and a self-contained `report.html`.

Input is the tidy results table (one row per cell and metric, schema in `RESULT_COLUMNS`), the per-item arrays of
every eval cell (for paired statistics, `report.items`) and optional decoding traces of realized sparsity.  The
output is a pure function of the inputs (no timestamps), so the same study gives the same report.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sparsealign.align.config import METHODS
from sparsealign.config import config_hash
from sparsealign.io import atomic_path, atomic_write_text
from sparsealign.report import content, scaling
from sparsealign.report.blocks import Block, render_html, render_markdown
from sparsealign.report.findings import compute_findings
from sparsealign.report.items import ItemStore, parse_cell_key
from sparsealign.report.matched import realized_by_cell
from sparsealign.sparse.modes import MODES
from sparsealign.study.config import ReportConfig

# Required columns and their meaning; optional: ci_low, ci_high, n, subset_fraction (1.0 = all pairs), n_pairs,
# note (e.g. "not_reached" for an annotation saving), seed.
RESULT_COLUMNS = {
    "size": "family member name (e.g. micro-s)",
    "params": "parameter count of that member",
    "method": " | ".join(("base", *METHODS)),
    "mode": " | ".join(("dense", *MODES)) + " (threshold mode of sparse inference)",
    "target_sparsity": "target activation sparsity (0 for dense)",
    "metric": "pass@1 | preference_accuracy | divergence | flip_rate | realized_sparsity | tokens_per_s | "
              "annotation_saving | ...",
    "value": "the metric value",
    "dataset": "mbpp | generated | hh-rlhf | ultrafeedback | ... (never pooled)",
}
OPTIONAL_COLUMNS = {"ci_low": float, "ci_high": float, "n": "Int64", "subset_fraction": float, "n_pairs": "Int64",
                    "note": "string", "seed": "Int64", "family": "string"}
TRACE_COLUMNS = ["size", "method", "mode", "target_sparsity", "step", "realized_sparsity"]  # optional: domain


def validate_results(df: pd.DataFrame) -> pd.DataFrame:
    """Check the schema and fill optional columns; returns a normalised copy."""
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}; required: {list(RESULT_COLUMNS)}")
    out = df.copy()
    for col, dtype in OPTIONAL_COLUMNS.items():
        if col not in out:
            out[col] = 1.0 if col == "subset_fraction" else np.nan if dtype is float else pd.NA
        out[col] = out[col].astype(dtype)
    out["params"] = pd.to_numeric(out["params"], errors="coerce")  # NaN when a hub model's count is unknown
    out["target_sparsity"] = out["target_sparsity"].astype(float)
    out["value"] = out["value"].astype(float)
    out["subset_fraction"] = out["subset_fraction"].fillna(1.0)
    out["family"] = out["family"].fillna("")  # unlabelled rows are one family
    return out


def traces_from_cells(traces: dict[str, dict]) -> pd.DataFrame:
    """Cell-keyed sparsity traces (`{"realized_sparsity": [[per position] per layer], "step": k, "domains":
    [[dataset, first position]], ...}`) -> the tidy trace table, averaged over layers; positions are multiplied back
    by the thinning step, and each gets the domain (dataset) whose pass it belongs to (None without `domains`)."""
    rows = []
    for key, trace in traces.items():
        cell = parse_cell_key(key)
        series = [s for s in trace.get("realized_sparsity", []) if s]
        if cell is None or not series or cell["subset_fraction"] < 1.0:
            continue
        n = min(len(s) for s in series)
        mean = np.mean([s[:n] for s in series], axis=0)
        fields = {k: cell[k] for k in ("size", "method", "subset_fraction", "mode", "target_sparsity")}
        starts = sorted((int(first), name) for name, first in trace.get("domains", []))
        firsts = [first for first, _ in starts]
        for i, v in enumerate(mean):
            step = i * int(trace.get("step", 1))
            at = bisect.bisect_right(firsts, step)
            rows.append({**fields, "step": step, "realized_sparsity": float(v),
                         "domain": starts[at - 1][1] if at else None})
    return pd.DataFrame(rows, columns=["size", "method", "subset_fraction", "mode", "target_sparsity", "step",
                                       "realized_sparsity", "domain"])


def report_settings(config: dict | None) -> ReportConfig:
    return ReportConfig.model_validate((config or {}).get("report") or {})


def write_report(results: pd.DataFrame, out_dir: str | Path, *, traces: pd.DataFrame | dict | None = None,
                 items: dict[str, dict[str, list[float]]] | None = None, config: dict | None = None,
                 title: str = "sparsealign study report", notes: list[str] | None = None,
                 seed: int = 0, beside: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write results.parquet, findings.json, figures/*.png, report.md and report.html under `out_dir` (atomically).

    `items`: cell-keyed per-item arrays (`report.items`); they give the Findings, the paired tables and the
    annotation-efficiency rows (appended to the results).  `traces`: the tidy trace table (TRACE_COLUMNS) or
    cell-keyed trace dicts.  `config`: the study config; its `report` part names the primary contrasts, and the
    whole config is shown (with its hash) at the end of the report.  `beside`: results rows of other families
    (other runs' results.parquet, `report.beside`), shown next to this run's in the family and dense tables only --
    never in a fit, a Finding or a figure of this report.
    """
    out_dir = Path(out_dir)
    df = validate_results(results)
    settings = report_settings(config)
    store = ItemStore(items)
    params = content.params_of(df)
    if store and "annotation_saving" not in set(df["metric"]):
        ann = scaling.annotation_table(store, params, n_boot=settings.bootstrap, seed=seed)
        if not ann.empty:
            if "family" in df:  # the saving of a size belongs to that size's family (a pooled row: the run's own)
                families = df.drop_duplicates("size").set_index("size")["family"]
                ann["family"] = ann["size"].map(families).fillna(families.iloc[0] if families.nunique() == 1 else "")
            df = validate_results(pd.concat([df, ann], ignore_index=True))
    if isinstance(traces, dict):
        traces = traces_from_cells(traces)
    if traces is not None:
        missing = [c for c in TRACE_COLUMNS if c not in traces]
        if missing:
            raise ValueError(f"traces table lacks column(s) {missing}; required: {TRACE_COLUMNS}")
        if "params" not in traces:
            traces = traces.merge(content.family_table(df), on="size", how="left")
    found = compute_findings(store, params, settings, seed=seed, realized=realized_by_cell(df)) if store else []
    paths = {"results": out_dir / "results.parquet", "findings": out_dir / "findings.json",
             "markdown": out_dir / "report.md", "html": out_dir / "report.html", "figures": out_dir / "figures"}
    with atomic_path(paths["results"], suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    atomic_write_text(paths["findings"], json.dumps([f.to_dict() for f in found], indent=1) + "\n")
    paths["figures"].mkdir(parents=True, exist_ok=True)
    others = None if beside is None or beside.empty else validate_results(beside)
    blocks = content.build_blocks(df, traces, paths["figures"], title, notes or [], store=store, found=found,
                                  settings=settings, beside=others)
    if config is not None:

        blocks += [Block("h2", "Configuration"), Block("p", f"config hash {config_hash(config)}"),
                   Block("pre", yaml.safe_dump(config, sort_keys=False))]
    atomic_write_text(paths["markdown"], render_markdown(blocks))
    atomic_write_text(paths["html"], render_html(blocks, paths["figures"], title))
    return paths
