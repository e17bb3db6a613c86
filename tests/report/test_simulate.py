"""Validation of the whole Findings pipeline on simulated studies (issue 20, item 5): a planted 3-point effect is
found, a null is not, and the generative model (`report.simulate`) reproduces the item correlations it was given.

The design is the default study preset's (`design_of`: DPO and RDPO, static and dynamic thresholds, sizes micro-xxs
/ -xs at the floor, micro-s at 0.13, micro-m at 0.635, the Holm family's 22 other primary contrasts as nulls) with
more generated tasks and seeds (POWERED): the default's 200 tasks x 3 seeds find a 3-point interaction ~6% of the
time.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import multivariate_normal, norm

from sparsealign.report.simulate import (
    Design,
    ItemModel,
    design_of,
    detection_rate,
    draw_items,
    latent_correlations,
)
from sparsealign.study.config import load_study_config

pytestmark = pytest.mark.slow

# The design at which a 3-point interaction is found in >= 80% of draws AND a null stays under 5%: 2000 generated
# tasks x 6 alignment seeds (measured: 95/100 effects, Wilson [0.888, 0.978]; 1600 x 6: 87/100, null 0/200).  More
# tasks alone do not do it: 3200 x 3 seeds finds 93/100 but calls 10/200 nulls an effect (Wilson [0.027, 0.090]) --
# with 3 seeds the seed-to-seed spread of the interaction is barely in the CI (a bootstrap over 3 seeds) and not in
# the sign-flip p at all, and at many tasks that spread is most of the error.  The default's 200 x 3: 3/50.
# Only the 0.9 target is simulated, to keep the test fast: the default's 6 other generated-pass@1 tests
# (interactions and dynamic - static at 0.8 / 0.95) join the Holm family as nulls, so its size (31 tests) is the
# default's -- conservatively, since planted interactions at 0.8 and 0.95 would in fact be rejected first.
POWERED = {"tasks": 2000, "seeds": 6, "targets": (0.9,)}


def powered(design: Design) -> Design:
    return design.with_(**POWERED, other_tests=design.other_tests + 6)


@pytest.fixture(scope="module")
def default_design() -> Design:
    return design_of(load_study_config(None, "default"))


def test_planted_interaction_is_found_at_the_powered_design(default_design: Design) -> None:
    """Aligned models lose 3 points of generated pass@1 more than the base under dynamic thresholds (micro-s and
    micro-m): the interaction at dynamic 0.9 is an "effect" in >= 80% of 50 draws -- at the POWERED design, 2000
    generated tasks x 6 seeds, not the default's 200 x 3 (there ~6%: the estimate's sd is 2.3 points against 0.8
    here, and the Holm family of 31 tests asks p < 0.05 / 31).  Otherwise the default preset (its sizes, methods,
    modes; the Holm family's other tests as nulls)."""
    design = powered(default_design)
    r = detection_rate(design, 0.03, 50, seed=1, contrast="interaction")
    print(f"planted 3 points, {design.tasks} tasks x {design.seeds} seeds: effect in {r.hits}/{r.draws} = "
          f"{r.rate:.2f}, Wilson 95% [{r.interval.low:.3f}, {r.interval.high:.3f}]; mean estimate "
          f"{np.mean(r.effects):+.4f}")
    assert r.draws >= 50
    assert r.rate >= 0.8
    assert abs(np.mean(r.effects) + 0.03) < 0.005  # the estimate is unbiased for the planted -3 points


def test_null_interaction_is_rarely_an_effect(default_design: Design) -> None:
    """No interaction planted, at the same POWERED design (the sparsity drops and the dynamic - static gap are the
    real ones): the interaction at dynamic 0.9 is an "effect" in <= 5% of 200 draws."""
    design = powered(default_design)
    r = detection_rate(design, 0.0, 200, seed=2, contrast="interaction")
    print(f"null, {design.tasks} tasks x {design.seeds} seeds: effect in {r.hits}/{r.draws} = {r.rate:.3f}, "
          f"Wilson 95% [{r.interval.low:.3f}, {r.interval.high:.3f}]")
    assert r.draws >= 200
    assert r.rate <= 0.05


def _tetrachoric(x: np.ndarray, y: np.ndarray) -> float:
    tx, ty = norm.ppf(1 - x.mean()), norm.ppf(1 - y.mean())
    both = float(np.mean(x * y))
    return brentq(lambda r: multivariate_normal([0, 0], [[1, r], [r, 1]]).cdf([-tx, -ty]) - both, -0.99, 0.999)


def test_the_model_reproduces_its_correlations_and_rates() -> None:
    """One large draw (20000 tasks, one size at micro-m's rate, no seed shifts): the tetrachoric correlations between
    cells match `latent_correlations` and each cell's pass rate its target; and at 200 tasks the discordances are
    those of the real micro-m items the defaults came from (base vs DPO dense 6-17.5%, DPO seeds 4-11.5%)."""
    model = ItemModel(seed_sd=0.0, seed_cell_sd=0.0)
    design = Design(tasks=20000, sizes=(("micro-m", 1e6, 0.635),), seeds=2, targets=(0.9,), other_tests=0)
    items = draw_items(design, np.random.default_rng(0), model=model)

    def cell(key: str) -> np.ndarray:
        return np.asarray(items[f"micro-m/{key}"]["generated_passed"])

    b, a0, a1 = cell("base/f1.000/dense/0.00"), cell("dpo/f1.000/dense/0.00"), cell("dpo/f1.000/s1/dense/0.00")
    bd, ad0, ad1 = (cell(f"{k}/dynamic/0.90") for k in ("base/f1.000", "dpo/f1.000", "dpo/f1.000/s1"))
    want = latent_correlations(model, "dynamic")
    got = {"base~aligned dense": _tetrachoric(b, a0), "seed~seed dense": _tetrachoric(a0, a1),
           "dense~dynamic same model": _tetrachoric(b, bd), "base~aligned dynamic": _tetrachoric(bd, ad0),
           "seed~seed dynamic": _tetrachoric(ad0, ad1)}
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=0.03), (k, got[k], v)
    assert b.mean() == pytest.approx(0.635, abs=0.01)
    assert bd.mean() == pytest.approx(0.635 * model.relative_rate["dynamic"], abs=0.01)
    assert cell("base/f1.000/static/0.90").mean() == pytest.approx(0.635 * model.relative_rate["static"], abs=0.01)
    # the real micro-m discordances (200 tasks): base vs DPO dense 0.175 / 0.06 / 0.10, between DPO seeds 0.115 /
    # 0.075 / 0.04; the model's expectation lies inside those ranges
    assert 0.06 <= np.mean(b != a0) <= 0.175
    assert 0.04 <= np.mean(a0 != a1) <= 0.115
