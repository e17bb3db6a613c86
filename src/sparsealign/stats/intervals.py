"""Confidence intervals: seeded percentile bootstrap over items, paired across systems, and Wilson for a proportion.

Every figure the evaluation reports is a mean of per-item values (per problem, per pair, per sampled completion), so
the bootstrap resamples items with replacement and recomputes the mean.  `paired_bootstrap` draws ONE set of index
vectors and applies it to every system, so the intervals of differences between systems (sizes, sparsity levels)
account for the items they share -- the study compares models on the same problems and the same pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
_CHUNK = 200  # resamples per vectorised block: bounds memory at 200 x n floats


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float
    n: int
    method: str  # "percentile-bootstrap" | "wilson" | "none"

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _as_items(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of per-item values, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: no items to summarise")
    return arr


def resample_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` bootstrap resamples of the rows of `values` (n,) or (n, systems)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = []
    for start in range(0, n_resamples, _CHUNK):
        b = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(b, n))  # (b, n) item indices, shared by every column of `values`
        out.append(values[idx].mean(axis=1))  # (b,) or (b, systems)
    return np.concatenate(out, axis=0)


def _percentiles(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1.0 - level) / 2.0
    return np.quantile(boot, alpha, axis=0), np.quantile(boot, 1.0 - alpha, axis=0)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap CI of the mean of per-item `values` (deterministic for a given seed)."""
    arr = _as_items(values)
    estimate = float(arr.mean())
    if arr.size == 1 or n_resamples <= 0:
        return Interval(estimate, estimate, estimate, level, int(arr.size), "none")
    low, high = _percentiles(resample_means(arr, n_resamples, seed), level)
    return Interval(estimate, float(low), float(high), level, int(arr.size), "percentile-bootstrap")


def paired_bootstrap(
    systems: Mapping[str, Sequence[float] | np.ndarray],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    baseline: str | None = None,
) -> dict[str, dict[str, Interval]]:
    """CIs for several systems scored on the SAME items, from the same resampled indices.

    Returns {"systems": {name: Interval}, "differences": {"a - baseline": Interval}}; differences are taken against
    `baseline` (default: the first system).  Items are aligned by position: systems[name][i] is item i for all.
    """
    if not systems:
        raise ValueError("paired_bootstrap: no systems given")
    names = list(systems)
    cols = [_as_items(systems[name], name) for name in names]
    if len({c.size for c in cols}) != 1:
        sizes = ", ".join(f"{n}={c.size}" for n, c in zip(names, cols, strict=True))
        raise ValueError(f"paired_bootstrap: systems must be scored on the same items ({sizes})")
    base = baseline if baseline is not None else names[0]
    if base not in systems:
        raise ValueError(f"paired_bootstrap: baseline {base!r} is not one of {names}")
    matrix = np.stack(cols, axis=1)  # (n_items, n_systems)
    n = matrix.shape[0]
    estimates = matrix.mean(axis=0)
    if n > 1 and n_resamples > 0:
        boot = resample_means(matrix, n_resamples, seed)  # (B, n_systems)
        diff_boot = boot - boot[:, [names.index(base)]]
        lows, highs = _percentiles(boot, level)
        dlows, dhighs = _percentiles(diff_boot, level)
        method = "percentile-bootstrap"
    else:
        lows = highs = estimates
        dlows = dhighs = estimates - estimates[names.index(base)]
        method = "none"
    b = names.index(base)
    out: dict[str, dict[str, Interval]] = {"systems": {}, "differences": {}}
    for j, name in enumerate(names):
        est = float(estimates[j])
        out["systems"][name] = Interval(est, float(lows[j]), float(highs[j]), level, n, method)
        if name != base:
            d = float(estimates[j] - estimates[b])
            out["differences"][f"{name} - {base}"] = Interval(d, float(dlows[j]), float(dhighs[j]), level, n, method)
    return out


def wilson_interval(successes: int, total: int, *, level: float = DEFAULT_LEVEL) -> Interval:
    """Wilson score interval for a binomial proportion (good near 0 and 1, where the bootstrap collapses)."""
    if total <= 0:
        raise ValueError("wilson_interval: total must be positive")
    if not 0 <= successes <= total:
        raise ValueError(f"wilson_interval: successes={successes} outside [0, {total}]")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2.0))
    p = successes / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no 1e-17 rounding residue
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Interval(p, low, high, level, total, "wilson")
