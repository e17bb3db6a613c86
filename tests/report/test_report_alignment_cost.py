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
    assert rows.loc["orpo", "check"].startswith("failed") and "pass@1 outside" in rows.loc["orpo", "check"]
    assert rows.loc["dpo", "check"] == "failed: no implicit reward on code, accuracy vs length baseline"
    assert "0 of 2 aligned models pass it" in text.text


def test_nothing_aligned_no_section() -> None:
    items = {"micro-m/base/f1.000/dense/0.00": {"generated_passed": [1.0, 0.0] * 10}}
    assert alignment_cost_blocks(ItemStore(items), ReportConfig()) == []


def test_the_held_out_implicit_reward_accuracy_is_the_manipulation_check_beside_kl() -> None:
    """Each aligned model's own implicit reward on held-out pairs: its share of positive margins over items and
    seeds, with a CI, read against 0.5 and against the longer-response-wins baseline on the same pairs (paired) --
    a model whose reward prefers the rejected side scores below 0.5, said as such; one that only matches the length
    baseline does not pass."""
    items = _items({"dpo": 0.0, "orpo": 0.0, "rdpo": 0.0})
    rng = np.random.default_rng(0)
    longer = (rng.random(300) < 0.6).astype(float)  # the longer response wins 60% of the pairs
    items["micro-m/base/f1.000/dense/0.00"]["hh_longer_wins"] = longer.tolist()
    for key, arrays in items.items():
        if "/base/" not in key:
            shift = {"/dpo/": 1.2, "/orpo/": -0.5, "/rdpo/": 0.25}[next(m for m in ("/dpo/", "/orpo/", "/rdpo/")
                                                                        if m in key)]
            arrays["hh_implicit_correct"] = (shift + rng.standard_normal(300) > 0).astype(float).tolist()
    _, text, table = alignment_cost_blocks(ItemStore(items), ReportConfig(check_set="hh", min_kl=0.015), n_boot=300)
    rows = table.table.set_index("method")
    assert 0.85 < rows.loc["dpo", "implicit_acc"] < 0.92 and rows.loc["dpo", "acc_ci_low"] > 0.5
    assert 0.27 < rows.loc["orpo", "implicit_acc"] < 0.34 and rows.loc["orpo", "acc_ci_high"] < 0.5
    assert abs(rows.loc["dpo", "length_baseline"] - longer.mean()) < 1e-12
    assert rows.loc["dpo", "over_ci_low"] > 0 and rows.loc["dpo", "check"] == "passed"
    # rdpo: ~0.6, above 0.5 but not above the length baseline
    assert rows.loc["rdpo", "acc_ci_low"] > 0.5 and rows.loc["rdpo", "check"] == "failed: accuracy vs length baseline"
    assert rows.loc["orpo", "check"] == "failed: accuracy vs 0.5, accuracy vs length baseline"
    assert "1 of 3 aligned models pass it" in text.text and "held-out hh pairs" in text.text


def test_too_little_kl_fails_the_check() -> None:
    items = _items({"dpo": 0.0})
    _, _, table = alignment_cost_blocks(ItemStore(items), ReportConfig(min_kl=0.5), n_boot=300)
    assert table.table.set_index("method").loc["dpo", "check"].startswith("failed: KL,")


def test_the_kl_of_the_check_is_read_where_the_config_says() -> None:
    """kl_dataset=hh: KL on held-out dialogue responses (evaluation.dialogue_kl_pairs), not on the MBPP code."""
    items = _items({"dpo": 0.0})
    for key, arrays in items.items():
        if "/dpo/" in key:
            arrays["hh_alignment_kl"] = [0.05] * 40
    _, text, table = alignment_cost_blocks(ItemStore(items), ReportConfig(kl_dataset="hh", min_kl=0.03), n_boot=300)
    row = table.table.set_index("method").loc["dpo"]
    assert abs(row["kl_to_base"] - 0.05) < 1e-12 and not row["check"].startswith("failed: KL")
    assert "chosen responses of held-out HH pairs" in text.text
    _, _, table = alignment_cost_blocks(ItemStore(items), ReportConfig(min_kl=0.03), n_boot=300)  # mbpp: 0.02
    assert table.table.set_index("method").loc["dpo", "check"].startswith("failed: KL")
