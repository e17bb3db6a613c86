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
