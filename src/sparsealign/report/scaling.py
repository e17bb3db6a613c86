"""The report's secondary tables: scaling fits, critical sparsity, alignment gain, static vs dynamic, annotation.

Each difference is paired on the same items (and seeds) with a crossed-bootstrap CI and an unadjusted p
(`stats.paired`); only the Findings' primary contrasts are Holm-adjusted.  A metric at its floor or ceiling in every
cell gets a note instead of numbers: no fit, no critical sparsity, no gain is derived from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from sparsealign.report.findings import BASE, REFERENCE, annotation_curves
from sparsealign.report.items import BOUNDED, CellKey, ItemStore, item_kind
from sparsealign.report.matched import realized_by_cell
from sparsealign.sparse.modes import DYNAMIC, STATIC
from sparsealign.stats.annotation import AnnotationSaving, annotation_savings
from sparsealign.stats.critical import critical_sparsity_interval
from sparsealign.stats.paired import bound_of, paired_difference
from sparsealign.stats.slopes import MIN_SIZES, slope_interval

BOUNDED_METRICS = frozenset({"pass@1", "preference_accuracy", "reward_accuracy", "ranking_accuracy", "win_rate"})


def full_data(df: pd.DataFrame) -> pd.DataFrame:
    """Only cells aligned on all preference pairs (subset runs belong to the annotation-efficiency analysis)."""
    return df[df["subset_fraction"].fillna(1.0) >= 1.0] if "subset_fraction" in df else df


def bounded_everywhere(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(dataset, metric, "floor"|"ceiling") for every bounded metric whose value is at that bound in every cell."""
    out = []
    sub = df[df["metric"].isin(BOUNDED_METRICS)]
    for (dataset, metric), grp in sub.groupby(["dataset", "metric"], sort=True):
        where = bound_of(grp["value"])
        if where:
            out.append((dataset, metric, where))
    return out


def scaling_fit_table(df: pd.DataFrame, *, metrics: list[str]) -> pd.DataFrame:
    """Per (family, metric, dataset, method): OLS slope of the dense all-pairs values per decade of parameters,
    t(n-2) CI -- within one model family only (a real pretrained model beside the micro family is never a point of
    its fit).  No slope from fewer than MIN_SIZES sizes, none from a series at its floor or ceiling."""
    rows = []
    sub = full_data(df[(df["mode"] == "dense") & df["metric"].isin(metrics)])
    sub = sub.assign(family=sub["family"].fillna("")) if "family" in sub else sub.assign(family="")
    for (family, metric, ds, method), grp in sub.groupby(["family", "metric", "dataset", "method"], sort=True):
        grp = grp.groupby("params", as_index=False)["value"].mean()
        row = {"family": family, "metric": metric, "dataset": ds, "method": method, "sizes": len(grp),
               "slope": math.nan,
               "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "note": ""}
        where = bound_of(grp["value"]) if metric in BOUNDED_METRICS else None
        fit = None if where else slope_interval(grp["params"], grp["value"])
        if where:
            row["note"] = f"at {where} in every size: no fit"
        elif fit is None:
            row["note"] = f"{len(grp)} size(s) < {MIN_SIZES}: no slope"
        else:
            row.update(slope=fit.slope, ci_low=fit.low, ci_high=fit.high, p=fit.p, note=f"t({fit.sizes - 2})")
        rows.append(row)
    return pd.DataFrame(rows, columns=["family", "metric", "dataset", "method", "sizes", "slope", "ci_low",
                                       "ci_high", "p", "note"])


def _diff_row(a: np.ndarray, b: np.ndarray, metric: str, n_boot: int, seed: int) -> dict:
    if item_kind(metric) in BOUNDED and bound_of(np.concatenate([a.ravel(), b.ravel()])):
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": a.shape[1], "seeds": a.shape[0],
                "p": math.nan, "note": f"both at {bound_of(a.ravel())}: no difference measurable"}
    d = paired_difference(a, b, n_resamples=n_boot, seed=seed)
    return {"diff": d.estimate, "ci_low": d.low, "ci_high": d.high, "n": d.n, "seeds": d.seeds, "p": d.p,
            "note": d.test}


DIFF_COLUMNS = ["diff", "ci_low", "ci_high", "n", "seeds", "p", "note"]


def alignment_gain_table(store: ItemStore, *, dataset: str, metric: str, reference: str = BASE, n_boot: int = 2000,
                         seed: int = 0) -> pd.DataFrame:
    """method - `reference` per (size, method, mode, target), paired on items; all-pairs alignment only.
    reference "base": the alignment gain; reference "dpo": each method against DPO (base left out)."""
    rows = []
    for c in store.cells(dataset, metric):
        if c.method in (BASE, reference) or c.subset != 1.0:
            continue
        base = store.get(CellKey(c.size, reference, 1.0, c.mode, c.target), dataset, metric)
        if base is not None:
            rows.append({"size": c.size, "method": c.method, "mode": c.mode, "target_sparsity": c.target,
                         **_diff_row(store.get(c, dataset, metric), base, metric, n_boot, seed)})
    return pd.DataFrame(rows, columns=["size", "method", "mode", "target_sparsity", *DIFF_COLUMNS])


def static_vs_dynamic_table(store: ItemStore, *, dataset: str, metric: str, n_boot: int = 2000,
                            seed: int = 0) -> pd.DataFrame:
    """dynamic - static per (size, method, target), paired on items; all-pairs alignment only."""
    rows = []
    for c in store.cells(dataset, metric):
        if c.mode != DYNAMIC or c.subset != 1.0:
            continue
        static = store.get(CellKey(c.size, c.method, 1.0, STATIC, c.target), dataset, metric)
        if static is not None:
            rows.append({"size": c.size, "method": c.method, "target_sparsity": c.target,
                         **_diff_row(store.get(c, dataset, metric), static, metric, n_boot, seed)})
    return pd.DataFrame(rows, columns=["size", "method", "target_sparsity", *DIFF_COLUMNS])


REALIZED = "realized_sparsity"


def realized_sparsity(df: pd.DataFrame, dataset: str) -> dict[CellKey, float]:
    """Per cell (mean over its seeds), the realized sparsity on `dataset`: the cell's `<dataset>` realized_sparsity
    row, else its whole-sequence (`all`) one -- for a dense cell, its natural (ReLU) sparsity, where measured."""
    by_cell = realized_by_cell(df, dense=True)
    out = {key: v for (key, ds), v in by_cell.items() if ds == "all"}
    out.update({key: v for (key, ds), v in by_cell.items() if ds == dataset})  # the dataset's own row wins
    return out


def critical_sparsity_table(store: ItemStore, *, dataset: str, metric: str, tolerance: float,
                            realized: pd.DataFrame | None = None, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (size, method, mode): the critical sparsity read along the realized-sparsity curve on `dataset` (the
    highest realized sparsity whose paired drop from dense stays within `tolerance`, interpolated linearly between
    measured targets, from the dense model at its natural sparsity where measured), with its crossed-bootstrap CI
    over items and seeds.  `realized`: the results rows holding realized_sparsity; without them the curve's x is
    the target sparsity and it has no start."""
    x_of = realized_sparsity(realized, dataset) if realized is not None else None
    rows = []
    models = sorted({(c.size, c.method, c.mode) for c in store.cells(dataset, metric)
                     if c.mode != "dense" and c.subset == 1.0})
    for size, method, mode in models:
        dense_key = CellKey(size, method, 1.0, "dense", 0.0)
        dense = store.get(dense_key, dataset, metric)
        if dense is None:
            continue
        sparse = {c.target: store.get(c, dataset, metric) for c in store.cells(dataset, metric)
                  if (c.size, c.method, c.mode, c.subset) == (size, method, mode, 1.0)}
        targets = sorted(sparse)
        xs = targets if x_of is None else [x_of.get(CellKey(size, method, 1.0, mode, t), math.nan) for t in targets]
        start = None if x_of is None else x_of.get(dense_key)
        row = {"size": size, "method": method, "mode": mode, "dense": float(dense.mean()), "critical_sparsity": "",
               "ci_low": math.nan, "ci_high": math.nan, "note": ""}
        where = bound_of(np.concatenate([dense.ravel(), *(a.ravel() for a in sparse.values())])) \
            if item_kind(metric) in BOUNDED else None
        if where:
            row["critical_sparsity"], row["note"] = "not measurable", f"at {where} at every sparsity"
        else:
            crit = critical_sparsity_interval(xs, [sparse[t] for t in targets], dense, tolerance=tolerance,
                                              start=start, n_resamples=n_boot, seed=seed)
            drops = {t: paired_difference(sparse[t], dense, n_resamples=n_boot, seed=seed, test=False)
                     for t in targets}
            row.update(critical_sparsity="none" if crit.estimate is None else crit.estimate,
                       ci_low="none" if crit.low is None else crit.low,
                       ci_high="none" if crit.high is None else crit.high)
            row["note"] = ("every target within tolerance (a lower bound); " if crit.within else "") + "; ".join(
                f"{t:g} (realized {x:.3f}): {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
                for (t, d), x in zip(drops.items(), xs, strict=True))
        rows.append(row)
    return pd.DataFrame(rows, columns=["size", "method", "mode", "dense", "critical_sparsity", "ci_low", "ci_high",
                                       "note"])


def annotation_rows(savings: list[AnnotationSaving], *, size: str, params: float, dataset: str,
                    unit: str = "fraction of pairs") -> pd.DataFrame:
    """Tidy results rows (metric "annotation_saving") for one size's (or the pooled) savings."""

    def needed(s: AnnotationSaving) -> str:
        return "" if s.pairs_needed is None else f"needs {s.pairs_needed:.3g} {unit}; "

    return pd.DataFrame([{
        "size": size, "params": params, "method": s.method, "mode": "dense", "target_sparsity": 0.0,
        "metric": "annotation_saving", "value": s.saving if s.saving is not None else math.nan,
        "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n,
        "n_pairs": None if s.pairs_needed is None or unit != "pairs" else round(s.pairs_needed), "dataset": dataset,
        "note": (f"{s.status}; {needed(s)}{s.subsets} subsets; reached in {s.reached_fraction:.0%} of replicates"
                 + ("; 1 by construction (the reference)" if s.method == REFERENCE else "")),
    } for s in savings])


def annotation_table(store: ItemStore, params: Mapping[str, float], *, metric: str = "reward_accuracy",
                     n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Annotation savings per size and preference dataset, for every method trained on >= 2 nested subsets.
    Subsets are fractions of one pair pool, so fractions stand in for pair counts (the saving is a ratio)."""
    frames = []
    for dataset in store.datasets(metric):
        for size in store.sizes():
            curves = annotation_curves(store, dataset, metric, sizes=[size])
            savings = annotation_savings(curves, reference=REFERENCE, n_resamples=n_boot, seed=seed) if curves else []
            if savings:
                frames.append(annotation_rows(savings, size=size, params=params.get(size, math.nan),
                                              dataset=dataset))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
