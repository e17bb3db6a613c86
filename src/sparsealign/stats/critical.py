"""Critical sparsity: how far a model can be sparsified before its metric drops below dense by more than a tolerance,
read along its realized-sparsity curve, with a crossed-bootstrap CI over items and seeds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sparsealign.stats.paired import DEFAULT_LEVEL, DEFAULT_RESAMPLES, replicate_means


def critical_sparsity(curve: Iterable[tuple[float, float]], *, tolerance: float,
                      start: tuple[float, float] | None = None) -> float | None:
    """Highest realized sparsity at which the drop from dense (sparse - dense) stays within `tolerance`.

    `curve`: (realized sparsity, drop) per measured target, in target order.  `start`: where the curve begins (the
    dense model at its natural sparsity, drop 0), when known.  Walking the curve, the first point whose drop is below
    -tolerance (inclusive: -tolerance itself passes) ends it, and the answer is where the straight line from the
    point before it crosses -tolerance (linear interpolation between measured targets).  "Stays" is cumulative: a
    later recovery does not count.  A NaN ends the walk at the point before (no interpolation across a gap).  Every
    target within tolerance: the highest measured sparsity (never extrapolated).  None when the first target fails
    (or is NaN) and there is no `start`.
    """
    best, prev = (None, None) if start is None else (float(start[0]), (float(start[0]), float(start[1])))
    for x, drop in curve:
        x, drop = float(x), float(drop)
        if math.isnan(x) or math.isnan(drop):
            break
        if drop < -tolerance:
            if prev is not None:
                x0, d0 = prev
                cross = x0 + (x - x0) * (d0 + tolerance) / (d0 - drop)
                best = cross if best is None else max(best, cross)
            break
        best = x if best is None else max(best, x)
        prev = (x, drop)
    return best


@dataclass(frozen=True)
class CriticalSparsity:
    estimate: float | None  # None: the first target already fails and the curve has no start
    low: float | None  # percentile CI over replicates (None: the bound is "below the first target")
    high: float | None
    within: bool  # every measured target within tolerance: the estimate is a lower bound (no extrapolation)
    drops: tuple[float, ...]  # the point estimates of sparse - dense per target, in curve order


def critical_sparsity_interval(realized: Sequence[float], sparse: Sequence[np.ndarray], dense: np.ndarray, *,
                               tolerance: float, start: float | None = None,
                               n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                               level: float = DEFAULT_LEVEL) -> CriticalSparsity:
    """`critical_sparsity` of the curve (realized[k], mean(sparse[k] - dense)) and its bootstrap CI.

    `sparse[k]` / `dense`: (seeds, items) or (items,) arrays on the same items, `sparse` in target order, `realized`
    the matching realized sparsities (held at their measured means: no per-item values to resample); `start`: the
    dense model's natural sparsity (the curve's start, drop 0), when known.  One crossed draw of items and seeds is
    shared by every target, so each replicate is a whole curve and its critical sparsity one replicate of the CI.
    """
    origin = None if start is None or math.isnan(start) else (start, 0.0)
    names = [f"t{k}" for k in range(len(sparse))]
    drops = tuple(float(np.mean(np.asarray(a, dtype=np.float64) - np.asarray(dense, dtype=np.float64)))
                  for a in sparse)
    estimate = critical_sparsity(zip(realized, drops, strict=True), tolerance=tolerance, start=origin)
    within = all(d >= -tolerance for d in drops)
    if not sparse or n_resamples <= 0:
        return CriticalSparsity(estimate, estimate, estimate, within, drops)
    reps = replicate_means({"dense": dense, **dict(zip(names, sparse, strict=True))}, n_resamples=n_resamples,
                           seed=seed)
    curves = np.stack([reps[n] - reps["dense"] for n in names], axis=1)  # (B, targets)
    crit = [critical_sparsity(zip(realized, row, strict=True), tolerance=tolerance, start=origin) for row in curves]
    values = np.sort([-math.inf if c is None else c for c in crit])
    alpha = (1.0 - level) / 2.0
    low, high = (float(values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))])
                 for q in (alpha, 1.0 - alpha))  # inverted-CDF percentiles: -inf ("none") never interpolated
    return CriticalSparsity(estimate, low if math.isfinite(low) else None, high if math.isfinite(high) else None,
                            within, drops)
