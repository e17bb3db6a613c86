"""pass@k: the unbiased estimator of Chen et al. (2021) and its confidence interval over problems.

For a problem with n samples of which c pass, the probability that at least one of k samples drawn without
replacement passes is

    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)

The product form never builds the (huge) binomial coefficients, so it is exact to float precision for any n.
The benchmark figure is the mean over problems.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sparsealign.stats.intervals import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Interval,
    bootstrap_ci,
    wilson_interval,
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `n` samples, `c` of them correct."""
    if not (n >= 1 and 0 <= c <= n):
        raise ValueError(f"pass_at_k: need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be in [1, n={n}] (draw at least k samples per problem)")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def per_problem_pass_at_k(n: Sequence[int], c: Sequence[int], k: int) -> np.ndarray:
    """pass@k of each problem (same length as `n` and `c`)."""
    if len(n) != len(c):
        raise ValueError(f"per_problem_pass_at_k: {len(n)} sample counts but {len(c)} correct counts")
    return np.array([pass_at_k(int(ni), int(ci), k) for ni, ci in zip(n, c, strict=True)], dtype=np.float64)


def pass_at_k_interval(
    n: Sequence[int],
    c: Sequence[int],
    k: int,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    """Mean pass@k over problems with a CI.

    With one sample per problem and k=1 the per-problem values are Bernoulli, so the Wilson score interval of the
    pass count is used (the percentile bootstrap of a 0/1 mean collapses at 0 % and 100 %); otherwise a seeded
    percentile bootstrap over problems.
    """
    values = per_problem_pass_at_k(n, c, k)
    if k == 1 and all(int(ni) == 1 for ni in n):
        return wilson_interval(int(sum(int(ci) for ci in c)), len(values), level=level)
    return bootstrap_ci(values, n_resamples=n_resamples, level=level, seed=seed)
