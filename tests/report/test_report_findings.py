"""Findings on a seeded synthetic study with a planted effect and a known null, floors, and the secondary tables.

Per-item data shaped like the study's `items.json` (cell-keyed, `<dataset>_<kind>` arrays, `s<seed>` segments for
the aligned models' seeds): 4 sizes; base (no seed) and DPO / RDPO (3 seeds each); dense, static and dynamic cells at
0.7 and 0.9.  Planted: aligned models rank 15-19 points more held-out HH pairs right than base, at every sparsity;
RDPO trained on 1/9 of the pairs already matches DPO on all of them.
Null: dynamic and static thresholds are the same model (each cell re-draws 10% of its items from the same rate).
MBPP pass@1 is 0 everywhere (the floor the real micro study sits on).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sparsealign.report import render, scaling
from sparsealign.report.findings import compute_findings
from sparsealign.report.items import CellKey, ItemStore, parse_cell_key
from sparsealign.report.matched import interpolate_at
from sparsealign.report.wording import sentence
from sparsealign.study.config import ReportConfig

SIZES = {"micro-a": 1e5, "micro-b": 3e5, "micro-c": 1e6, "micro-d": 3e6}
N_HH, N_GEN, N_MBPP = 300, 120, 50
TARGETS = (0.7, 0.9)
LIFT = 0.15  # the planted alignment effect on HH reward accuracy


def synthetic_items(seed: int = 7) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    items: dict[str, dict[str, list[float]]] = {}
    for i, size in enumerate(SIZES):
        u_hh, u_gen = rng.random(N_HH), rng.random(N_GEN)  # item difficulty, shared by every cell of the size
        for method, seeds in (("base", [None]), ("dpo", [0, 1, 2]), ("rdpo", [0, 1, 2])):
            for s in seeds:
                lift = 0.0 if method == "base" else LIFT + 0.01 * (s or 0) + 0.03 * (method == "rdpo")
                tag = "" if s is None else f"/s{s}"
                for mode, target in [("dense", 0.0), *((m, t) for m in ("static", "dynamic") for t in TARGETS)]:
                    drop = 0.04 * (target > 0.8)
                    hh = (u_hh < 0.55 + lift - drop).astype(float)
                    gen = (u_gen < 0.30 + 0.05 * i - drop).astype(float)
                    if mode == "dynamic":  # the null: same rate, 10% of items re-drawn
                        redraw = rng.random(N_HH) < 0.1
                        hh[redraw] = (rng.random(redraw.sum()) < 0.55 + lift - drop).astype(float)
                    items[f"{size}/{method}/f1.000{tag}/{mode}/{target:.2f}"] = {
                        "hh_correct": hh.tolist(), "generated_passed": gen.tolist(), "mbpp_passed": [0.0] * N_MBPP}
        for method, slope, extra in (("dpo", 1.0, 0.0), ("rdpo", 0.3, 0.03)):  # subsets: RDPO learns faster
            for frac in (0.111, 0.333):
                p = 0.55 + LIFT + extra + 0.05 * slope * np.log(frac) / np.log(9)
                items[f"{size}/{method}/f{frac:.3f}/s0/dense/0.00"] = {"hh_correct": (u_hh < p).astype(float).tolist()}
    return items


def results_from_items(items) -> pd.DataFrame:
    rows = []
    for key, arrays in items.items():
        cell = parse_cell_key(key)
        for name, values in arrays.items():
            dataset, kind = name.split("_")
            rows.append({**cell, "params": SIZES[cell["size"]], "dataset": dataset,
                         "metric": "pass@1" if kind == "passed" else "reward_accuracy",
                         "value": float(np.mean(values)), "n": len(values)})
    return pd.DataFrame(rows)


SETTINGS = ReportConfig(primary_contrasts=[
    {"question": "alignment", "dataset": "hh", "metric": "reward_accuracy"},
    {"question": "thresholds", "dataset": "hh", "metric": "reward_accuracy"},
    {"question": "alignment", "dataset": "mbpp", "metric": "pass@1"},
    {"question": "size", "dataset": "hh", "metric": "reward_accuracy", "of": "alignment"},
    {"question": "annotation", "dataset": "hh", "metric": "reward_accuracy"},
], bootstrap=1000)


def synthetic_realized(items) -> dict:
    """Every sparse cell realizes its target on every dataset (the null: dynamic and static alike)."""
    out = {}
    for key, arrays in items.items():
        c = parse_cell_key(key)
        if c["mode"] != "dense":
            for name in arrays:
                out[(CellKey(c["size"], c["method"], c["subset_fraction"], c["mode"], c["target_sparsity"]),
                     name.split("_")[0])] = c["target_sparsity"]
    return out


@pytest.fixture(scope="module")
def findings():
    items = synthetic_items()
    return compute_findings(ItemStore(items), SIZES, SETTINGS, realized=synthetic_realized(items))


def test_the_per_size_table_shows_aligned_minus_base_at_both_settings(findings):
    """The planted lift is read size by size beside each interaction: aligned - base at dense and sparse."""
    inter = [f for f in findings if f.estimand == "interaction" and f.dataset == "hh"]
    for f in inter:
        assert [row["size"] for row in f.per_size] == list(SIZES)
        for row in f.per_size:
            assert row["aligned - base, dense"] == pytest.approx(LIFT + 0.025, abs=0.05), row
            assert row["aligned - base, sparse"] == pytest.approx(LIFT + 0.025, abs=0.05), row
            assert row["effect"] == pytest.approx(row["aligned - base, sparse"] - row["aligned - base, dense"],
                                                  abs=1e-3) and row["items"] == N_HH


def test_the_interaction_is_null_when_alignment_lifts_sparse_and_dense_alike(findings):
    """The planted lift is the same at every setting: (aligned - base)_sparse - (aligned - base)_dense is 0."""
    inter = [f for f in findings if f.estimand == "interaction" and f.dataset == "hh"]
    assert sorted((f.contrast.split(" at ")[1].split()[0], f.target) for f in inter) == [
        (m, t) for m in ("dynamic", "static") for t in TARGETS]
    for f in inter:
        assert f.verdict == "inconclusive" and f.ci_low <= 0 <= f.ci_high and abs(f.effect) < 0.03, f
        assert f.n == 4 * N_HH and f.seeds == 3 and "300 items x 4 size(s)" in f.note and "x 3 seed(s)" in f.note
    gen = [f for f in findings if f.estimand == "interaction" and f.dataset == "mbpp"]
    assert gen and all(f.verdict == "not measurable" and "floor" in f.note for f in gen)


def test_a_planted_interaction_is_found_and_floor_sizes_are_left_out():
    """Aligned models lose their lift at 0.9 sparsity (base does not): the interaction at 0.9 is -LIFT - 0.025
    (the RDPO/seed extras), found; one size pushed to the floor is left out and named, the rest still count."""
    items = synthetic_items()
    for key, arrays in items.items():
        size, method, *_, mode, target = key.split("/")
        if method != "base" and mode != "dense" and target == "0.90":
            base = items[f"{size}/base/f1.000/{mode}/{target}"]["hh_correct"]
            arrays["hh_correct"] = list(base)  # no better than base here
        if size == "micro-a":
            arrays["hh_correct"] = [0.0] * N_HH
    found = compute_findings(ItemStore(items), SIZES, SETTINGS)
    at_09 = [f for f in found if f.estimand == "interaction" and f.dataset == "hh" and f.target == 0.9]
    assert len(at_09) == 2
    for f in at_09:
        assert f.verdict == "effect" and f.ci_high < 0 and f.effect == pytest.approx(-(LIFT + 0.025), abs=0.03), f
        assert "left out: micro-a (reward_accuracy at its floor)" in f.note and f.n == 3 * N_HH
        assert {"size": "micro-a", "left out": "reward_accuracy at its floor"} in f.per_size


def test_known_null_is_inconclusive(findings):
    null = [f for f in findings if f.question == "thresholds"]
    assert [(f.estimand, f.target) for f in null] == [(e, t) for t in TARGETS
                                                      for e in ("nominal_target", "matched_sparsity")]
    for f in null:
        assert f.verdict == "inconclusive" and f.ci_low <= 0 <= f.ci_high, f
        assert abs(f.effect) < 0.02 and f.n == 4 * N_HH
    nominal, matched = null[0], null[1]  # equal realized sparsity: the two readings are the same contrast
    assert matched.effect == nominal.effect and "Realized sparsity on hh: micro-a dynamic 0.700 / static 0.700" in \
        sentence(nominal)


def test_matched_sparsity_removes_a_sparsity_gap_that_nominal_reads_as_an_effect():
    """Dynamic realizes less sparsity than static at each target and its quality is exactly the static curve's at
    that realized sparsity (no controller effect): dynamic - static at the nominal target is an effect, at equal
    realized sparsity it is 0 -- and a dynamic cell outside static's measured range is left out, named."""
    rng = np.random.default_rng(3)
    u = rng.random(N_HH)
    items, realized = {}, {}
    rate = {0.7: 0.70, 0.8: 0.62, 0.9: 0.50}  # static quality falls with sparsity
    for size in SIZES:
        for t, r in rate.items():
            items[f"{size}/base/f1.000/static/{t:.2f}"] = {"hh_correct": (u < r).astype(float).tolist()}
            realized[(CellKey(size, "base", 1.0, "static", t), "hh")] = t
        for t, r_dyn in ((0.8, 0.75), (0.9, 0.85), (0.7, 0.65)):  # 0.65: below static's measured 0.70-0.90
            lo, hi = (0.7, 0.8) if r_dyn < 0.8 else (0.8, 0.9)
            w = (r_dyn - lo) / (hi - lo)
            outcome = (1 - w) * (u < rate[lo]) + w * (u < rate[hi]) if r_dyn >= 0.7 else (u < 0.75).astype(float)
            items[f"{size}/base/f1.000/dynamic/{t:.2f}"] = {"hh_correct": outcome.tolist()}
            realized[(CellKey(size, "base", 1.0, "dynamic", t), "hh")] = r_dyn
    settings = ReportConfig(primary_contrasts=[{"question": "thresholds", "dataset": "hh",
                                                "metric": "reward_accuracy"}], bootstrap=500)
    found = {(f.estimand, f.target): f for f in compute_findings(ItemStore(items), SIZES, settings,
                                                                 realized=realized)}
    for t in (0.8, 0.9):
        assert found[("nominal_target", t)].verdict == "effect" and found[("nominal_target", t)].effect > 0.05
        m = found[("matched_sparsity", t)]
        assert m.effect == pytest.approx(0.0, abs=1e-12) and m.verdict == "inconclusive", m
        assert "static" in m.per_size[0]["static read at"] and m.per_size[0]["dynamic realized"] == pytest.approx(
            t - 0.05)
    out = found[("matched_sparsity", 0.7)]
    assert out.verdict == "not measurable" and "outside static's measured 0.700-0.900" in out.note


def test_interpolation_is_the_straight_line_between_bracketing_points():
    y0, y1 = np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]])
    y, lo, hi, w = interpolate_at(0.825, [(0.9, y1), (0.8, y0)])
    assert (lo, hi) == (1, 0) and w == pytest.approx(0.25) and y == pytest.approx(np.array([[0.25, 1.0]]))
    assert interpolate_at(0.8, [(0.8, y0), (0.9, y1)])[0] is y0  # an exact point is that point
    assert interpolate_at(0.95, [(0.8, y0), (0.9, y1)]) is None  # no extrapolation


def test_floor_metric_is_not_measurable_and_untested(findings):
    mbpp = [f for f in findings if f.dataset == "mbpp"]
    assert mbpp and all(f.verdict == "not measurable" and f.effect is None and f.p_holm is None for f in mbpp)
    assert all("floor" in f.note for f in mbpp)
    # Holm's family is the contrasts that could be tested: the floor ones do not dilute it
    tested = [f for f in findings if f.p_holm is not None]
    smallest = min(tested, key=lambda f: f.p)
    assert smallest.p_holm == pytest.approx(min(1.0, len(tested) * smallest.p))


def test_size_slope_and_annotation(findings):
    (size,) = [f for f in findings if f.question == "size"]
    assert size.note.startswith("4 sizes") and size.ci_low <= 0 <= size.ci_high  # constant lift: no size trend
    assert size.verdict == "inconclusive"
    ann = {f.contrast.split(":")[0]: f for f in findings if f.question == "annotation"}
    assert set(ann) == {"rdpo"}  # DPO's self-saving (1) is not a contrast
    assert ann["rdpo"].null == 1.0 and ann["rdpo"].effect > 1


def test_too_few_sizes_gives_no_slope():
    items = {k: v for k, v in synthetic_items().items() if not k.startswith("micro-d")}
    (size,) = [f for f in compute_findings(ItemStore(items), SIZES, SETTINGS) if f.question == "size"]
    assert size.verdict == "not measurable" and size.effect is None and "3 non-floor size(s)" in size.note


def test_a_size_at_the_floor_does_not_count_towards_a_slope():
    """4 sizes, one at the floor: its effect is 0 by construction, so only 3 sizes could carry a slope."""
    items = synthetic_items()
    for key, arrays in items.items():
        if key.startswith("micro-a/"):
            arrays["hh_correct"] = [0.0] * len(arrays["hh_correct"])
    (size,) = [f for f in compute_findings(ItemStore(items), SIZES, SETTINGS) if f.question == "size"]
    assert size.verdict == "not measurable" and "3 non-floor size(s)" in size.note and "micro-a" in size.note


def test_all_zero_metric_gets_no_fit_and_a_floor_note():
    df = render.validate_results(results_from_items(synthetic_items()))
    fits = scaling.scaling_fit_table(df, metrics=["pass@1", "reward_accuracy"])
    mbpp = fits[fits["dataset"] == "mbpp"]
    assert len(mbpp) == 3 and mbpp["slope"].isna().all() and (mbpp["note"] == "at floor in every size: no fit").all()
    gen = fits[(fits["dataset"] == "generated") & (fits["method"] == "base")].iloc[0]
    assert np.isfinite(gen["slope"]) and gen["ci_low"] < gen["slope"] < gen["ci_high"] and gen["sizes"] == 4
    assert scaling.bounded_everywhere(df) == [("mbpp", "pass@1", "floor")]
    store = ItemStore(synthetic_items())
    crit = scaling.critical_sparsity_table(store, dataset="mbpp", metric="pass@1", tolerance=0.01, n_boot=200)
    assert (crit["critical_sparsity"] == "not measurable").all()  # never "0.9" for a floor row
    gain = scaling.alignment_gain_table(store, dataset="mbpp", metric="pass@1", n_boot=200)
    assert gain["diff"].isna().all() and gain["note"].str.contains("floor").all()
    versus = scaling.alignment_gain_table(store, dataset="hh", metric="reward_accuracy", reference="dpo", n_boot=200)
    assert set(versus["method"]) == {"rdpo"} and len(versus) == 4 * 5  # sizes x (dense + 2 modes x 2 targets)
    assert (versus["seeds"] == 3).all() and versus["diff"].between(0.0, 0.07).all()  # planted: RDPO +0.03


def test_report_states_findings_first(tmp_path):
    items = synthetic_items()
    config = {"seed": 0, "report": SETTINGS.model_dump(mode="json")}
    paths = render.write_report(results_from_items(items).assign(family="micro"), tmp_path, items=items,
                                config=config)
    md = paths["markdown"].read_text()
    assert md.index("## Findings") < md.index("## Caveats") < md.index("## Figures") < md.index("## Model family")
    findings_md = md[md.index("## Findings"):md.index("## Caveats")]
    assert "-- effect." in findings_md and "-- inconclusive." in findings_md and "not measurable" in findings_md
    assert "mbpp pass@1 is at its floor in every cell" in md
    saved = json.loads(paths["findings"].read_text())
    assert {"question", "effect", "ci_low", "ci_high", "n", "p_holm", "verdict"} <= set(saved[0])
    assert {f["verdict"] for f in saved} == {"effect", "inconclusive", "not measurable"}
    back = pd.read_parquet(paths["results"])
    ann = back[back["metric"] == "annotation_saving"]
    assert set(ann["method"]) == {"dpo", "rdpo"} and (ann.loc[ann["method"] == "dpo", "value"] == 1.0).all()
    assert set(ann["family"]) == {"micro"}  # a saving row belongs to its size's family (was "": sizes listed twice)
    family_table = md[md.index("## Model family"):].split("\n## ")[0]
    assert all(family_table.count(f"| {size} ") == 1 for size in SIZES), family_table


def test_no_saving_claimed_when_dpo_needs_only_its_smallest_subset():
    items = synthetic_items()
    for key in [k for k in items if "/dpo/f0." in k]:  # DPO's subsets as good as all pairs: a flat curve
        items[key] = {"hh_correct": [1.0] * N_HH}
    (ann,) = [f for f in compute_findings(ItemStore(items), SIZES, SETTINGS) if f.question == "annotation"]
    assert ann.verdict == "not measurable" and ann.effect is None and "smallest subset" in ann.note


def test_figures_get_one_row_per_cell_with_seed_spread():
    from sparsealign.report.content import seed_pooled

    items = synthetic_items()
    df = render.validate_results(results_from_items(items))
    pooled = seed_pooled(df, ItemStore(items), n_boot=300)
    cells = ["size", "method", "subset_fraction", "mode", "target_sparsity", "dataset", "metric"]
    assert not pooled.duplicated(cells).any() and len(pooled) < len(df)
    row = pooled[(pooled["size"] == "micro-a") & (pooled["method"] == "dpo") & (pooled["mode"] == "dense")
                 & (pooled["dataset"] == "hh") & (pooled["subset_fraction"] == 1.0)].iloc[0]
    seeds = df[(df["size"] == "micro-a") & (df["method"] == "dpo") & (df["mode"] == "dense") & (df["dataset"] == "hh")
               & (df["subset_fraction"] == 1.0)]
    assert len(seeds) == 3 and row["value"] == pytest.approx(seeds["value"].mean())
    assert row["ci_low"] < row["value"] < row["ci_high"]


def test_the_lead_answers_each_question_in_a_sentence(findings):
    """The report's first lines: how many interactions are effects, and dynamic vs static at equal realized
    sparsity and at the same target, with a lower-is-better metric's sign read the right way."""
    from dataclasses import replace

    from sparsealign.report.wording import lead

    lines = lead(findings)
    assert lines[0].startswith("(a) Alignment's effect changes under sparsity in 0 of 4 measurable interaction")
    assert any(line.startswith("(b) dynamic vs static thresholds at equal realized sparsity") for line in lines)
    nll = replace(next(f for f in findings if f.estimand == "matched_sparsity"), metric="reference_nll",
                  effect=-0.2, ci_low=-0.3, ci_high=-0.1, verdict="effect")
    (said,) = [line for line in lead([nll]) if "equal realized" in line]
    assert "dynamic is better in 1 and worse in 0 of 1" in said and "(lower is better)" in said
