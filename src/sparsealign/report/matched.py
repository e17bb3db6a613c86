"""Dynamic vs static thresholds at equal realized sparsity on the same domain (the estimand `matched_sparsity`).

A dynamic cell at target t does not realize exactly what the static cell at t realizes, and quality falls steeply
with sparsity, so dynamic - static at the same nominal target mixes the controller's effect with a sparsity gap.
The mechanism reading compares the dynamic cell with the static curve read at the dynamic cell's own realized
sparsity on that domain: per item and seed, the static outcomes of the two static targets whose realized sparsity
brackets it, linearly interpolated.  The crossed bootstrap over items and seeds then applies unchanged; a dynamic
cell outside the static curve's measured range is not matched (no extrapolation) and is named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sparsealign.report.items import CellKey, ItemStore
from sparsealign.sparse.modes import DYNAMIC, STATIC

Realized = Mapping[tuple[CellKey, str], float]  # (cell with seeds pooled, dataset) -> realized sparsity there
EXACT = 1e-9  # a realized sparsity this close to a static point is that point (the frozen-controller null)


def realized_by_cell(df: pd.DataFrame, *, dense: bool = False) -> dict[tuple[CellKey, str], float]:
    """Realized sparsity per (cell, dataset) from results rows (`<dataset>_realized_sparsity`; dataset `all` is the
    whole sequence), mean over seeds; sparse cells only unless `dense` (a dense cell's: its natural sparsity)."""
    rows = df[(df["metric"] == "realized_sparsity") & (dense | (df["mode"] != "dense"))]
    subset = rows["subset_fraction"].fillna(1.0) if "subset_fraction" in rows else pd.Series(1.0, index=rows.index)
    means = rows.assign(subset_fraction=subset).groupby(
        ["size", "method", "subset_fraction", "mode", "target_sparsity", "dataset"])["value"].mean()
    return {(CellKey(size, method, round(float(f), 3), mode, round(float(t), 2)), ds): float(v)
            for (size, method, f, mode, t, ds), v in means.items() if np.isfinite(v)}


def interpolate_at(x: float, points: Sequence[tuple[float, np.ndarray]]) -> tuple[np.ndarray, int, int, float] | None:
    """The curve through `points` (x_k, y_k) read at x: (y, lo, hi, w) with y = (1 - w) y_lo + w y_hi and
    x_lo <= x <= x_hi; an x within EXACT of a point returns that point (w = 0).  None outside [min x, max x]."""
    order = sorted(range(len(points)), key=lambda k: points[k][0])
    for k in order:
        if abs(points[k][0] - x) <= EXACT:
            return points[k][1], k, k, 0.0
    for lo, hi in zip(order, order[1:], strict=False):
        (x_lo, y_lo), (x_hi, y_hi) = points[lo], points[hi]
        if x_lo < x < x_hi and y_lo.shape == y_hi.shape:
            w = (x - x_lo) / (x_hi - x_lo)
            return (1 - w) * y_lo + w * y_hi, lo, hi, w
    return None


@dataclass
class Match:
    dynamic: np.ndarray  # (seeds, items)
    static: np.ndarray  # the static curve at the dynamic cell's realized sparsity, same shape
    realized: float  # the dynamic cell's, on this domain
    between: str  # which static targets it was read between, with their realized sparsity


def matched_static(store: ItemStore, realized: Realized, size: str, method: str, dataset: str, metric: str,
                   target: float) -> Match | str:
    """One model's dynamic cell at `target` against its static curve on `dataset`; a reason string when it cannot
    be matched (missing cells or realized sparsity, or outside the static curve's measured range)."""
    dyn_key = CellKey(size, method, 1.0, DYNAMIC, target)
    dyn, r = store.get(dyn_key, dataset, metric), realized.get((dyn_key, dataset))
    if dyn is None or r is None:
        return "no dynamic cell with realized sparsity"
    points, targets = [], []
    for t in store.targets(STATIC):
        key = CellKey(size, method, 1.0, STATIC, t)
        arr, rs = store.get(key, dataset, metric), realized.get((key, dataset))
        if arr is not None and rs is not None and arr.shape == dyn.shape:
            points.append((rs, arr))
            targets.append(t)
    hit = interpolate_at(r, points)
    if hit is None:
        span = (f"{min(p[0] for p in points):.3f}-{max(p[0] for p in points):.3f}" if points else "none")
        return f"{DYNAMIC} realized {r:.3f} outside {STATIC}'s measured {span}"
    arr, lo, hi, w = hit
    between = (f"{STATIC} {targets[lo]:g} ({points[lo][0]:.3f})" if lo == hi else
               f"{STATIC} {targets[lo]:g}-{targets[hi]:g} ({points[lo][0]:.3f}-{points[hi][0]:.3f}, w {w:.2f})")
    return Match(dyn, arr, r, between)
