"""Cost of alignment: aligned - base dense generated pass@1 judged against the retention limit (paired over items
and seeds), and KL(aligned || base) beside it, on planted per-item data."""

from __future__ import annotations

import numpy as np

from sparsealign.report.content import alignment_cost_blocks
from sparsealign.report.items import ItemStore
from sparsealign.study.config import ReportConfig

N = 400


def _items(drop_by_method: dict[str, float], seed: int = 3) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    u = rng.random(N)
    items = {"micro-m/base/f1.000/dense/0.00": {"generated_passed": (u < 0.6).astype(float).tolist()}}
    for method, drop in drop_by_method.items():
        for s in range(3):
            items[f"micro-m/{method}/f1.000/s{s}/dense/0.00"] = {
                "generated_passed": (u < 0.6 - drop).astype(float).tolist(),
                "mbpp_alignment_kl": (0.02 * (1 + drop * 10) + 0.001 * rng.standard_normal(50)).tolist()}
    return items


def test_retention_verdicts_and_kl() -> None:
    blocks = alignment_cost_blocks(ItemStore(_items({"dpo": 0.0, "orpo": 0.2})),
                                   ReportConfig(alignment_tuning="lr chosen on a planted grid."), n_boot=300)
    heading, text, table = blocks
    assert heading.text == "Cost of alignment" and text.text.startswith("lr chosen on a planted grid.")
    rows = table.table.set_index("method")
    assert rows.loc["dpo", "verdict"] == "within" and rows.loc["dpo", "pass1_diff"] == 0.0
    assert rows.loc["orpo", "verdict"] == "outside" and abs(rows.loc["orpo", "pass1_diff"] + 0.2) < 0.02
    assert rows.loc["orpo", "seeds"] == 3 and rows.loc["orpo", "n"] == N
    assert rows.loc["dpo", "kl_ci_low"] <= rows.loc["dpo", "kl_to_base"] <= rows.loc["dpo", "kl_ci_high"]
    assert rows.loc["orpo", "kl_to_base"] > rows.loc["dpo", "kl_to_base"]
    assert "1 of 2 measurable aligned models meet it on the estimate" in text.text


def test_nothing_aligned_no_section() -> None:
    items = {"micro-m/base/f1.000/dense/0.00": {"generated_passed": [1.0, 0.0] * 10}}
    assert alignment_cost_blocks(ItemStore(items), ReportConfig()) == []


def test_the_held_out_implicit_reward_accuracy_is_the_manipulation_check_beside_kl() -> None:
    """Each aligned model's own implicit reward on held-out code pairs: its share of positive margins over items and
    seeds, with a CI -- a model whose reward prefers the rejected side scores below 0.5, said as such."""
    items = _items({"dpo": 0.0, "orpo": 0.0})
    rng = np.random.default_rng(0)
    for key, arrays in items.items():
        if "/base/" not in key:
            shift = 0.5 if "/dpo/" in key else -0.5  # dpo learned the held-out preference, orpo the opposite
            arrays["code_implicit_margin"] = (shift + rng.standard_normal(300)).tolist()
    _, _, table = alignment_cost_blocks(ItemStore(items), ReportConfig(), n_boot=300)
    rows = table.table.set_index("method")
    assert 0.66 < rows.loc["dpo", "implicit_acc"] < 0.73 and rows.loc["dpo", "acc_ci_low"] > 0.5
    assert 0.27 < rows.loc["orpo", "implicit_acc"] < 0.34 and rows.loc["orpo", "acc_ci_high"] < 0.5
