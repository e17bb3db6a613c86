"""Divergences, Bradley-Terry cross-entropy, preference metrics and the bootstrap, against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsealign.evaluate.preference.divergence import (
    bernoulli_js,
    bernoulli_kl,
    bt_cross_entropy,
    human_preference_prob,
)
from sparsealign.evaluate.preference.metrics import (
    flip_metrics,
    kl_estimate,
    length_metrics,
    preference_metrics,
)
from sparsealign.stats.intervals import bootstrap_ci, paired_bootstrap

LN2 = math.log(2)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_js_by_hand() -> None:
    p, q = 0.9, 0.4
    m = (p + q) / 2
    kl_pm = p * math.log(p / m) + (1 - p) * math.log((1 - p) / (1 - m))
    kl_qm = q * math.log(q / m) + (1 - q) * math.log((1 - q) / (1 - m))
    assert bernoulli_js(p, q) == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm)
    assert bernoulli_kl(p, q) == pytest.approx(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    # hard label against the model: p_h = 1, p_m = 0.7 -> 0.5 ln(1/0.85) + 0.5 [0.7 ln(0.7/0.85) + 0.3 ln(0.3/0.15)]
    expected = 0.5 * math.log(1 / 0.85) + 0.5 * (0.7 * math.log(0.7 / 0.85) + 0.3 * math.log(2))
    assert bernoulli_js(1.0, 0.7) == pytest.approx(expected)


def test_js_is_bounded_symmetric_and_zero_when_equal() -> None:
    rng = np.random.default_rng(0)
    p, q = rng.uniform(size=1000), rng.uniform(size=1000)
    js = bernoulli_js(p, q)
    assert np.all(js >= 0) and np.all(js <= LN2 + 1e-12)
    assert np.allclose(js, bernoulli_js(q, p))
    assert np.all(bernoulli_js(p, p) == 0)
    assert bernoulli_js(1.0, 0.0) == pytest.approx(LN2)  # the bound is attained by opposite certainties
    assert bernoulli_js(0.0, 0.0) == 0.0


def test_bt_cross_entropy_by_hand_and_stable() -> None:
    p_h, m = 0.8, 0.5
    expected = -(p_h * math.log(_sig(m)) + (1 - p_h) * math.log(1 - _sig(m)))
    assert bt_cross_entropy(p_h, m) == pytest.approx(expected)
    assert bt_cross_entropy(1.0, 2.0) == pytest.approx(-math.log(_sig(2.0)))
    assert bt_cross_entropy(1.0, -1000.0) == pytest.approx(1000.0)  # finite where sigma underflows
    assert bt_cross_entropy(0.0, 1000.0) == pytest.approx(1000.0)


def test_human_preference_prob_from_scores() -> None:
    assert human_preference_prob(None, None) == 1.0
    assert human_preference_prob(8.0, 6.0, tau=2.0) == pytest.approx(_sig(1.0))
    with pytest.raises(ValueError):
        human_preference_prob(1.0, 0.0, tau=0.0)


def test_preference_metrics_by_hand() -> None:
    r_w, r_l = [1.0, 0.2, -0.5, 0.3], [0.0, 0.4, -0.5, -0.7]  # margins 1.0, -0.2, 0.0, 1.0
    ph = [1.0, 0.6, 0.5, 1.0]
    out = preference_metrics(r_w, r_l, ph, logp_chosen=[-5, -9, -3, -4], logp_rejected=[-6, -8, -3, -7], seed=1)
    assert out["reward_accuracy"]["estimate"] == pytest.approx(0.5)  # the tie counts as wrong
    assert out["mean_margin"]["estimate"] == pytest.approx(0.45)
    margins = [1.0, -0.2, 0.0, 1.0]
    js = [float(bernoulli_js(p, _sig(m))) for p, m in zip(ph, margins, strict=True)]
    ce = [-(p * math.log(_sig(m)) + (1 - p) * math.log(1 - _sig(m))) for p, m in zip(ph, margins, strict=True)]
    assert out["preference_divergence"]["estimate"] == pytest.approx(sum(js) / 4)
    assert out["bt_cross_entropy"]["estimate"] == pytest.approx(sum(ce) / 4)
    assert out["ranking_accuracy"]["estimate"] == pytest.approx(0.5)  # -5>-6 yes, -9>-8 no, tie no, -4>-7 yes
    for name in ("reward_accuracy", "mean_margin", "preference_divergence", "bt_cross_entropy"):
        assert out[name]["low"] <= out[name]["estimate"] <= out[name]["high"]
    hard = preference_metrics(r_w, r_l)
    assert hard["mean_human_prob"]["estimate"] == 1.0 and "ranking_accuracy" not in hard
    with pytest.raises(ValueError):
        preference_metrics(r_w, r_l, [1.5, 1, 1, 1])


def test_flip_metrics() -> None:
    d = np.array([1.0, -2.0, 0.5, 3.0])
    same = flip_metrics(d, d.copy())
    assert same["flip_rate"]["estimate"] == 0.0 and same["flip_divergence"]["estimate"] == 0.0
    out = flip_metrics(d, np.array([-1.0, -2.0, 0.5, 0.0]))
    assert out["flip_rate"]["estimate"] == pytest.approx(0.5)
    assert out["margin_shift"]["estimate"] == pytest.approx((-2.0 + 0 + 0 - 3.0) / 4)
    assert kl_estimate([-3.0, -4.0], [-5.0, -4.5])["estimate"] == pytest.approx(1.25)


def test_bootstrap_is_deterministic_by_seed_and_contains_estimate() -> None:
    x = np.random.default_rng(5).normal(size=300)
    a, b = bootstrap_ci(x, seed=11), bootstrap_ci(x, seed=11)
    assert a == b and a.low < a.estimate < a.high and a.estimate == pytest.approx(x.mean())
    assert bootstrap_ci(x, seed=12) != a
    # the interval is roughly mean +- 1.96 sd/sqrt(n)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert a.high - a.low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_bootstrap_shares_indices() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=200)
    shifted = base + 0.1  # the same items shifted: the paired difference has zero variance
    out = paired_bootstrap({"small": base, "large": shifted, "noisy": rng.normal(size=200)}, seed=3)
    diff = out["differences"]["large - small"]
    assert diff.estimate == pytest.approx(0.1) and diff.low == pytest.approx(0.1) and diff.high == pytest.approx(0.1)
    assert out["differences"]["noisy - small"].high - out["differences"]["noisy - small"].low > 0.1
    # each system's own interval equals the unpaired bootstrap with the same seed
    own, alone = out["systems"]["small"], bootstrap_ci(base, seed=3)
    assert (own.estimate, own.low, own.high) == pytest.approx((alone.estimate, alone.low, alone.high), abs=1e-12)
    with pytest.raises(ValueError):
        paired_bootstrap({"a": [1.0, 2.0], "b": [1.0]})


def test_length_metrics_against_their_definitions():
    n_chosen = np.array([10, 12, 30, 5, 7, 9, 4, 8])
    n_rejected = np.array([5, 6, 10, 9, 8, 9, 20, 2])  # chosen longer on 0,1,2,7; shorter on 3,4,6; tie on 5
    longer_wins = np.sign(n_chosen - n_rejected)  # a model that just prefers the longer response
    out = length_metrics(longer_wins.astype(float), n_chosen, n_rejected, n_resamples=200)
    assert out["length_baseline_accuracy"]["estimate"] == pytest.approx((4 + 0.5) / 8)
    assert out["length_agreement"]["estimate"] == 1.0
    assert out["length_controlled_accuracy"]["estimate"] == pytest.approx(0.5)  # right on one stratum only
    perfect = length_metrics(np.ones(8), n_chosen, n_rejected, n_resamples=200)
    assert perfect["length_controlled_accuracy"]["estimate"] == pytest.approx(1.0)
    assert perfect["length_agreement"]["estimate"] == pytest.approx(4 / 7)
    # right on 3 of the 4 chosen-longer pairs and 1 of the 3 chosen-shorter ones: (3/4 + 1/3) / 2
    mixed = np.array([1, 1, 1, 1, -1, 1, -1, -1], dtype=float)
    got = length_metrics(mixed, n_chosen, n_rejected, n_resamples=200)["length_controlled_accuracy"]
    assert got["estimate"] == pytest.approx((3 / 4 + 1 / 3) / 2) and got["low"] <= got["estimate"] <= got["high"]


def test_the_fitted_margin_scale_is_the_bradley_terry_maximum_likelihood():
    """Labels drawn from sigma(m / 0.05): the fit recovers the scale, and the mean cross-entropy at the fit is no
    larger than at nearby scales (the definition of the maximum)."""
    from sparsealign.evaluate.preference.divergence import bt_cross_entropy
    from sparsealign.evaluate.preference.metrics import fit_margin_scale

    rng = np.random.default_rng(0)
    m = rng.normal(0, 0.05, 20000)
    labels = (rng.random(m.size) < 1 / (1 + np.exp(-m / 0.05))).astype(float)
    margins = np.where(labels == 1, m, -m)  # as (chosen - rejected) with p_h = 1
    s = fit_margin_scale(margins)
    assert s == pytest.approx(0.05, rel=0.05)
    loss = [float(np.mean(bt_cross_entropy(1.0, margins / x))) for x in (s * 0.9, s, s * 1.1)]
    assert loss[1] <= min(loss[0], loss[2])


def test_calibrated_divergence_fits_on_even_pairs_scores_odd_ones_and_can_move():
    """At the raw scale a margin of ~0.01 reads as no preference (JS ~ 0.2158 whatever the model); calibrated, a
    model with signal scores below that, a given (dense) scale is used as is, and shrinking margins (what
    sparsity can do) moves the divergence up."""
    from sparsealign.evaluate.preference.divergence import bernoulli_js, sigmoid
    from sparsealign.evaluate.preference.metrics import calibrated_divergence

    rng = np.random.default_rng(1)
    margins = rng.normal(0.01, 0.01, 2000)  # 84% ranked right, tiny units
    raw = float(np.mean(bernoulli_js(1.0, sigmoid(margins))))
    assert raw == pytest.approx(0.2158, abs=0.002)
    m, js, scale = calibrated_divergence(margins, n_resamples=200)
    assert len(js) == 1000 and m["estimate"] == pytest.approx(float(np.mean(js)))
    assert js == pytest.approx(bernoulli_js(1.0, sigmoid(margins[1::2] / scale)))
    assert m["estimate"] < raw - 0.05
    shrunk, _, same = calibrated_divergence(margins * 0.3, scale=scale, n_resamples=200)
    assert same == scale and shrunk["estimate"] > m["estimate"] + 0.03
