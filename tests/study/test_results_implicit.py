"""`relative_to_base`: a reference method's implicit reward beta*log(pi/pi_base) under every setting, from the
summed log-prob ratios each eval cell records, against the formula; and the interaction on it in the Findings."""

from __future__ import annotations

import numpy as np

from sparsealign.report.findings import compute_findings
from sparsealign.report.items import ItemStore
from sparsealign.study.config import ContrastConfig, ReportConfig
from sparsealign.study.results import relative_to_base


def _key(method: str, mode: str = "dense", target: float = 0.0, seed: str = "") -> str:
    return f"smollm2/{method}/f1.000{seed}/{mode}/{target:.2f}"


def test_the_implicit_margin_is_beta_times_the_difference_of_log_ratios_at_the_same_setting() -> None:
    rng = np.random.default_rng(0)
    lr = {k: rng.normal(size=20).tolist() for k in (_key("base"), _key("dpo"), _key("base", "static", 0.5),
                                                     _key("dpo", "static", 0.5), _key("dpo", "dynamic", 0.5))}
    items = {k: {"hh_logratio": v, "hh_correct": [1.0] * 20} for k, v in lr.items()}
    out = relative_to_base(items, {_key("dpo"): 0.1, _key("dpo", "static", 0.5): 0.1,
                                   _key("dpo", "dynamic", 0.5): 0.1})
    for setting in (("dense", 0.0), ("static", 0.5)):
        got = np.array(out[_key("dpo", *setting)]["hh_implicit_margin"])
        want = 0.1 * (np.array(lr[_key("dpo", *setting)]) - np.array(lr[_key("base", *setting)]))
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert out[_key("dpo", *setting)]["hh_implicit_correct"] == [float(x > 0) for x in want]
    # no base cell at dynamic 0.5: nothing is made up; the base model gets no implicit arrays; inputs untouched
    assert "hh_implicit_margin" not in out[_key("dpo", "dynamic", 0.5)]
    assert "hh_implicit_margin" not in out[_key("base")] and "hh_implicit_margin" not in items[_key("dpo")]


def test_interaction_on_the_implicit_reward_is_aligned_sparse_minus_aligned_dense() -> None:
    """The base model's implicit reward relative to itself is 0 everywhere, so (aligned - base)_sparse -
    (aligned - base)_dense on it is the aligned model's accuracy sparse minus dense; a planted 10-point loss under
    sparsity is found; sparsity that flips 10% of the pairs either way (no net loss) is not called an effect."""
    rng = np.random.default_rng(1)
    n = 600
    for drop, verdict in ((0.10, "effect"), (0.0, "inconclusive")):
        dense = rng.random(n) < 0.65
        if drop:
            sparse = dense & (rng.random(n) >= drop / 0.65)  # lose `drop` of the right answers under sparsity
        else:
            # flips both ways, 3.5% of the pairs expected each way (right -> wrong, wrong -> right): no net change
            sparse = dense ^ (rng.random(n) < np.where(dense, 0.035 / 0.65, 0.065 / 0.35))
        items = {_key("dpo"): {"hh_implicit_correct": dense.astype(float).tolist()},
                 _key("dpo", "dynamic", 0.5): {"hh_implicit_correct": sparse.astype(float).tolist()}}
        spec = ContrastConfig(question="alignment", dataset="hh", metric="implicit_reward_accuracy")
        [f] = compute_findings(ItemStore(items), {"smollm2": 1.35e8}, ReportConfig(primary_contrasts=[spec],
                                                                                   bootstrap=500))
        assert f.estimand == "interaction" and f.n == n
        assert abs(f.effect - (sparse.mean() - dense.mean())) < 1e-12
        assert f.verdict == verdict, (drop, f)
