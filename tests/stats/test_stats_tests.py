"""Hypothesis tests and intervals against hand-computed values: exact McNemar, Holm, Wilson, sign-flip, t slopes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from sparsealign.stats.intervals import wilson_interval
from sparsealign.stats.multiple import holm
from sparsealign.stats.paired import mcnemar_exact, paired_difference, sign_flip_p
from sparsealign.stats.slopes import slope_interval


def _pairs(only_a: int, only_b: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize(("only_a", "only_b", "expected"), [
    (8, 1, 2 * (1 + 9) / 2**9),  # P(X <= 1 | n=9, 1/2) = (C(9,0) + C(9,1)) / 512, doubled: 0.0390625
    (5, 0, 2 / 2**5),  # all 5 discordant pairs one way: 2 * (1/2)^5 = 0.0625
    (3, 3, 1.0),  # a perfectly balanced split
    (0, 0, 1.0),  # no discordant pair: no evidence at all
    (2, 7, 2 * (1 + 9 + 36) / 2**9),  # symmetric in direction: P(X <= 2 | n=9) doubled = 0.1796875
])
def test_mcnemar_exact_matches_the_binomial_by_hand(only_a, only_b, expected):
    a, b = _pairs(only_a, only_b, both=11, neither=4)  # concordant pairs must not matter
    assert mcnemar_exact(a, b) == pytest.approx(expected, abs=1e-12)
    assert mcnemar_exact(b, a) == pytest.approx(expected, abs=1e-12)


def test_holm_against_hand_computed_values():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # 0.4*2 = 0.8, then max(0.8, 0.5*1)
    assert holm([0.3, 0.6, 0.9]) == pytest.approx([0.9, 1.0, 1.0])  # capped at 1
    out = holm([0.01, math.nan, 0.02])  # untestable contrasts stay NaN and are not counted in m
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_wilson_does_not_collapse_at_the_bounds():
    z2 = stats.norm.ppf(0.975) ** 2
    ci = wilson_interval(13, 13)  # the percentile bootstrap gives [1, 1] here
    assert ci.high == 1.0 and ci.low == pytest.approx(13 / (13 + z2))  # Wilson's lower end at p = 1: n / (n + z^2)
    ci = wilson_interval(0, 500)
    assert ci.low == 0.0 and ci.high == pytest.approx(z2 / (500 + z2))
    # 30/100 by hand: centre (0.3 + z2/200) / (1 + z2/100) = 0.30740, half 1.96 * sqrt(0.0021 + z2/40000) / 1.03842
    # = 0.08845 -> [0.2189, 0.3958]
    ci = wilson_interval(30, 100)
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.2189, 0.3958)


def test_sign_flip_p_is_the_exact_enumeration_for_few_items():
    d = np.array([0.3, 0.1, -0.05, 0.2, 0.4, 0.15, -0.1, 0.25])
    obs = abs(d.mean())
    flips = [abs((d * np.array(s)).mean()) for s in itertools.product([1, -1], repeat=len(d))]
    exact = np.mean([f >= obs - 1e-12 for f in flips])  # 2^8 = 256 sign patterns
    assert sign_flip_p(d) == pytest.approx(exact)
    assert sign_flip_p(np.zeros(5)) == 1.0


def test_paired_difference_chooses_mcnemar_for_one_seed_pass_fail():
    a, b = _pairs(8, 1, both=20, neither=21)
    d = paired_difference(a, b, n_resamples=2000, seed=0)
    assert d.test == "mcnemar-exact" and d.p == pytest.approx(0.0390625)
    assert d.estimate == pytest.approx(7 / 50) and d.n == 50 and d.seeds == 1
    assert 0 < d.low < d.estimate < d.high  # the paired CI excludes 0 here


def test_crossed_bootstrap_carries_seed_spread():
    """Items identical within a seed, seeds differing: an items-only bootstrap would give a zero-width CI."""
    items = 200
    a = np.array([[0.10] * items, [0.30] * items, [0.20] * items, [0.0] * items])  # 4 seeds of an aligned model
    base = np.zeros(items)  # seedless: broadcast over a's seeds
    d = paired_difference(a, base, n_resamples=4000, seed=1)
    assert d.seeds == 4 and d.test == "sign-flip" and d.estimate == pytest.approx(0.15)
    # the seed-mean's bootstrap spread: sd of 4 seed means / sqrt(4) (plug-in), about 0.056 -> CI ~ +-0.11
    assert d.high - d.low > 0.15
    one_seed = paired_difference(a[:1], base, n_resamples=4000, seed=1)
    assert one_seed.high - one_seed.low == pytest.approx(0.0)
    with pytest.raises(ValueError, match="seeds"):
        paired_difference(a, a[:2])
    with pytest.raises(ValueError, match="same items"):
        paired_difference(a, np.zeros(items + 1))


def test_item_bootstrap_width_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.6).astype(float)
    b = (rng.random(400) < 0.5).astype(float)
    d = paired_difference(a, b, n_resamples=4000, seed=0)
    se = np.std(a - b, ddof=0) / math.sqrt(400)
    assert d.low == pytest.approx(d.estimate - 1.96 * se, abs=0.01)
    assert d.high == pytest.approx(d.estimate + 1.96 * se, abs=0.01)


def test_slope_needs_four_sizes_and_uses_t_n_minus_2():
    assert slope_interval([1e5, 1e6, 1e7], [0.1, 0.2, 0.35]) is None  # 3 sizes: 1 dof, no slope
    params = np.array([1e4, 1e5, 1e6, 1e7, 1e8])
    y = 0.1 + 0.05 * np.log10(params) + np.array([0.01, -0.02, 0.015, -0.005, 0.0])
    fit = slope_interval(params, y)
    ref = stats.linregress(np.log10(params), y)
    half = stats.t.ppf(0.975, 3) * ref.stderr  # t with n - 2 = 3 degrees of freedom
    assert fit.slope == pytest.approx(ref.slope) and fit.sizes == 5
    assert (fit.low, fit.high) == pytest.approx((ref.slope - half, ref.slope + half))
    assert fit.p == pytest.approx(ref.pvalue) and fit.low < 0.05 < fit.high
