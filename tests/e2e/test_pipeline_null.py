"""The pipeline end to end on a known null (issue 20, item 5): a dynamic controller frozen at the static thresholds
is the static mode, so through cells, results.parquet and the report every dynamic − static contrast must come
out exactly 0 and "inconclusive" -- never an effect."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from e2e.test_reduced_grid import env, study  # noqa: F401  (the module's run environment fixture)

pytestmark = pytest.mark.slow


def test_a_frozen_controller_gives_every_threshold_contrast_exactly_zero(env):  # noqa: F811
    summary = study(env, "--name", "null", "--set", "sparsity.modes=[static,dynamic]", "--set",
                    "sparsity.controller.frozen=true", "--set", "alignment.heldout_pairs=30", "--set",
                    "alignment.methods=[dpo]")
    assert summary["failed"] == 0
    run = Path(summary["run"])
    for static in run.glob("eval/micro-xs/*/f1.000/static/0.50/items.json"):
        dynamic = json.loads((static.parent.parent.parent / "dynamic" / "0.50" / "items.json").read_text())
        assert dynamic == json.loads(static.read_text())  # the same decisions on every item, every dataset
    table = pd.read_parquet(run / "results.parquet")
    key = ["method", "dataset", "metric"]
    static, dynamic = (table[(table["mode"] == m) & (table["metric"] != "tokens_per_s")].set_index(key)["value"]
                       for m in ("static", "dynamic"))
    pd.testing.assert_series_equal(static.sort_index(), dynamic.sort_index(), check_exact=True)
    thresholds = [f for f in summary["findings"] if f["question"] == "thresholds"]
    measured = [f for f in thresholds if f["effect"] is not None]
    assert measured, thresholds  # hh accuracy on 30 pairs is measurable; pass@1 of a 10-step model is at its floor
    assert {f["estimand"] for f in measured} == {"nominal_target", "matched_sparsity"}  # both readings of (b)
    assert all(f["effect"] == 0 and f["ci_low"] == f["ci_high"] == 0 and f["verdict"] == "inconclusive"
               for f in measured), measured
    report = (run / "report.md").read_text()
    assert "dynamic - static" in report
