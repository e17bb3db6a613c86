"""Critical sparsity read along the realized-sparsity curve, against hand-computed values, and its bootstrap CI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sparsealign.report import scaling
from sparsealign.report.items import ItemStore
from sparsealign.stats.critical import critical_sparsity, critical_sparsity_interval

TOL = 0.01
START = (0.40, 0.0)  # the dense model at its natural sparsity


@pytest.mark.parametrize(("curve", "start", "expected"), [
    # passes at 0.78 and 0.88, fails at 0.93: 0.88 + 0.05 * (-0.006 + 0.01) / (-0.006 + 0.026) = 0.89
    ([(0.78, -0.004), (0.88, -0.006), (0.93, -0.026)], START, 0.89),
    # the first target fails: from the dense start, 0.40 + 0.40 * 0.01 / 0.02 = 0.60
    ([(0.80, -0.02), (0.90, -0.03)], START, 0.60),
    ([(0.80, -0.02), (0.90, -0.03)], None, None),  # ... and without a start nothing is known to pass
    ([(0.78, -0.004), (0.88, -0.03), (0.93, 0.0)], START, 0.78 + 0.10 * 0.006 / 0.026),  # no credit for recovery
    ([(0.78, 0.0), (0.88, -0.01), (0.93, -0.005)], START, 0.93),  # all within (inclusive): the last, no extrapolation
    ([(0.78, -0.004), (math.nan, -0.001), (0.93, -0.005)], START, 0.78),  # a gap: never interpolated across
    ([(0.78, -0.004), (0.88, math.nan), (0.93, -0.005)], None, 0.78),
])
def test_critical_sparsity_by_hand(curve, start, expected):
    got = critical_sparsity(curve, tolerance=TOL, start=start)
    assert got == (None if expected is None else pytest.approx(expected))


def test_constant_drops_give_a_point_interval():
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(2, 50))  # two seeds, continuous per-item metric
    sparse = [dense - 0.004, dense - 0.006, dense - 0.026]
    crit = critical_sparsity_interval([0.78, 0.88, 0.93], sparse, dense, tolerance=TOL, start=0.40, n_resamples=200)
    assert crit.estimate == pytest.approx(0.89) and crit.low == pytest.approx(0.89) and crit.high == pytest.approx(0.89)
    assert crit.drops == pytest.approx((-0.004, -0.006, -0.026)) and not crit.within


def test_noisy_drops_give_an_interval_around_the_estimate():
    rng = np.random.default_rng(1)
    dense = (rng.random(400) < 0.6).astype(float)
    flip = [rng.random(400) < p for p in (0.005, 0.02, 0.08)]  # more items flipped to 0 at higher sparsity
    sparse = [np.where(f, 0.0, dense) for f in flip]
    crit = critical_sparsity_interval([0.79, 0.88, 0.94], sparse, dense, tolerance=TOL, start=0.40, n_resamples=500)
    assert crit.low <= crit.estimate <= crit.high and crit.low < crit.high
    assert crit.low >= 0.40 and crit.high <= 0.94


def test_a_failing_first_target_without_start_is_none_in_the_ci():
    dense = np.ones(30)
    sparse = [np.r_[np.zeros(10), np.ones(20)]]  # -1/3 at the only target
    crit = critical_sparsity_interval([0.8], sparse, dense, tolerance=TOL, n_resamples=100)
    assert crit.estimate is None and crit.low is None and crit.high is None


def test_table_reads_the_curve_at_realized_sparsity():
    rng = np.random.default_rng(2)
    dense = rng.normal(size=60)
    items = {"micro-s/dpo/1.00/dense/0.00": {"hh_margin": dense.tolist()}}
    realized, rows = {0.8: 0.78, 0.9: 0.88, 0.95: 0.93}, []
    for target, drop in [(0.8, 0.004), (0.9, 0.006), (0.95, 0.026)]:
        items[f"micro-s/dpo/1.00/static/{target:.2f}"] = {"hh_margin": (dense - drop).tolist()}
        rows.append({"size": "micro-s", "method": "dpo", "subset_fraction": 1.0, "mode": "static",
                     "target_sparsity": target, "dataset": "hh", "metric": "realized_sparsity",
                     "value": realized[target]})
    rows.append({"size": "micro-s", "method": "dpo", "subset_fraction": 1.0, "mode": "dense", "target_sparsity": 0.0,
                 "dataset": "all", "metric": "realized_sparsity", "value": 0.40})
    store = ItemStore(items)
    table = scaling.critical_sparsity_table(store, dataset="hh", metric="margin", tolerance=TOL,
                                            realized=pd.DataFrame(rows), n_boot=100)
    row = table.iloc[0]
    assert row["critical_sparsity"] == pytest.approx(0.89) and row["ci_low"] == pytest.approx(0.89)
    assert "0.9 (realized 0.880)" in row["note"]
    # without realized sparsity the same curve is read at the targets: 0.9 + 0.05 * 0.004 / 0.02 = 0.91
    bare = scaling.critical_sparsity_table(store, dataset="hh", metric="margin", tolerance=TOL, n_boot=100)
    assert bare.iloc[0]["critical_sparsity"] == pytest.approx(0.91)
