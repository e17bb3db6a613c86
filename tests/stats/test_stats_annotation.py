"""Annotation saving: DPO against itself is 1 by construction; savings follow the log-pairs interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from sparsealign.stats.annotation import PairsNeeded, annotation_savings, pairs_needed

N = 400
BASE = np.random.default_rng(2).random(N)


def _items(curve: dict[tuple[str, float], float]) -> dict[tuple[str, float], np.ndarray]:
    # nested successes (item i passes when BASE[i] < p): a monotone paired structure, as with nested subsets
    return {k: (p > BASE).astype(float) for k, p in curve.items()}


def test_pairs_needed_interpolates_on_log_pairs():
    need = pairs_needed([100, 900], [0.55, 0.65], 0.60)  # half-way in accuracy -> geometric mean of the pairs
    assert need.status == "reached" and need.pairs == pytest.approx(300.0)
    assert pairs_needed([100, 300, 900], [0.7, 0.8, 0.9], 0.6) == PairsNeeded(100.0, "reached_at_smallest")
    assert pairs_needed([100, 300, 900], [0.5, 0.55, 0.58], 0.6) == PairsNeeded(None, "not_reached")


def test_dpo_self_saving_is_one_even_when_its_curve_crosses_early():
    """The old definition (all pairs / pairs needed) gave DPO 9x against itself when its noisy curve already reached
    its all-pairs accuracy at the smallest subset; the saving must be exactly 1 there, and in every replicate."""
    curve = {("dpo", 100): 0.62, ("dpo", 300): 0.58, ("dpo", 900): 0.60,
             ("rdpo", 100): 0.50, ("rdpo", 300): 0.55, ("rdpo", 900): 0.70}
    out = {s.method: s for s in annotation_savings(_items(curve), reference="dpo", n_resamples=500, seed=0)}
    dpo = out["dpo"]
    assert dpo.status == "reached_at_smallest"  # the situation that used to give 9.0
    assert dpo.saving == 1.0 and (dpo.ci_low, dpo.ci_high) == (1.0, 1.0) and dpo.p == 1.0
    # and on a clean curve too
    clean = {("dpo", 100): 0.55, ("dpo", 300): 0.60, ("dpo", 900): 0.65}
    (only,) = annotation_savings(_items(clean), reference="dpo", n_resamples=200, seed=3)
    assert only.method == "dpo" and only.saving == 1.0 and (only.ci_low, only.ci_high) == (1.0, 1.0)


def test_saving_against_dpo_and_methods_without_a_curve():
    # DPO 0.55 / 0.60 / 0.65 at 100 / 300 / 900 pairs; RDPO reaches 0.65 at 300 (3x); ORPO never; SimPO has
    # one subset only (no curve: not reported)
    curve = {("dpo", 100): 0.55, ("dpo", 300): 0.60, ("dpo", 900): 0.65, ("rdpo", 100): 0.60,
             ("rdpo", 300): 0.65, ("rdpo", 900): 0.70, ("orpo", 100): 0.50, ("orpo", 300): 0.52,
             ("orpo", 900): 0.55, ("simpo", 900): 0.9}
    items = _items(curve)
    out = {s.method: s for s in annotation_savings(items, reference="dpo", n_resamples=400, seed=0)}
    assert set(out) == {"dpo", "orpo", "rdpo"}  # simpo: one subset, no saving reported
    target = items[("dpo", 900)].mean()
    ref = pairs_needed([100, 300, 900], [items[("dpo", n)].mean() for n in (100, 300, 900)], target)
    got = pairs_needed([100, 300, 900], [items[("rdpo", n)].mean() for n in (100, 300, 900)], target)
    rdpo = out["rdpo"]
    assert rdpo.saving == pytest.approx(ref.pairs / got.pairs) and rdpo.saving == pytest.approx(3.0, rel=0.1)
    assert rdpo.ci_low <= rdpo.saving <= rdpo.ci_high and rdpo.reached_fraction == 1.0 and rdpo.subsets == 3
    assert rdpo.ci_low > 1.0 and rdpo.p < 0.05 and rdpo.n == N
    orpo = out["orpo"]
    assert orpo.status == "not_reached" and orpo.saving is None and orpo.ci_high == 0.0
    assert orpo.reached_fraction == 0.0


def test_seeds_are_resampled_with_the_items():
    curve = {("dpo", 100): 0.55, ("dpo", 300): 0.60, ("dpo", 900): 0.65, ("rdpo", 100): 0.60,
             ("rdpo", 300): 0.65, ("rdpo", 900): 0.70}
    one = {k: v[None, :] for k, v in _items(curve).items()}
    # three seeds of RDPO that disagree about where it reaches the target widen its CI; DPO stays exactly 1
    seeded = dict(one)
    for n in (100, 300, 900):
        seeded[("rdpo", n)] = np.stack([(curve[("rdpo", n)] + shift > BASE).astype(float)
                                        for shift in (-0.05, 0.0, 0.05)])
        seeded[("dpo", n)] = np.repeat(one[("dpo", n)], 3, axis=0)
    a = {s.method: s for s in annotation_savings(one, reference="dpo", n_resamples=400, seed=0)}
    b = {s.method: s for s in annotation_savings(seeded, reference="dpo", n_resamples=400, seed=0)}
    assert b["dpo"].saving == 1.0 and (b["dpo"].ci_low, b["dpo"].ci_high) == (1.0, 1.0)
    assert b["rdpo"].ci_high - b["rdpo"].ci_low > a["rdpo"].ci_high - a["rdpo"].ci_low
