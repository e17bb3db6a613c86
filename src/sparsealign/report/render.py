"""Study report: `results.parquet`, PNG figures, `report.md` and a self-contained `report.html`.

Input is the tidy results table (one row per cell and metric, schema in `RESULT_COLUMNS`) and optional decoding
traces of realized sparsity.  The report is built from blocks (heading, paragraph, table, figure) rendered twice:
Markdown with relative figure links, and HTML with the PNGs inlined as base64 data URIs (no external resources, no
JavaScript).  The output is a pure function of the inputs (no timestamps), so the same study gives the same report.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sparsealign.io import atomic_path, atomic_write_text
from sparsealign.report import figures, scaling

# Required columns and their meaning; optional: ci_low, ci_high, n, subset_fraction (1.0 = all pairs), n_pairs,
# note (e.g. "not_reached" for an annotation saving), seed.
RESULT_COLUMNS = {
    "size": "family member name (e.g. micro-s)",
    "params": "parameter count of that member",
    "method": "base | dpo | orpo | simpo | rdpo | rorpo | rsimpo",
    "mode": "dense | static | dynamic | predictor (threshold mode of sparse inference)",
    "target_sparsity": "target activation sparsity (0 for dense)",
    "metric": "pass@1 | preference_accuracy | divergence | flip_rate | realized_sparsity | tokens_per_s | "
              "annotation_saving | ...",
    "value": "the metric value",
    "dataset": "mbpp | generated | hh-rlhf | ultrafeedback | ... (never pooled)",
}
OPTIONAL_COLUMNS = {"ci_low": float, "ci_high": float, "n": "Int64", "subset_fraction": float, "n_pairs": "Int64",
                    "note": "string", "seed": "Int64"}
TRACE_COLUMNS = ["size", "method", "mode", "target_sparsity", "step", "realized_sparsity"]
# What gets a figure / a critical-sparsity table (other metrics are in the tables and results.parquet only).
HEADLINE_ACCURACY = ("pass@1", "preference_accuracy", "reward_accuracy")
SPARSITY_FIGURE_METRICS = (*HEADLINE_ACCURACY, "divergence", "preference_divergence", "flip_rate")
SIZE_FIGURE_METRICS = (*HEADLINE_ACCURACY, "divergence", "preference_divergence")


def validate_results(df: pd.DataFrame) -> pd.DataFrame:
    """Check the schema and fill optional columns; returns a normalised copy."""
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}; required: {list(RESULT_COLUMNS)}")
    out = df.copy()
    for col, dtype in OPTIONAL_COLUMNS.items():
        if col not in out:
            out[col] = 1.0 if col == "subset_fraction" else pd.NA
        out[col] = out[col].astype(dtype)
    out["params"] = pd.to_numeric(out["params"], errors="coerce")  # NaN when a hub model's count is unknown
    out["target_sparsity"] = out["target_sparsity"].astype(float)
    out["value"] = out["value"].astype(float)
    out["subset_fraction"] = out["subset_fraction"].fillna(1.0)
    return out


def annotation_rows(savings: list[scaling.AnnotationSaving], *, size: str, params: float, dataset: str,
                    metric: str = "held-out accuracy", unit: str = "pairs") -> pd.DataFrame:
    """Tidy rows (metric "annotation_saving") for `scaling.annotation_efficiency` results of one size.
    `unit` says what the subset sizes were counted in ("pairs", or "fraction of pairs")."""

    def needed(s: scaling.AnnotationSaving) -> str:
        return "" if s.pairs_needed is None else f"needs {s.pairs_needed:.3g} {unit}; "

    return pd.DataFrame([{
        "size": size, "params": params, "method": s.method, "mode": "dense", "target_sparsity": 0.0,
        "metric": "annotation_saving", "value": s.saving if s.saving is not None else math.nan,
        "ci_low": s.ci_low, "ci_high": s.ci_high,
        "n_pairs": None if s.pairs_needed is None or unit != "pairs" else round(s.pairs_needed), "dataset": dataset,
        "note": f"{s.status}; {needed(s)}target: {metric}; reached in {s.reached_fraction:.0%} of replicates",
    } for s in savings])


# ---------------------------------------------------------------- blocks
@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "pre" | "table" | "figure"
    text: str = ""
    table: pd.DataFrame | None = None
    figure: str = ""  # file name under figures/


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    return str(v)


def _md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            parts.append(("# " if b.kind == "h1" else "## ") + b.text)
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "pre":
            parts.append(f"```yaml\n{b.text.rstrip()}\n```")
        elif b.kind == "table" and b.table is not None:
            parts.append(_md_table(b.table) if not b.table.empty else "_(no rows)_")
        elif b.kind == "figure":
            parts.append(f"![{b.text}](figures/{b.figure})\n\n_{b.text}_")
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%;height:auto}
figcaption{font-size:13px;color:#555}code{background:#f3f3f3;padding:0 3px}"""


def render_html(blocks: list[Block], figure_dir: Path, title: str) -> str:
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            parts.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "pre":
            parts.append(f"<pre>{html.escape(b.text)}</pre>")
        elif b.kind == "table" and b.table is not None:
            parts.append(_html_table(b.table) if not b.table.empty else "<p><em>(no rows)</em></p>")
        elif b.kind == "figure":
            data = base64.b64encode((figure_dir / b.figure).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------- content
def _figures(df: pd.DataFrame, traces: pd.DataFrame | None, fig_dir: Path) -> list[Block]:
    """Render every figure the data supports; returns figure blocks in report order."""
    specs = []
    for (metric, dataset), _ in df.groupby(["metric", "dataset"], sort=True):
        if metric in SPARSITY_FIGURE_METRICS:
            specs.append((f"acc_vs_sparsity_{metric}_{dataset}", f"{metric} vs target sparsity per size ({dataset})",
                          lambda m=metric, d=dataset: figures.accuracy_vs_sparsity(df, metric=m, dataset=d)))
        if metric in SIZE_FIGURE_METRICS:
            dense = df[(df["metric"] == metric) & (df["dataset"] == dataset) & (df["mode"] == "dense")
                       & (df["subset_fraction"] >= 1.0)]
            fits = {method: scaling.fit_log_params(g.groupby("params")["value"].mean().index,
                                                   g.groupby("params")["value"].mean(), scale=scaling.scale_for(metric))
                    for method, g in dense.groupby("method")}
            specs.append((f"{metric}_vs_size_{dataset}", f"{metric} vs model size ({dataset}, dense; dotted: OLS fit "
                          "on log10 params)", lambda m=metric, d=dataset, f=fits: figures.metric_vs_size(
                              df, metric=m, dataset=d, fits=f)))
    specs.append(("realized_sparsity_traces", "realized sparsity over decoding steps: static (dashed) vs dynamic "
                  "(solid) thresholds; horizontal lines are the targets", lambda: figures.sparsity_traces(traces)))
    specs.append(("speed_vs_sparsity", "decode speed vs target sparsity", lambda: figures.speed_vs_sparsity(df)))
    acc = "preference_accuracy" if (df["metric"] == "preference_accuracy").any() else "reward_accuracy"
    for dataset in sorted(df.loc[df["metric"] == acc, "dataset"].unique()):
        specs.append((f"annotation_efficiency_{dataset}", f"annotation efficiency ({dataset}): held-out {acc} vs "
                      "training pairs; dashed = DPO with all pairs",
                      lambda d=dataset: figures.annotation_curves(df, metric=acc, dataset=d)))
    blocks = []
    for name, caption, make in specs:
        fig = make()
        if fig is not None:
            fname = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) + ".png"
            figures.save_png(fig, fig_dir / fname)
            blocks.append(Block("figure", caption, figure=fname))
    return blocks


def _family_table(df: pd.DataFrame) -> pd.DataFrame:
    return df[["size", "params"]].drop_duplicates().sort_values("params").reset_index(drop=True)


def _dense_table(df: pd.DataFrame) -> pd.DataFrame:
    sub = df[(df["mode"] == "dense") & (df["subset_fraction"] >= 1.0) & (df["metric"] != "annotation_saving")]
    wide = sub.pivot_table(index=["dataset", "metric", "method"], columns="size", values="value", aggfunc="mean")
    order = _family_table(df)["size"]
    return wide[[s for s in order if s in wide.columns]].reset_index()


def build_blocks(df: pd.DataFrame, traces: pd.DataFrame | None, fig_dir: Path, title: str,
                 notes: list[str]) -> list[Block]:
    blocks = [Block("h1", title), *[Block("p", n) for n in notes],
              Block("p", "Datasets are reported separately and never pooled; 'generated' is the project's own "
                    "MBPP-format generated task set, not MBPP."),
              Block("h2", "Model family"), Block("table", table=_family_table(df))]
    figs = _figures(df, traces, fig_dir)
    if figs:
        blocks += [Block("h2", "Figures"), *figs]
    blocks += [Block("h2", "Dense results"), Block("table", table=_dense_table(df)),
              Block("h2", "Scaling fits"),
              Block("p", "OLS on log10(parameters) of the dense, all-pairs values; accuracies on the logit scale "
                    "(slope = logits per decade)."),
              Block("table", table=scaling.scaling_fit_table(
                  df, metrics=sorted(set(df["metric"]) - {"annotation_saving"})))]
    blocks.append(Block("h2", "Critical sparsity"))
    blocks.append(Block("p", "Highest target sparsity up to which the metric stays within 1 point (0.01) of the same "
                        "model's dense value."))
    acc_keys = df.loc[df["metric"].isin(HEADLINE_ACCURACY), ["metric", "dataset"]].drop_duplicates()
    acc_keys = list(acc_keys.sort_values(["metric", "dataset"]).itertuples(index=False, name=None))
    crit = [scaling.critical_sparsity_table(df, metric=m, dataset=d).assign(dataset=d) for m, d in acc_keys]
    crit = [c for c in crit if not c.empty]
    blocks.append(Block("table", table=pd.concat(crit, ignore_index=True) if crit else pd.DataFrame()))
    for m, d in acc_keys:
        gain = scaling.alignment_gain_table(df, metric=m, dataset=d)
        if not gain.empty:
            blocks += [Block("h2", f"Alignment gain: {m} ({d})"), Block("p", "aligned minus base, per sparsity."),
                       Block("table", table=gain)]
        svd = scaling.static_vs_dynamic_table(df, metric=m, dataset=d)
        if not svd.empty:
            blocks += [Block("h2", f"Static vs dynamic thresholds: {m} ({d})"), Block("table", table=svd)]
    ann = df[df["metric"] == "annotation_saving"]
    if not ann.empty:
        blocks += [Block("h2", "Annotation efficiency"),
                   Block("p", "Pairs each method needs to reach DPO's all-pairs held-out accuracy (interpolated on "
                         "log #pairs); saving = DPO pairs / pairs needed, 95% paired-bootstrap CI. Not reached = "
                         "not extrapolated."),
                   Block("table", table=ann[["size", "params", "dataset", "method", "n_pairs", "value", "ci_low",
                                             "ci_high", "note"]].rename(columns={"value": "saving",
                                                                                 "n_pairs": "pairs_needed"}))]
    return blocks


def parse_cell_key(key: str) -> dict | None:
    """`size/method/f<subset>/mode/target` (the eval directory layout, `study.cells`) -> cell fields, or None."""
    parts = key.split("/")
    if len(parts) != 5:
        return None
    try:
        return {"size": parts[0], "method": parts[1], "subset_fraction": float(parts[2].removeprefix("f")),
                "mode": parts[3],
                "target_sparsity": float(parts[4])}
    except ValueError:
        return None


def traces_from_cells(traces: dict[str, dict]) -> pd.DataFrame:
    """Cell-keyed sparsity traces (`{"realized_sparsity": [[per position] per layer], "step": k, ...}`) ->
    the tidy trace table, averaged over layers; positions are multiplied back by the thinning step."""
    rows = []
    for key, trace in traces.items():
        cell = parse_cell_key(key)
        series = [s for s in trace.get("realized_sparsity", []) if s]
        if cell is None or not series or cell["subset_fraction"] < 1.0:
            continue
        n = min(len(s) for s in series)
        mean = np.mean([s[:n] for s in series], axis=0)
        rows += [{**cell, "step": i * int(trace.get("step", 1)), "realized_sparsity": float(v)}
                 for i, v in enumerate(mean)]
    return pd.DataFrame(rows, columns=["size", "method", "subset_fraction", "mode", "target_sparsity", "step",
                                       "realized_sparsity"])


def annotation_from_items(items: dict[str, dict[str, list[float]]], params: dict[str, float], *,
                          reference: str = "dpo", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Annotation savings per size and preference dataset from cell-keyed per-pair correctness
    (`<dataset>_correct` arrays of the dense cells trained on nested subsets).  Subsets are fractions of the same
    pair pool, so fractions stand in for pair counts (the saving is a ratio)."""
    by_size: dict[tuple[str, str], dict[tuple[str, float], list[float]]] = {}
    for key, arrays in items.items():
        cell = parse_cell_key(key)
        if cell is None or cell["mode"] != "dense" or cell["method"] == "base":
            continue
        for name, values in arrays.items():
            if name.endswith("_correct"):
                by_size.setdefault((cell["size"], name.removesuffix("_correct")), {})[
                    (cell["method"], cell["subset_fraction"])] = values
    frames = []
    for (size, dataset), curve in sorted(by_size.items()):
        ref_subsets = [f for m, f in curve if m == reference]
        if len(ref_subsets) < 2 or len({len(v) for v in curve.values()}) != 1 or not curve[next(iter(curve))]:
            continue  # needs nested subsets of the reference, all evaluated on the same held-out pairs
        savings = scaling.annotation_efficiency(curve, reference=reference, n_boot=n_boot, seed=seed)
        frames.append(annotation_rows(savings, size=size, params=params.get(size, math.nan), dataset=dataset,
                                      unit="fraction of pairs"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_report(results: pd.DataFrame, out_dir: str | Path, *, traces: pd.DataFrame | dict | None = None,
                 items: dict[str, dict[str, list[float]]] | None = None, config: dict | None = None,
                 title: str = "sparsealign study report", notes: list[str] | None = None,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Write results.parquet, figures/*.png, report.md and report.html under `out_dir` (each atomically).

    `traces`: the tidy trace table (TRACE_COLUMNS) or cell-keyed trace dicts (see `traces_from_cells`).
    `items`: cell-keyed per-item arrays; with nested pair subsets they give the annotation-efficiency rows, which
    are appended to the results.  `config`: the study config, shown (with its hash) at the end of the report.
    """
    out_dir = Path(out_dir)
    df = validate_results(results)
    if items and "annotation_saving" not in set(df["metric"]):
        params = df.drop_duplicates("size").set_index("size")["params"].to_dict()
        ann = annotation_from_items(items, params, n_boot=n_boot, seed=seed)
        if not ann.empty:
            df = validate_results(pd.concat([df, ann], ignore_index=True))
    if isinstance(traces, dict):
        traces = traces_from_cells(traces)
    if traces is not None:
        missing = [c for c in TRACE_COLUMNS if c not in traces]
        if missing:
            raise ValueError(f"traces table lacks column(s) {missing}; required: {TRACE_COLUMNS}")
        if "params" not in traces:
            traces = traces.merge(_family_table(df), on="size", how="left")
    with atomic_path(out_dir / "results.parquet", suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(df, traces, fig_dir, title, notes or [])
    if config is not None:
        from sparsealign.config import config_hash

        blocks += [Block("h2", "Configuration"), Block("p", f"config hash {config_hash(config)}"),
                   Block("pre", yaml.safe_dump(config, sort_keys=False))]
    paths = {"results": out_dir / "results.parquet", "markdown": out_dir / "report.md",
             "html": out_dir / "report.html", "figures": fig_dir}
    atomic_write_text(paths["markdown"], render_markdown(blocks))
    atomic_write_text(paths["html"], render_html(blocks, fig_dir, title))
    return paths
