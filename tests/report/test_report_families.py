"""Model families in the report: a real pretrained model's rows sit beside the micro family, labelled, and never
enter its fit (issue 10 item 5)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sparsealign.report import content
from sparsealign.report.render import validate_results
from sparsealign.report.scaling import scaling_fit_table


def dense_rows(family: str, sizes: dict[str, float], value) -> pd.DataFrame:
    return pd.DataFrame([{"family": family, "size": s, "params": p, "method": "base", "mode": "dense",
                          "target_sparsity": 0.0, "dataset": "mbpp", "metric": "pass@1", "value": value(p)}
                         for s, p in sizes.items()])


MICRO = {"micro-xxs": 1e4, "micro-xs": 1e5, "micro-s": 1e6, "micro-m": 1e7}


def test_fits_stay_within_a_family_and_tables_label_both():
    micro = dense_rows("micro", MICRO, lambda p: 0.1 + 0.05 * math.log10(p / 1e4))
    real = dense_rows("smollm2 (pretrained)", {"smollm2-135m": 1.345e8}, lambda p: 0.9)  # far off the micro line
    df = validate_results(pd.concat([micro, real], ignore_index=True))
    fits = scaling_fit_table(df, metrics=["pass@1"])
    m = fits[fits["family"] == "micro"].iloc[0]
    assert m["sizes"] == 4 and np.isclose(m["slope"], 0.05)  # pooled, the 0.9 point would pull the slope up
    pooled = scaling_fit_table(df.assign(family=""), metrics=["pass@1"]).iloc[0]
    assert pooled["sizes"] == 5 and pooled["slope"] > 0.1
    r = fits[fits["family"] == "smollm2 (pretrained)"].iloc[0]
    assert r["sizes"] == 1 and math.isnan(r["slope"]) and "no slope" in r["note"]

    table = content.family_table(df)
    assert list(table["family"]) == ["micro"] * 4 + ["smollm2 (pretrained)"]
    own, beside = df[df["family"] == "smollm2 (pretrained)"], df[df["family"] == "micro"]
    notes = " ".join(content.family_caveats(own, beside))
    assert "Families shown: smollm2 (pretrained), micro" in notes and "no fit ever mixes them" in notes
    assert "report.beside" in notes and content.family_caveats(own, None) == []
