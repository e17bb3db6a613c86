"""Report figures (matplotlib, Agg backend, PNG): one function per figure, each reading the tidy results table.

Every function returns a matplotlib Figure or None when the table holds nothing to plot, so the report simply skips
figures a study did not produce data for.  Datasets are never pooled: one figure per (metric, dataset).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: no display, deterministic rendering

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparsealign.align.config import BASELINE_METHOD
from sparsealign.io import atomic_path
from sparsealign.sparse.modes import MODE_FACTS

MODE_STYLE = {"dense": "-", **{m: f.line for m, f in MODE_FACTS.items()}}
MODE_MARKER = {"dense": "o", **{m: f.marker for m, f in MODE_FACTS.items()}}


def _sizes(df) -> list[str]:
    return list(df.sort_values("params")["size"].drop_duplicates())


def _colors(keys) -> dict:
    cmap = plt.get_cmap("tab10")
    return {k: cmap(i % 10) for i, k in enumerate(sorted(keys))}


def _full(df):
    return df[df["subset_fraction"].fillna(1.0) >= 1.0] if "subset_fraction" in df else df


def _panels(n: int, title: str):
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 3.4), squeeze=False, sharey=True)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.6 / (3.6 * n + 0.6) + 0.04, right=0.98, bottom=0.15, top=0.82, wspace=0.08)
    return fig, axes[0]


def _errorband(ax, x, sub, color) -> None:
    if {"ci_low", "ci_high"} <= set(sub) and sub["ci_low"].notna().any():
        ax.fill_between(x, sub["ci_low"], sub["ci_high"], color=color, alpha=0.12, linewidth=0)


def accuracy_vs_sparsity(df, *, metric: str, dataset: str):
    """One panel per size: metric vs target sparsity, a line per method and threshold mode (dense at 0)."""
    sub = _full(df[(df["metric"] == metric) & (df["dataset"] == dataset)])
    if sub.empty or (sub["mode"] != "dense").sum() == 0:
        return None
    sizes = _sizes(sub)
    colors = _colors(sub["method"].unique())
    fig, axes = _panels(len(sizes), f"{metric} vs activation sparsity ({dataset})")
    for ax, size in zip(axes, sizes, strict=True):
        s = sub[sub["size"] == size]
        for (method, mode), grp in s[s["mode"] != "dense"].groupby(["method", "mode"], sort=True):
            dense = s[(s["method"] == method) & (s["mode"] == "dense")]
            line = (grp if dense.empty else _concat(dense.assign(target_sparsity=0.0), grp)).sort_values(
                "target_sparsity")
            ax.plot(line["target_sparsity"], line["value"], MODE_STYLE.get(mode, "-"),
                    marker=MODE_MARKER.get(mode, "o"), ms=3, color=colors[method], label=f"{method} / {mode}")
            _errorband(ax, line["target_sparsity"], line, colors[method])
        params = s["params"].iloc[0]
        ax.set_title(size if params != params else f"{size} ({int(params):,} params)", fontsize=9)  # NaN: unknown
        ax.set_xlabel("target sparsity")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    axes[-1].legend(fontsize=7, loc="best")
    return fig


def _concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)


def metric_vs_size(df, *, metric: str, dataset: str, fits: dict | None = None):
    """Dense metric vs parameters (log x), a line per method, with CIs and the OLS fit when given."""
    sub = _full(df[(df["metric"] == metric) & (df["dataset"] == dataset) & (df["mode"] == "dense")])
    if sub["params"].nunique() < 2:
        return None
    colors = _colors(sub["method"].unique())
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.9)
    for method, grp in sub.groupby("method", sort=True):
        grp = grp.sort_values("params")
        yerr = None
        if {"ci_low", "ci_high"} <= set(grp) and grp["ci_low"].notna().all():
            yerr = np.vstack([grp["value"] - grp["ci_low"], grp["ci_high"] - grp["value"]]).clip(min=0)
        ax.errorbar(grp["params"], grp["value"], yerr=yerr, marker="o", ms=4, capsize=3, color=colors[method],
                    label=method)
        fit = (fits or {}).get(method)
        if fit is not None and np.isfinite(fit.slope):
            xs = np.geomspace(grp["params"].min(), grp["params"].max(), 50)
            ax.plot(xs, fit.predict(xs), ":", color=colors[method], linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs model size ({dataset}, dense)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


def sparsity_traces(traces):
    """Realized sparsity over decoding steps, static vs dynamic thresholds, one panel per size."""
    if traces is None or traces.empty:
        return None
    sizes = list(traces.sort_values("params")["size"].drop_duplicates()) if "params" in traces else sorted(
        traces["size"].unique())
    targets = _colors(traces["target_sparsity"].unique())
    fig, axes = _panels(len(sizes), "realized sparsity over decoding steps")
    for ax, size in zip(axes, sizes, strict=True):
        t = traces[traces["size"] == size]
        for (mode, target), grp in t.groupby(["mode", "target_sparsity"], sort=True):
            grp = grp.groupby("step", as_index=False)["realized_sparsity"].mean()
            ax.plot(grp["step"], grp["realized_sparsity"], MODE_STYLE.get(mode, "-"), color=targets[target],
                    label=f"{mode} @ {target:g}", linewidth=1.2)
        for target, color in targets.items():
            ax.axhline(target, color=color, alpha=0.35, linewidth=0.8)
        ax.set_title(size, fontsize=9)
        ax.set_xlabel("decoding step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("realized sparsity")
    axes[-1].legend(fontsize=7)
    return fig


def speed_vs_sparsity(df, *, metric: str = "tokens_per_s"):
    """Decode speed vs target sparsity, a line per size and mode."""
    sub = _full(df[df["metric"] == metric])
    if sub.empty:
        return None
    colors = _colors(sub["size"].unique())
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.9)
    for (size, mode), grp in sub.groupby(["size", "mode"], sort=True):
        if mode == "dense":
            continue
        dense = sub[(sub["size"] == size) & (sub["mode"] == "dense")]
        line = _concat(dense.assign(target_sparsity=0.0), grp) if not dense.empty else grp
        line = line.groupby("target_sparsity", as_index=False)["value"].mean()
        ax.plot(line["target_sparsity"], line["value"], MODE_STYLE.get(mode, "-"), marker=MODE_MARKER.get(mode, "o"),
                ms=3, color=colors[size], label=f"{size} / {mode}")
    ax.set_xlabel("target sparsity")
    ax.set_ylabel(metric)
    ax.set_title(f"decode speed vs sparsity ({metric})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def annotation_curves(df, *, metric: str = "preference_accuracy", dataset: str | None = None,
                      reference: str = BASELINE_METHOD):
    """Held-out metric vs number of training pairs (log x) per method; the dashed line is the reference's
    all-pairs value, the target the annotation saving is measured against."""
    sub = df[(df["metric"] == metric) & (df["mode"] == "dense") & (df["method"] != "base")]
    if dataset is not None:
        sub = sub[sub["dataset"] == dataset]
    if "subset_fraction" not in sub or sub["subset_fraction"].nunique() < 2:
        return None
    xcol = "n_pairs" if "n_pairs" in sub and sub["n_pairs"].notna().all() else "subset_fraction"
    sizes = _sizes(sub)
    colors = _colors(sub["method"].unique())
    fig, axes = _panels(len(sizes), f"annotation efficiency: {metric} vs #pairs" + (f" ({dataset})" if dataset
                                                                                      else ""))
    for ax, size in zip(axes, sizes, strict=True):
        s = sub[sub["size"] == size]
        for method, grp in s.groupby("method", sort=True):
            grp = grp.groupby(xcol, as_index=False)["value"].mean()
            ax.plot(grp[xcol], grp["value"], marker="o", ms=3, color=colors[method], label=method)
        ref = s[s["method"] == reference]
        if not ref.empty:
            ax.axhline(float(ref.loc[ref[xcol].idxmax(), "value"]), color="gray", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training pairs" if xcol == "n_pairs" else "fraction of pairs")
        ax.set_title(size, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(metric)
    axes[-1].legend(fontsize=7)
    return fig


def save_png(fig, path) -> None:
    """Write a figure as PNG atomically and free it."""

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
