"""Report figures (matplotlib, Agg backend, PNG): one function per figure, each reading the tidy results table.

Every function returns a matplotlib Figure or None when the table holds nothing to plot, so the report simply skips
figures a study did not produce data for.  Datasets are never pooled: one figure per (metric, dataset).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: no display, deterministic rendering

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from sparsealign.align.config import BASELINE_METHOD
from sparsealign.io import atomic_path
from sparsealign.report import scaling
from sparsealign.report.findings import BASE
from sparsealign.report.items import CellKey
from sparsealign.sparse.modes import MODE_FACTS, MODES

DENSE = "dense"
DENSE_MARKER = "*"
MODE_STYLE = {m: f.line for m, f in MODE_FACTS.items()}
MODE_MARKER = {m: f.marker for m, f in MODE_FACTS.items()}


def _sizes(df) -> list[str]:
    return list(df.sort_values("params")["size"].drop_duplicates())


def _colors(keys) -> dict:
    cmap = plt.get_cmap("tab10")
    return {k: cmap(i % 10) for i, k in enumerate(sorted(keys))}


def _size_colors(df) -> dict:
    """A colour per size, in parameter order (the legend's order)."""
    colors = _colors(df["size"].unique())
    return {s: colors[s] for s in _sizes(df)}


def _full(df):
    return df[df["subset_fraction"].fillna(1.0) >= 1.0] if "subset_fraction" in df else df


def _panels(n: int, title: str, *, ncols: int = 4):
    """`n` panels sharing y, at most `ncols` a row (unused ones hidden); returns the figure and the n axes."""
    cols, rows = min(n, ncols), -(-n // ncols)
    width = 3.6 * cols + 0.6
    fig, axes = plt.subplots(rows, cols, figsize=(width, 3.4 * rows), squeeze=False, sharey=True)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.6 / width + 0.04, right=0.98, bottom=0.15 / rows, top=1 - 0.18 / rows, wspace=0.08,
                        hspace=0.45)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def realized_points(df, *, metric: str, dataset: str, by: tuple[str, ...] = ("method",)):
    """Rows of `metric` on `dataset` (all pairs), one per (size, *by, mode, target) (means over seeds and over what
    `by` leaves out), with `x` = the realized sparsity of the same cells on `dataset` (`scaling.realized_sparsity`:
    the per-dataset row, else the `all` one; NaN where none was measured)."""
    full = _full(df)
    x_of = scaling.realized_sparsity(full, dataset)
    sub = full[(full["metric"] == metric) & (full["dataset"] == dataset)]
    sub = sub.assign(x=[x_of.get(CellKey(r.size, r.method, round(float(r.subset_fraction), 3), r.mode,
                                         round(float(r.target_sparsity), 2)), np.nan)
                        for r in sub.assign(subset_fraction=sub.get("subset_fraction", 1.0)).itertuples()])
    for col in ("ci_low", "ci_high"):
        if col not in sub:
            sub = sub.assign(**{col: np.nan})
    keys = ["size", "params", *by, "mode", "target_sparsity"]
    return sub.groupby(keys, as_index=False, dropna=False)[["value", "ci_low", "ci_high", "x"]].mean()


def _draw_curves(ax, pts, colors: dict, grids: dict) -> None:
    """Per size (colour) and mode (line style): the metric against realized sparsity, a point per target of the
    mode's grid in target order -- a target this series did not measure (or whose realized sparsity is unknown) is
    a NaN, so the line breaks there instead of interpolating.  Dense: a lone marker at its natural sparsity (none
    when unknown), never joined to the sparse points.  Bars: the rows' 95% CI where given."""
    for (size, mode), grp in pts.groupby(["size", "mode"], sort=True):
        if mode == DENSE:
            line = grp[grp["x"].notna()]
            style = {"linestyle": "none", "marker": DENSE_MARKER, "ms": 8}
        else:
            line = grp.set_index("target_sparsity").reindex(grids[mode])
            style = {"linestyle": MODE_STYLE.get(mode, "-"), "marker": MODE_MARKER.get(mode, "o"), "ms": 3}
        if line.empty:
            continue
        ax.plot(line["x"].to_numpy(float), line["value"].to_numpy(float), color=colors[size], gid=f"{size}/{mode}",
                **style)
        bars = line[line["x"].notna() & line["ci_low"].notna() & line["ci_high"].notna()]
        if not bars.empty:
            err = np.vstack([bars["value"] - bars["ci_low"], bars["ci_high"] - bars["value"]]).clip(min=0)
            ax.errorbar(bars["x"], bars["value"], yerr=err, fmt="none", ecolor=colors[size], elinewidth=0.8,
                        alpha=0.6, capsize=0)


def _curve_legend(ax, colors: dict, modes) -> None:
    """Colour = size, line style = mode, star = dense at its natural sparsity (proxies: not lines of the axes)."""
    handles = [Line2D([], [], color=c, label=s) for s, c in colors.items()]
    handles += [Line2D([], [], color="gray", linestyle=MODE_STYLE.get(m, "-"), marker=MODE_MARKER.get(m, "o"), ms=3,
                       label=m) for m in modes if m != DENSE]
    handles.append(Line2D([], [], color="gray", linestyle="none", marker=DENSE_MARKER, ms=8,
                          label="dense (natural sparsity)"))
    ax.legend(handles=handles, fontsize=7, loc="best")


def _sparse_grids(pts) -> dict:
    """Per sparse mode, every target any series of it measured: the x positions a line may pass through."""
    sparse = pts[pts["mode"] != DENSE]
    return {m: sorted(g["target_sparsity"].unique()) for m, g in sparse.groupby("mode")}


def accuracy_vs_sparsity(df, *, metric: str, dataset: str):
    """One panel per method: the metric vs the REALIZED sparsity on `dataset`, a colour per size, a line style per
    threshold mode (see `_draw_curves`)."""
    pts = realized_points(df, metric=metric, dataset=dataset)
    if not (pts["x"].notna() & (pts["mode"] != DENSE)).any():
        return None
    colors = _size_colors(pts)
    grids = _sparse_grids(pts)
    methods = sorted(pts["method"].unique(), key=lambda m: (m != BASE, m))
    fig, axes = _panels(len(methods), f"{metric} vs realized sparsity ({dataset})")
    for ax, method in zip(axes, methods, strict=True):
        _draw_curves(ax, pts[pts["method"] == method], colors, grids)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel(f"realized sparsity ({dataset})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    _curve_legend(axes[-1], colors, pts["mode"].unique())
    return fig


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


MODE_COLOR = dict(zip(MODES, ("tab:blue", "tab:red", "tab:green"), strict=False))  # static, dynamic, predictor
TARGET_STYLE = ("-", "--", ":", "-.")


def _domain_starts(t) -> dict[str, list[float]]:
    """Per evaluation domain, the steps where it starts in the traces of `t` (each cell's first step in it, the
    median over the cells of one (mode, target) line); {} when the traces carry no domain."""
    if "domain" not in t or t["domain"].isna().all():
        return {}
    first = t.dropna(subset=["domain"]).groupby(["mode", "target_sparsity", "method", "domain"])["step"].min()
    line = first.groupby(["mode", "target_sparsity", "domain"]).median()
    return {d: sorted(set(g.tolist())) for d, g in line.groupby("domain")}


def sparsity_traces(traces):
    """Realized sparsity over decoding steps, one panel per size: a colour per threshold mode, a line style per
    target (each target's level a labelled grey line), and a dotted vertical line where the evaluation domain
    changes (labelled with the domain that starts there)."""
    if traces is None or traces.empty:
        return None
    sizes = _sizes(traces) if "params" in traces else sorted(traces["size"].unique())
    styles = {t: TARGET_STYLE[i % len(TARGET_STYLE)] for i, t in enumerate(sorted(traces["target_sparsity"].unique()))}
    fig, axes = _panels(len(sizes), "realized sparsity over decoding steps")
    for ax, size in zip(axes, sizes, strict=True):
        t = traces[traces["size"] == size]
        for (mode, target), grp in t.groupby(["mode", "target_sparsity"], sort=True):
            grp = grp.groupby("step", as_index=False)["realized_sparsity"].mean()
            ax.plot(grp["step"], grp["realized_sparsity"], styles[target], color=MODE_COLOR.get(mode, "black"),
                    label=f"{mode} @ {target:g}", linewidth=1.2, gid=f"{mode}/{target:g}")
        for target, style in styles.items():
            ax.axhline(target, color="gray", linestyle=style, alpha=0.6, linewidth=0.8, gid=f"target:{target:g}")
            ax.annotate(f"target {target:g}", (0.0, target), xycoords=("axes fraction", "data"), xytext=(2, 0),
                        textcoords="offset points", ha="left", va="center", fontsize=6, color="dimgray",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
        for name, starts in _domain_starts(t).items():
            for step in starts:
                ax.axvline(step, color="black", linestyle=":", linewidth=0.8, alpha=0.7, gid=f"domain:{name}")
            ax.annotate(name, (starts[0], 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", rotation=90, ha="left", va="top", fontsize=6)
        ax.set_title(size, fontsize=9)
        ax.set_xlabel("decoding step (sparse positions)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("realized sparsity")
    modes = [m for m in MODE_COLOR if m in set(traces["mode"])]
    handles = [Line2D([], [], color=MODE_COLOR[m], label=m) for m in modes]
    handles += [Line2D([], [], color="gray", linestyle=style, label=f"target {t:g}") for t, style in styles.items()]
    fig.subplots_adjust(bottom=0.27)  # the legend goes under the panels, off the traces
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    return fig


def speed_vs_sparsity(df, *, metric: str = "tokens_per_s"):
    """Decode speed vs the REALIZED (whole-sequence) sparsity, a colour per size, a line style per mode (means over
    methods); dense at its natural sparsity, never joined to the sparse points (see `_draw_curves`)."""
    pts = realized_points(df, metric=metric, dataset="all", by=())
    if not (pts["x"].notna() & (pts["mode"] != DENSE)).any():
        return None
    colors = _size_colors(pts)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.9)
    _draw_curves(ax, pts, colors, _sparse_grids(pts))
    ax.set_xlabel("realized sparsity")
    ax.set_ylabel(metric)
    ax.set_title(f"decode speed vs realized sparsity ({metric})", fontsize=10)
    ax.grid(alpha=0.3)
    _curve_legend(ax, colors, pts["mode"].unique())
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
