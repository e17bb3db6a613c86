"""Scaling slopes: OLS of an effect on log10(parameters) with a t(n-2) interval, and no slope from too few sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import linregress, t

MIN_SIZES = 4  # with 3 points the slope has 1 degree of freedom: its t interval is too wide to mean anything


@dataclass(frozen=True)
class Slope:
    slope: float  # change per decade of parameters
    low: float
    high: float
    stderr: float
    p: float  # two-sided t test of slope = 0, n - 2 degrees of freedom
    intercept: float
    sizes: int
    level: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def predict(self, params) -> np.ndarray:
        return self.intercept + self.slope * np.log10(np.asarray(params, dtype=float))


def slope_interval(params: Sequence[float], values: Sequence[float], *, level: float = 0.95,
                   min_sizes: int = MIN_SIZES) -> Slope | None:
    """OLS slope of `values` on log10(`params`) with its t(n-2) CI; None with fewer than `min_sizes` distinct sizes."""
    x = np.log10(np.asarray(params, dtype=np.float64))
    y = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < max(min_sizes, 3):
        return None
    fit = linregress(x, y)
    n = len(x)
    half = float(t.ppf(0.5 + level / 2.0, n - 2)) * float(fit.stderr)
    p = float(fit.pvalue) if math.isfinite(fit.pvalue) else 1.0  # a perfectly flat series: slope 0, p 1
    return Slope(float(fit.slope), float(fit.slope) - half, float(fit.slope) + half, float(fit.stderr), p,
                 float(fit.intercept), n, level)
