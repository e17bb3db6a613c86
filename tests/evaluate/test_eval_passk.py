"""pass@k against brute-force subset enumeration, and its confidence intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sparsealign.evaluate.mbpp.passk import pass_at_k, pass_at_k_interval, per_problem_pass_at_k
from sparsealign.stats.intervals import wilson_interval


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that contain a correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_matches_enumeration_of_subsets(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n() -> None:
    # C(200, 100) overflows float64 intermediate products in the naive ratio; the product form stays exact
    exact = 1 - math.comb(150, 100) / math.comb(200, 100)
    assert pass_at_k(200, 50, 100) == pytest.approx(exact, rel=1e-12)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (3, 4, 1), (3, 1, 4), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_1_single_sample_uses_wilson() -> None:
    ci = pass_at_k_interval([1] * 500, [1] * 499 + [0], 1)
    assert ci.method == "wilson" and ci.estimate == pytest.approx(0.998)
    assert ci.low < 0.998 < ci.high <= 1.0
    # hand-computed Wilson bounds for 499/500 at z = 1.959964
    z, n, p = 1.959963984540054, 500, 0.998
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (ci.low, ci.high) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 10).low == 0.0 and wilson_interval(0, 10).high > 0
    assert wilson_interval(10, 10).high == 1.0 and wilson_interval(10, 10).low < 1


def test_pass_at_k_interval_bootstraps_over_problems() -> None:
    n = [10] * 40
    c = list(np.random.default_rng(3).integers(0, 11, size=40))
    ci = pass_at_k_interval(n, c, 5, seed=7)
    assert ci.method == "percentile-bootstrap"
    assert ci.estimate == pytest.approx(per_problem_pass_at_k(n, c, 5).mean())
    assert ci.low <= ci.estimate <= ci.high
    assert pass_at_k_interval(n, c, 5, seed=7) == ci
