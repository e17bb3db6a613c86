"""Scaling analysis: fits, paired bootstrap, critical sparsity and annotation efficiency against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sparsealign.report import scaling


def test_fit_recovers_exact_power_law_and_matches_linregress():
    params = np.array([1e5, 3e5, 1e6, 1e7])
    fit = scaling.fit_log_params(params, 2.0 - 0.3 * np.log10(params))
    assert fit.slope == pytest.approx(-0.3) and fit.intercept == pytest.approx(2.0) and fit.r2 == pytest.approx(1)
    noisy = 1.0 + 0.5 * np.log10(params) + np.array([0.1, -0.2, 0.05, 0.02])
    ref = stats.linregress(np.log10(params), noisy)
    got = scaling.fit_log_params(params, noisy)
    assert (got.slope, got.intercept, got.r2, got.slope_stderr) == pytest.approx(
        (ref.slope, ref.intercept, ref.rvalue**2, ref.stderr))


def test_logit_scale_fit_and_clipping():
    params = np.array([1e4, 1e5, 1e6])
    acc = 1 / (1 + np.exp(-(-3 + 1.0 * np.log10(params))))  # logit(acc) = -3 + log10 N
    fit = scaling.fit_log_params(params, acc, scale="logit")
    assert fit.slope == pytest.approx(1.0) and fit.intercept == pytest.approx(-3.0)
    assert fit.predict([1e5])[0] == pytest.approx(acc[1])
    # 0 and 1 are clipped to eps instead of producing infinities
    assert np.isfinite(scaling.fit_log_params(params, [0.0, 0.5, 1.0], scale="logit").slope)
    assert scaling.logit([0.0], eps=1e-3)[0] == pytest.approx(math.log(1e-3 / (1 - 1e-3)))
    assert math.isnan(scaling.fit_log_params([1e5, 1e5], [0.1, 0.2]).slope)  # one size: no fit


def test_paired_bootstrap_uses_the_same_items_for_every_key():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.5
    # b equals a on every item: a paired bootstrap gives a zero-width CI for the difference, an unpaired one would not
    diff, lo, hi = scaling.paired_difference(a, a.copy(), n_boot=500, seed=1)
    assert diff == lo == hi == 0.0
    # b = a plus 30 extra successes: the paired CI of the difference is tight around 0.1
    b = a.copy()
    b[np.flatnonzero(~a)[:30]] = True
    diff, lo, hi = scaling.paired_difference(b, a, n_boot=500, seed=1)
    assert diff == pytest.approx(0.1) and 0.06 < lo < 0.1 < hi < 0.14
    # means are replicated with one index matrix: the replicate means of b are never below those of a
    reps = scaling.bootstrap_means({"a": a, "b": b}, n_boot=200, seed=3)
    assert np.all(reps["b"] >= reps["a"])
    out = scaling.paired_bootstrap({"a": a}, n_boot=2000, seed=0)
    mean, lo, hi = out["a"]
    se = math.sqrt(mean * (1 - mean) / len(a))  # normal approximation of the binomial mean
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.01) and hi == pytest.approx(mean + 1.96 * se, abs=0.01)
    with pytest.raises(ValueError, match="same items"):
        scaling.bootstrap_means({"a": [1, 0], "b": [1]})


def test_bootstrap_slope_ci_contains_the_true_slope():
    rng = np.random.default_rng(1)
    params = {"s": 1e5, "m": 1e6, "l": 1e7}
    items = {k: rng.random(400) < 0.2 + 0.2 * i for i, k in enumerate(params)}  # +0.2 per decade
    fit, lo, hi = scaling.bootstrap_slope(params, items, n_boot=300, seed=0)
    assert lo < 0.2 < hi and lo < fit.slope < hi


@pytest.mark.parametrize(("values", "expected"), [
    ([0.50, 0.495, 0.49, 0.40], 0.7),    # 0.49 is within 1 point of 0.50 (tolerance inclusive)
    ([0.48, 0.50, 0.50, 0.50], 0.0),     # the first sparsity already drops
    ([0.50, 0.45, 0.50, 0.50], 0.3),     # a later recovery does not count ("stays within")
    ([0.60, 0.55, 0.52, 0.51], 0.9),     # above dense is within
])
def test_critical_sparsity(values, expected):
    assert scaling.critical_sparsity([0.3, 0.5, 0.7, 0.9], values, 0.50) == expected


def test_pairs_needed_interpolates_on_log_pairs():
    # target 0.6 half-way between 0.55 (100 pairs) and 0.65 (900 pairs) in accuracy -> geometric mean: 300
    need = scaling.pairs_needed([100, 900], [0.55, 0.65], 0.60)
    assert need.status == "reached" and need.pairs == pytest.approx(300.0)
    assert scaling.pairs_needed([100, 300, 900], [0.7, 0.8, 0.9], 0.6) == scaling.PairsNeeded(100.0,
                                                                                         "reached_at_smallest")
    assert scaling.pairs_needed([100, 300, 900], [0.5, 0.55, 0.58], 0.6) == scaling.PairsNeeded(None, "not_reached")


def test_annotation_efficiency_saving_and_not_reached():
    n = 400
    rng = np.random.default_rng(2)
    base = rng.random(n)
    # DPO: 0.55 / 0.60 / 0.65 with 100 / 300 / 900 pairs; RDPO reaches 0.65 at 300 pairs (3x saving);
    # ORPO never reaches it
    curve = {("dpo", 100): 0.55, ("dpo", 300): 0.60, ("dpo", 900): 0.65, ("rdpo", 100): 0.60,
             ("rdpo", 300): 0.65, ("rdpo", 900): 0.70, ("orpo", 100): 0.50, ("orpo", 300): 0.52, ("orpo", 900): 0.55}
    items = {k: base < p for k, p in curve.items()}  # nested successes: a monotone paired structure
    out = {s.method: s for s in scaling.annotation_efficiency(items, n_boot=300, seed=0)}
    assert out["dpo"].saving == pytest.approx(1.0, rel=0.02)
    rdpo = out["rdpo"]
    target = items[("dpo", 900)].mean()
    expect = scaling.pairs_needed([100, 300, 900], [items[("rdpo", m)].mean() for m in (100, 300, 900)], target)
    assert rdpo.status == "reached" and rdpo.pairs_needed == pytest.approx(expect.pairs)
    assert rdpo.saving == pytest.approx(900 / expect.pairs) and rdpo.saving == pytest.approx(3.0, rel=0.1)
    assert rdpo.ci_low <= rdpo.saving <= rdpo.ci_high and rdpo.reached_fraction == 1.0
    orpo = out["orpo"]
    assert orpo.status == "not_reached" and orpo.saving is None and orpo.pairs_needed is None
    assert orpo.reached_fraction == 0.0 and orpo.ci_high == 0.0


def _table() -> pd.DataFrame:
    rows = []
    for size, params in [("a", 1e5), ("b", 1e6)]:
        for method, lift in [("base", 0.0), ("dpo", 0.1)]:
            rows.append(dict(size=size, params=params, method=method, mode="dense", target_sparsity=0.0,
                             metric="pass@1", value=0.3 + lift, dataset="generated", subset_fraction=1.0))
            for mode, drop in [("static", 0.1), ("dynamic", 0.0)]:
                for s in (0.5, 0.9):
                    rows.append(dict(size=size, params=params, method=method, mode=mode, target_sparsity=s,
                                     metric="pass@1", value=0.3 + lift - drop * (s > 0.6), dataset="generated",
                                     subset_fraction=1.0))
    return pd.DataFrame(rows)


def test_tidy_tables():
    df = _table()
    crit = scaling.critical_sparsity_table(df, metric="pass@1")
    assert set(crit.loc[crit["mode"] == "dynamic", "critical_sparsity"]) == {0.9}
    assert set(crit.loc[crit["mode"] == "static", "critical_sparsity"]) == {0.5}
    gain = scaling.alignment_gain_table(df, metric="pass@1")
    assert np.allclose(gain["dpo"], 0.1)
    svd = scaling.static_vs_dynamic_table(df, metric="pass@1")
    assert np.allclose(svd.loc[svd["target_sparsity"] == 0.9, "dynamic_minus_static"], 0.1)
    assert np.allclose(svd.loc[svd["target_sparsity"] == 0.5, "dynamic_minus_static"], 0.0)
    fits = scaling.scaling_fit_table(df, metrics=["pass@1"])
    assert set(fits["scale"]) == {"logit"} and np.allclose(fits["slope"], 0.0)
