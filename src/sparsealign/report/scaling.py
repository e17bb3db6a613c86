"""Scaling analysis: pure functions over per-item results and the tidy results table.

Conventions (docs/study.md):
- Fits are OLS of the metric on log10(parameters); accuracies (values in [0, 1]) are fitted on the logit scale after
  clipping to [eps, 1 - eps], so the slope is "logits per decade of parameters".
- Bootstrap CIs are *paired*: each replicate draws one set of item indices (problems or preference pairs) and uses
  it for every size / method / sparsity, so differences between them are not swamped by item sampling noise.
  All arrays passed together must therefore be aligned on the same items.
- Critical sparsity: the highest sparsity s such that the metric at every sparsity <= s is within `tol`
  (default 0.01 = 1 point) of the dense value.
- Annotation efficiency: pairs a method needs to reach the held-out accuracy of the reference method (DPO) trained
  on all pairs, linearly interpolated on log(#pairs); saving = reference pairs / pairs needed.  "Not reached" is
  reported as such (never extrapolated).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ACCURACY_METRICS = frozenset({"pass@1", "preference_accuracy", "reward_accuracy", "ranking_accuracy", "win_rate"})


# ---------------------------------------------------------------- transforms and fits
def logit(p, eps: float = 1e-3):
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(p / (1 - p))


def expit(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


@dataclass(frozen=True)
class ScalingFit:
    """y = intercept + slope * log10(N), with y = logit(value) when scale == "logit"."""

    slope: float
    intercept: float
    r2: float
    slope_stderr: float
    n: int
    scale: str  # "linear" | "logit"

    def predict(self, params) -> np.ndarray:
        y = self.intercept + self.slope * np.log10(np.asarray(params, dtype=float))
        return expit(y) if self.scale == "logit" else y


def fit_log_params(params: Sequence[float], values: Sequence[float], *, scale: str = "linear",
                   eps: float = 1e-3) -> ScalingFit:
    """OLS fit of the (transformed) metric on log10(params). Needs >= 2 distinct sizes, else NaNs."""
    x = np.log10(np.asarray(params, dtype=float))
    y = logit(values, eps) if scale == "logit" else np.asarray(values, dtype=float)
    if scale not in ("linear", "logit"):
        raise ValueError(f"scale must be 'linear' or 'logit', got {scale!r}")
    if len(np.unique(x)) < 2:
        return ScalingFit(math.nan, math.nan, math.nan, math.nan, len(x), scale)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    dof = len(x) - 2
    stderr = math.sqrt(float(np.sum(resid**2)) / dof / np.sum((x - x.mean()) ** 2)) if dof > 0 else math.nan
    return ScalingFit(float(slope), float(intercept), r2, stderr, len(x), scale)


def scale_for(metric: str) -> str:
    return "logit" if metric in ACCURACY_METRICS else "linear"


# ---------------------------------------------------------------- paired bootstrap
def bootstrap_indices(n_items: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_boot, n_items] item indices; the same matrix is applied to every array (the pairing)."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def _aligned(items: Mapping[Hashable, Sequence[float]]) -> dict[Hashable, np.ndarray]:
    arrays = {k: np.asarray(v, dtype=float) for k, v in items.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"paired bootstrap needs arrays over the same items; got lengths {sorted(lengths)}")
    return arrays


def bootstrap_means(items: Mapping[Hashable, Sequence[float]], *, n_boot: int = 1000,
                    seed: int = 0) -> dict[Hashable, np.ndarray]:
    """Replicate means per key, all keys resampled with the same indices. Returns {key: [n_boot]}."""
    arrays = _aligned(items)
    idx = bootstrap_indices(len(next(iter(arrays.values()))), n_boot, seed)
    return {k: a[idx].mean(axis=1) for k, a in arrays.items()}


def percentile_ci(replicates: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    reps = np.asarray(replicates, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap(items: Mapping[Hashable, Sequence[float]], *, n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict[Hashable, tuple[float, float, float]]:
    """{key: (mean, ci_low, ci_high)} with one shared resampling of the items."""
    reps = bootstrap_means(items, n_boot=n_boot, seed=seed)
    return {k: (float(np.mean(np.asarray(v, dtype=float))), *percentile_ci(reps[k], alpha)) for k, v in items.items()}


def paired_difference(a: Sequence[float], b: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float, float]:
    """mean(a - b) and its paired-bootstrap CI (e.g. aligned - base pass@1 on the same problems)."""
    reps = bootstrap_means({"a": a, "b": b}, n_boot=n_boot, seed=seed)
    diff = float(np.mean(a) - np.mean(b))
    return (diff, *percentile_ci(reps["a"] - reps["b"], alpha))


def bootstrap_slope(params: Mapping[Hashable, float], items: Mapping[Hashable, Sequence[float]], *,
                    scale: str = "linear", n_boot: int = 1000, seed: int = 0,
                    alpha: float = 0.05) -> tuple[ScalingFit, float, float]:
    """Scaling fit over sizes with a paired-bootstrap CI of its slope (items resampled once for all sizes)."""
    keys = list(items)
    point = fit_log_params([params[k] for k in keys], [np.mean(items[k]) for k in keys], scale=scale)
    reps = bootstrap_means({k: items[k] for k in keys}, n_boot=n_boot, seed=seed)
    x = [params[k] for k in keys]
    slopes = np.array([fit_log_params(x, [reps[k][b] for k in keys], scale=scale).slope for b in range(n_boot)])
    return (point, *percentile_ci(slopes, alpha))


# ---------------------------------------------------------------- sparsity
def critical_sparsity(sparsities: Sequence[float], values: Sequence[float], dense_value: float, *,
                      tol: float = 0.01) -> float:
    """Highest sparsity up to which the metric stays within `tol` of dense (0.0 if the first one already drops).

    "Stays within" is cumulative: a sparsity beyond the first failure does not count even if noise lifts it back.
    """
    best = 0.0
    for s, v in sorted(zip(sparsities, values, strict=True)):
        if not np.isfinite(v) or v < dense_value - tol:
            break
        best = max(best, float(s))
    return best


# ---------------------------------------------------------------- annotation efficiency
@dataclass(frozen=True)
class PairsNeeded:
    pairs: float | None  # None when never reached
    status: str  # "reached" | "reached_at_smallest" (an upper bound: the smallest subset already reaches it) |
    #              "not_reached"


def pairs_needed(n_pairs: Sequence[float], accuracy: Sequence[float], target: float) -> PairsNeeded:
    """Fewest pairs at which the accuracy curve first reaches `target`, interpolated linearly in log(#pairs)."""
    pts = sorted(zip(n_pairs, accuracy, strict=True))
    if not pts:
        return PairsNeeded(None, "not_reached")
    if pts[0][1] >= target:
        return PairsNeeded(float(pts[0][0]), "reached_at_smallest")
    for (n0, a0), (n1, a1) in zip(pts, pts[1:], strict=False):
        if a1 >= target > a0:
            frac = (target - a0) / (a1 - a0)
            return PairsNeeded(float(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))), "reached")
    return PairsNeeded(None, "not_reached")


@dataclass(frozen=True)
class AnnotationSaving:
    method: str
    pairs_needed: float | None
    status: str
    saving: float | None  # reference_pairs / pairs_needed
    ci_low: float
    ci_high: float
    reached_fraction: float  # share of bootstrap replicates in which the target was reached


def annotation_efficiency(items: Mapping[tuple[str, int], Sequence[float]], *, reference: str = "dpo",
                          n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[AnnotationSaving]:
    """Per method, pairs needed to match `reference` trained on all pairs, and the saving with a paired CI.

    `items[(method, n_pairs)]` holds per-held-out-pair 0/1 (or float) correctness, aligned across all keys.  The
    target is the reference's accuracy at its largest #pairs.  In replicates where a method never reaches the
    target its saving counts as 0, so an unreliable saving shows as a CI reaching down to 0.
    """
    ref_n = max(n for m, n in items if m == reference)
    methods = sorted({m for m, _ in items})

    def savings(acc: Mapping[tuple[str, int], float]) -> dict[str, tuple[PairsNeeded, float | None]]:
        out = {}
        for m in methods:
            keys = sorted(n for mm, n in acc if mm == m)
            need = pairs_needed(keys, [acc[(m, n)] for n in keys], acc[(reference, ref_n)])
            out[m] = (need, ref_n / need.pairs if need.pairs else None)
        return out

    point = savings({k: float(np.mean(v)) for k, v in items.items()})
    reps = bootstrap_means(items, n_boot=n_boot, seed=seed)
    rep_savings = {m: np.zeros(n_boot) for m in methods}
    reached = {m: 0 for m in methods}
    for b in range(n_boot):
        for m, (_, s) in savings({k: v[b] for k, v in reps.items()}).items():
            rep_savings[m][b] = s or 0.0
            reached[m] += s is not None
    return [AnnotationSaving(m, point[m][0].pairs, point[m][0].status, point[m][1],
                             *percentile_ci(rep_savings[m], alpha), reached[m] / n_boot) for m in methods]


# ---------------------------------------------------------------- tidy-table helpers
def rows_where(df, **eq):
    """Rows of a tidy results table whose columns equal the given values (None = any)."""
    mask = np.ones(len(df), dtype=bool)
    for col, val in eq.items():
        if val is not None:
            mask &= (df[col] == val).to_numpy()
    return df[mask]


def critical_sparsity_table(df, *, metric: str, dataset: str | None = None, tol: float = 0.01):
    """One row per (size, method, mode): the critical sparsity of `metric` against that model's dense value."""
    import pandas as pd

    sub = _all_pairs(rows_where(df, metric=metric, dataset=dataset))
    dense = sub[sub["mode"] == "dense"]
    out = []
    for (size, method, mode), grp in sub[sub["mode"] != "dense"].groupby(["size", "method", "mode"], sort=True):
        ref = rows_where(dense, size=size, method=method)
        if ref.empty:
            continue
        d = float(ref["value"].iloc[0])
        out.append({"size": size, "params": grp["params"].iloc[0], "method": method, "mode": mode,
                    "metric": metric, "dense": d, "critical_sparsity":
                    critical_sparsity(grp["target_sparsity"], grp["value"], d, tol=tol)})
    return pd.DataFrame(out)


def _all_pairs(df):
    """Only cells aligned on all preference pairs (subset runs belong to the annotation-efficiency analysis)."""
    return df[df["subset_fraction"].fillna(1.0) >= 1.0] if "subset_fraction" in df else df


def _with_params(wide, df):
    """Reattach each size's parameter count after a pivot (kept out of the index: it may be NaN)."""
    out = wide.reset_index()
    params = df.drop_duplicates("size").set_index("size")["params"]
    out.insert(1, "params", out["size"].map(params))
    return out.sort_values(["params", *[c for c in ("method", "mode", "target_sparsity") if c in out]])


def alignment_gain_table(df, *, metric: str, dataset: str | None = None, base: str = "base"):
    """Aligned minus base at each (size, mode, sparsity), one column per method; full-data alignment only."""
    sub = _all_pairs(rows_where(df, metric=metric, dataset=dataset))
    wide = sub.pivot_table(index=["size", "mode", "target_sparsity"], columns="method", values="value",
                           aggfunc="mean")
    if base not in wide:
        return wide.iloc[0:0].reset_index()
    return _with_params(wide.drop(columns=[base]).sub(wide[base], axis=0), df)


def static_vs_dynamic_table(df, *, metric: str, dataset: str | None = None):
    """dynamic minus static at each (size, method, sparsity), full-data alignment only."""
    sub = _all_pairs(rows_where(df, metric=metric, dataset=dataset))
    wide = sub.pivot_table(index=["size", "method", "target_sparsity"], columns="mode", values="value",
                           aggfunc="mean")
    if "dynamic" not in wide or "static" not in wide:
        return wide.iloc[0:0].reset_index()
    out = wide[["static", "dynamic"]].copy()
    out["dynamic_minus_static"] = out["dynamic"] - out["static"]
    return _with_params(out, df)


def scaling_fit_table(df, *, metrics: Sequence[str], mode: str = "dense", dataset: str | None = None):
    """Per (metric, dataset, method): OLS fit on log10(params) of the dense, full-data values."""
    import pandas as pd

    out = []
    sub = _all_pairs(rows_where(df, mode=mode, dataset=dataset))
    for (metric, ds, method), grp in sub[sub["metric"].isin(metrics)].groupby(["metric", "dataset", "method"]):
        grp = grp.groupby("params", as_index=False)["value"].mean()
        fit = fit_log_params(grp["params"], grp["value"], scale=scale_for(metric))
        out.append({"metric": metric, "dataset": ds, "method": method, "scale": fit.scale, "slope": fit.slope,
                    "slope_stderr": fit.slope_stderr, "r2": fit.r2, "sizes": fit.n})
    return pd.DataFrame(out)
