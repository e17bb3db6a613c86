"""The base model's own preferences under sparsity: flip rate and margin correlation against its dense self, per
dialogue set and sparse setting, with the set's note (e.g. UltraFeedback = retention for an instruct model)."""

from __future__ import annotations

import pandas as pd

from sparsealign.report.content import base_preference_blocks
from sparsealign.study.config import ReportConfig


def _row(cell: str, dataset: str, metric: str, value: float, mode: str = "dense", target: float = 0.0,
         low: float | None = None, high: float | None = None, method: str = "base") -> dict:
    return {"cell": cell, "family": "smollm2", "size": "s", "params": 1.0, "method": method, "subset_fraction": 1.0,
            "mode": mode, "target_sparsity": target, "dataset": dataset, "metric": metric, "value": value,
            "ci_low": low, "ci_high": high, "n": 600, "seed": None}


def test_flip_rate_and_margin_correlation_per_set_and_setting() -> None:
    d, s = "s/base/f1.000/dense/0.00", "s/base/f1.000/dynamic/0.50"
    df = pd.DataFrame([
        _row(d, "hh", "reward_accuracy", 0.52), _row(d, "hh", "length_baseline_accuracy", 0.61),
        _row(d, "uf", "reward_accuracy", 0.55), _row(d, "uf", "length_baseline_accuracy", 0.58),
        _row(s, "hh", "reward_accuracy", 0.50, "dynamic", 0.5), _row(s, "uf", "reward_accuracy", 0.49, "dynamic", 0.5),
        _row(s, "hh", "flip_rate", 0.11, "dynamic", 0.5, 0.09, 0.14),
        _row(s, "uf", "flip_rate", 0.21, "dynamic", 0.5, 0.18, 0.25),
        _row(s, "hh", "margin_correlation", 0.93, "dynamic", 0.5, 0.92, 0.94),
        _row(s, "hh", "realized_sparsity", 0.497, "dynamic", 0.5),
        _row("s/dpo/f1.000/dynamic/0.50", "hh", "flip_rate", 0.4, "dynamic", 0.5, method="dpo"),  # not the base
    ])
    heading, text, table = base_preference_blocks(df, ReportConfig(set_notes={"uf": "tuned on it: retention."}))
    assert heading.text == "Base model's preferences under sparsity" and "uf: tuned on it: retention." in text.text
    t = table.table.set_index("set")
    assert len(t) == 2 and t.loc["hh", "flip rate"] == 0.11 and t.loc["hh", "margin corr"] == 0.93
    assert (t.loc["hh", "corr low"], t.loc["hh", "corr high"]) == (0.92, 0.94) and t.loc["hh", "realized"] == 0.497
    assert t.loc["uf", "accuracy dense"] == 0.55 and t.loc["uf", "accuracy sparse"] == 0.49
    assert t.loc["uf", "length baseline"] == 0.58 and pd.isna(t.loc["uf", "margin corr"])


def test_no_sparse_base_cells_no_section() -> None:
    df = pd.DataFrame([_row("s/base/f1.000/dense/0.00", "hh", "reward_accuracy", 0.5)])
    assert base_preference_blocks(df, ReportConfig()) == []
