"""What the report says, in order: Findings (one paragraph per research question), the caveats the data forces,
figures (with CI bands), then the tables.  Every sentence is generated from the results and per-item data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from sparsealign.align.config import facts
from sparsealign.report import figures, scaling
from sparsealign.report.blocks import Block
from sparsealign.report.findings import BASE, REFERENCE, Finding
from sparsealign.report.items import CellKey, ItemStore
from sparsealign.report.wording import QUESTIONS, lead, paragraphs
from sparsealign.stats.paired import paired_difference, percentile_interval, replicate_means
from sparsealign.stats.slopes import slope_interval
from sparsealign.study.config import DIALOGUE_SETS, ReportConfig

HEADLINE_ACCURACY = ("pass@1", "preference_accuracy", "reward_accuracy")
REFERENCE_LABEL = facts(REFERENCE).label  # DPO
SPARSITY_FIGURE_METRICS = (*HEADLINE_ACCURACY, "divergence", "preference_divergence", "flip_rate")
SIZE_FIGURE_METRICS = (*HEADLINE_ACCURACY, "divergence", "preference_divergence")
KL_TEXT = {"mbpp": "the MBPP reference solutions, code neither model trained on",
           "hh": "the chosen responses of held-out HH pairs"}
SECONDARY_RESAMPLES = 1000  # the per-row tables have hundreds of rows; the primary contrasts use report.bootstrap
MICRO_CAVEAT = ("The micro family (ReLU LLaMA-architecture models of 10^4-10^6 parameters, pretrained here) can stand "
                "in for the mechanics -- how activation sparsity, threshold control and the alignment losses interact, "
                "and the direction of effects -- but not for absolute capability: MBPP pass@1, alignment quality or "
                "any behaviour that appears only at 7B-70B parameters cannot be read off it.")
GENERATED_CAVEAT = ("'generated' tasks are instances of task templates the micro family saw in pretraining (new "
                    "arguments, same families): their pass@1 measures template recall, not MBPP-style problem "
                    "solving, and is reported apart from MBPP.")


def findings_blocks(found: list[Finding], settings: ReportConfig, have_items: bool,
                    df: pd.DataFrame | None = None) -> list[Block]:
    blocks = [Block("h2", "Findings")]
    if not have_items:
        return [*blocks, Block("p", "No per-item results were given, so no paired statistic can be computed: every "
                               "research question is not measurable from this table alone.")]
    blocks.append(Block("p", f"Primary contrasts from the study config (report.primary_contrasts); effects are "
                        f"differences of means (a ratio for annotation savings), 95% CIs from a crossed bootstrap "
                        f"over items and seeds ({settings.bootstrap} replicates), p-values Holm-adjusted across the "
                        f"{sum(f.p_holm is not None for f in found)} contrasts that could be tested (alpha "
                        f"{settings.alpha:g}). 'inconclusive' = the CI covers the null or the adjusted p is not below "
                        "alpha; 'not measurable' = floor/ceiling, too few items or missing cells. (a) is the "
                        "interaction: how much aligned - base changes from dense to sparse. (b) is read twice: at the "
                        "same target (what a deployment gets) and at equal realized sparsity on the same domain (the "
                        "controller's own effect)."))
    summary = lead(found)
    if summary:
        blocks += [Block("h3", "In short"), *[Block("p", line) for line in summary]]
    for heading, text in paragraphs(found):
        blocks += [Block("h3", heading), Block("p", text)]
        table = per_size_table([f for f in found if QUESTIONS[f.question] == heading])
        if not table.empty:
            blocks.append(Block("table", table=table))
    unasked = unasked_sets(df) if df is not None else []
    if unasked:
        blocks += [Block("h3", "Preferences this family cannot express"), Block("p", " ".join(unasked))]
    return blocks


def per_size_table(found: list[Finding]) -> pd.DataFrame:
    """Each Finding's per-size effects (and the sizes it left out, with why) as one table."""
    rows = [{"contrast": f.contrast, **row} for f in found for row in f.per_size]
    return pd.DataFrame(rows)


def unasked_sets(df: pd.DataFrame) -> list[str]:
    """Dialogue sets a code-only family was not asked (only their length baseline is in the results)."""
    out = []
    for dataset, grp in df[df["dataset"].isin(DIALOGUE_SETS)].groupby("dataset", sort=True):
        if set(grp["metric"]) != {"length_baseline_accuracy"}:
            continue
        row = grp.iloc[0]
        out.append(f"{dataset}: no English (the {row.get('family', 'model')} family is pretrained on code only), so "
                   f"its preference question is asked on code; on these {int(row['n'] or 0)} held-out pairs the "
                   f"longer response wins {row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] -- all a "
                   "model that cannot read them could score.")
    return out


def caveats(df: pd.DataFrame, store: ItemStore, found: list[Finding]) -> list[str]:
    out = []
    for dataset, metric, where in scaling.bounded_everywhere(df):
        out.append(f"{dataset} {metric} is at its {where} in every cell: no fit, critical sparsity or gain is "
                   "derived from it, and its tables are omitted.")
    seeds = max((f.seeds for f in found), default=1)
    if store and seeds <= 1:
        out.append("One seed per aligned model: the CIs hold item-sampling error only, not seed-to-seed (training) "
                   "variance.")
    sizes = df["size"].nunique()
    if sizes < 4:
        out.append(f"{sizes} model size(s): no scaling slope is fitted (a t interval needs at least 4 sizes).")
    if (df["dataset"] == "generated").any():
        out.append(GENERATED_CAVEAT)
    if df["size"].astype(str).str.startswith("micro").any():
        out.append(MICRO_CAVEAT)
    return out


def alignment_cost_blocks(store: ItemStore, settings: ReportConfig, *, n_boot: int = SECONDARY_RESAMPLES
                          ) -> list[Block]:
    """The manipulation check, per size and aligned method (dense, all pairs): did the alignment move the model
    (KL(aligned || base) on the MBPP references), does its own implicit reward rank the held-out `check_set` pairs
    above 0.5 and above "the longer response wins" (paired on the same pairs), and did it keep dense pass@1 on
    `retention_dataset` (aligned - base, paired over items and seeds, within `retention_points`)."""
    data, check, kl_data = settings.retention_dataset, settings.check_set, settings.kl_dataset
    gain = scaling.alignment_gain_table(store, dataset=data, metric="pass@1", n_boot=n_boot)
    gain = gain[gain["mode"] == "dense"] if not gain.empty else gain
    kl_cells = [c for c in store.cells(kl_data, "alignment_kl") if c.mode == "dense" and c.subset == 1.0]
    if gain.empty and not kl_cells:
        return []
    limit = settings.retention_points
    rows = []
    for size, method in sorted({(r.size, r.method) for r in gain.itertuples()} | {(c.size, c.method) for c in kl_cells}):
        row: dict = {"size": size, "method": method}
        dense = CellKey(size, method, 1.0, "dense", 0.0)
        g = gain[(gain["size"] == size) & (gain["method"] == method)]
        if not g.empty:
            r = g.iloc[0]
            row.update(pass1_diff=r["diff"], ci_low=r["ci_low"], ci_high=r["ci_high"], n=r["n"], seeds=r["seeds"],
                       verdict=_retention_verdict(r["diff"], r["ci_low"], r["ci_high"], limit, r["note"]))
        kl = store.get(dense, kl_data, "alignment_kl")
        if kl is not None:
            lo, hi = percentile_interval(replicate_means({"x": kl}, n_resamples=n_boot)["x"])
            row.update(kl_to_base=float(kl.mean()), kl_ci_low=lo, kl_ci_high=hi)
        right = store.get(dense, check, "implicit_reward_accuracy")
        longer = store.get(CellKey(size, BASE, 1.0, "dense", 0.0), check, "longer_wins")
        if right is not None:  # the model's own reward on pairs it never trained on: did the alignment generalise?
            lo, hi = percentile_interval(replicate_means({"x": right}, n_resamples=n_boot)["x"])
            row.update(implicit_acc=float(right.mean()), acc_ci_low=lo, acc_ci_high=hi)
            if longer is not None and longer.shape[1] == right.shape[1]:
                d = paired_difference(right, longer, n_resamples=n_boot, seed=0)
                row.update(length_baseline=float(longer.mean()), over_length=d.estimate, over_ci_low=d.low,
                           over_ci_high=d.high)
        row["check"] = _check(row, settings)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["size", "method", "check", "kl_to_base", "kl_ci_low", "kl_ci_high",
                                        "implicit_acc", "acc_ci_low", "acc_ci_high", "length_baseline",
                                        "over_length", "over_ci_low", "over_ci_high", "pass1_diff", "ci_low",
                                        "ci_high", "n", "seeds", "verdict"])
    passed = int((table["check"] == "passed").sum())
    text = (f"{settings.alignment_tuning + ' ' if settings.alignment_tuning else ''}Manipulation check, read before "
            f"any alignment Finding: {passed} of {len(table)} aligned models pass it. A model passes when the "
            f"alignment moved it (KL(aligned || base) per token on {KL_TEXT.get(kl_data, kl_data)}, at least "
            f"{settings.min_kl:g}), when its own implicit reward (beta log pi/pi_base) ranks the "
            f"held-out {check} pairs above 0.5 and above the longer-response-wins baseline on the same pairs "
            f"(implicit_acc; over_length = implicit_acc - baseline, paired; both CIs excluding the bound), and when "
            f"its dense {data} pass@1 stays within {limit * 100:g} points of its base (pass1_diff, paired on the "
            "same tasks, CI over items and seeds; verdict 'within': the whole CI inside, 'unclear': the estimate "
            "inside, 'not measurable': both at the floor, where no drop can show).")
    return [Block("h2", "Cost of alignment"), Block("p", text), Block("table", table=table)]


def _check(row: dict, settings: ReportConfig) -> str:
    """'passed', or 'failed: ' and the parts that did not hold (or could not be measured)."""
    fails = []
    if not row.get("kl_to_base", -1.0) >= max(settings.min_kl, 1e-12):
        fails.append("KL" if "kl_to_base" in row else "KL not measured")
    if not row.get("acc_ci_low", 0.0) > 0.5:
        fails.append("accuracy vs 0.5" if "implicit_acc" in row else f"no implicit reward on {settings.check_set}")
    if not row.get("over_ci_low", 0.0) > 0:
        fails.append("accuracy vs length baseline")
    if row.get("verdict") not in ("within", None) and not str(row.get("verdict", "")).startswith("not measurable"):
        fails.append(f"pass@1 {row['verdict']}")
    return "passed" if not fails else "failed: " + ", ".join(fails)


def base_preference_blocks(df: pd.DataFrame, settings: ReportConfig) -> list[Block]:
    """Whether sparsity keeps the base model's own preferences (an instruct model's shipped tuning), per dialogue
    set and sparse setting: its accuracy against the labels beside the length baseline, and against its dense self
    -- pairs ranked the other way (flip rate, Wilson CI) and the margins' correlation (Fisher-z CI)."""
    sub = df[(df["method"] == BASE) & df["dataset"].isin(DIALOGUE_SETS) & (df["subset_fraction"] == 1.0)]
    sparse = sub[(sub["mode"] != "dense") & (sub["metric"] == "flip_rate")]
    if sparse.empty:
        return []
    rows = []
    for r in sparse.sort_values(["dataset", "mode", "target_sparsity"]).itertuples():
        cell = sub[(sub["dataset"] == r.dataset) & (sub["mode"] == r.mode) & (sub["target_sparsity"] == r.target_sparsity)]
        dense = sub[(sub["dataset"] == r.dataset) & (sub["mode"] == "dense")]

        def val(frame: pd.DataFrame, metric: str) -> float:
            hit = frame[frame["metric"] == metric]["value"]
            return float(hit.iloc[0]) if not hit.empty else math.nan

        corr = cell[cell["metric"] == "margin_correlation"]
        realized = df[(df["cell"] == r.cell) & (df["dataset"] == r.dataset) & (df["metric"] == "realized_sparsity")]
        rows.append({"set": r.dataset, "mode": r.mode, "target": r.target_sparsity, "n": r.n,
                     "realized": float(realized["value"].iloc[0]) if not realized.empty else math.nan,
                     "accuracy dense": val(dense, "reward_accuracy"), "accuracy sparse": val(cell, "reward_accuracy"),
                     "length baseline": val(dense, "length_baseline_accuracy"),
                     "flip rate": r.value, "flip low": r.ci_low, "flip high": r.ci_high,
                     "margin corr": float(corr["value"].iloc[0]) if not corr.empty else math.nan,
                     "corr low": float(corr["ci_low"].iloc[0]) if not corr.empty else math.nan,
                     "corr high": float(corr["ci_high"].iloc[0]) if not corr.empty else math.nan})
    notes = " ".join(f"{k}: {v}" for k, v in settings.set_notes.items() if k in set(sparse["dataset"]))
    text = ("The base model's own preferences under sparsity, read against its dense self rather than the labels: "
            "the share of held-out pairs it ranks the other way (flip rate, Wilson 95% CI) and the correlation of its "
            "margins sparse vs dense (Fisher-z 95% CI), with its accuracy and the longer-response-wins baseline "
            "beside them; realized = sparsity realized on that set's pass." + (f" {notes}" if notes else ""))
    return [Block("h2", "Base model's preferences under sparsity"), Block("p", text),
            Block("table", table=pd.DataFrame(rows))]


def _retention_verdict(diff: float, low: float, high: float, limit: float, note: str) -> str:
    if math.isnan(diff):
        return f"not measurable ({note})"
    if abs(diff) > limit:
        return "outside"
    return "within" if -limit <= low and high <= limit else "unclear"


CELL_COLUMNS = ["size", "params", "method", "subset_fraction", "mode", "target_sparsity", "dataset", "metric"]


def seed_pooled(df: pd.DataFrame, store: ItemStore, *, n_boot: int = SECONDARY_RESAMPLES) -> pd.DataFrame:
    """One row per cell for the figures: rows of several seeds are averaged, with the crossed-bootstrap CI of the
    cell's (seeds, items) array where the items are there (else no CI: a per-seed CI says nothing about seeds)."""
    multi = df.groupby(CELL_COLUMNS, dropna=False)["value"].transform("size") > 1
    if not multi.any():
        return df
    pooled = df[multi].groupby(CELL_COLUMNS, as_index=False, dropna=False)["value"].mean()
    lows, highs = [], []
    for row in pooled.itertuples(index=False):
        arr = store.get(CellKey(row.size, row.method, round(row.subset_fraction, 3), row.mode,
                                round(row.target_sparsity, 2)), row.dataset, row.metric)
        lo, hi = (math.nan, math.nan) if arr is None else percentile_interval(
            replicate_means({"x": arr}, n_resamples=n_boot)["x"])
        lows.append(lo)
        highs.append(hi)
    pooled = pooled.assign(ci_low=lows, ci_high=highs)
    return pd.concat([df[~multi], pooled], ignore_index=True)


def _figures(df: pd.DataFrame, traces: pd.DataFrame | None, fig_dir: Path) -> list[Block]:
    """Render every figure the data supports (one row per cell: see `seed_pooled`); figure blocks in report order."""
    bounded = {(d, m) for d, m, _ in scaling.bounded_everywhere(df)}
    specs = []
    for (metric, dataset), _ in df.groupby(["metric", "dataset"], sort=True):
        floor = " -- at its floor/ceiling in every cell" if (dataset, metric) in bounded else ""
        if metric in SPARSITY_FIGURE_METRICS:
            specs.append((f"acc_vs_sparsity_{metric}_{dataset}", f"{metric} vs realized sparsity on {dataset}, a "
                          "panel per method, a colour per size (static dashed, dynamic solid; a star: dense at its "
                          "natural sparsity, not joined to the sparse points; a line breaks where a target was not "
                          f"measured); bars: 95% CI{floor}", lambda m=metric, d=dataset: figures.accuracy_vs_sparsity(
                              df, metric=m, dataset=d)))
        if metric in SIZE_FIGURE_METRICS:
            dense = scaling.full_data(df[(df["metric"] == metric) & (df["dataset"] == dataset)
                                         & (df["mode"] == "dense")])
            fits = {} if (dataset, metric) in bounded else {
                method: slope_interval(g.groupby("params")["value"].mean().index, g.groupby("params")["value"].mean())
                for method, g in dense.groupby("method")}
            specs.append((f"{metric}_vs_size_{dataset}", f"{metric} vs model size ({dataset}, dense; bars: 95% CI; "
                          f"dotted: OLS fit on log10 params where >= 4 sizes){floor}",
                          lambda m=metric, d=dataset, f=fits: figures.metric_vs_size(df, metric=m, dataset=d, fits=f)))
    specs.append(("realized_sparsity_traces", "realized sparsity over decoding steps (sparse positions): a colour "
                  "per threshold mode, a line style per target (grey lines: the targets); dotted verticals mark where "
                  "the evaluation domain changes", lambda: figures.sparsity_traces(traces)))
    specs.append(("speed_vs_sparsity", "decode speed vs realized sparsity (whole sequence, mean over methods; a "
                  "star: dense at its natural sparsity)", lambda: figures.speed_vs_sparsity(df)))
    acc = "preference_accuracy" if (df["metric"] == "preference_accuracy").any() else "reward_accuracy"
    for dataset in sorted(df.loc[df["metric"] == acc, "dataset"].unique()):
        specs.append((f"annotation_efficiency_{dataset}", f"annotation efficiency ({dataset}): held-out {acc} vs "
                      f"training pairs; dashed = {REFERENCE_LABEL} with all pairs",
                      lambda d=dataset: figures.annotation_curves(df, metric=acc, dataset=d)))
    blocks = []
    for name, caption, make in specs:
        fig = make()
        if fig is not None:
            fname = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) + ".png"
            figures.save_png(fig, fig_dir / fname)
            blocks.append(Block("figure", caption, figure=fname))
    return blocks


def family_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["family", "size", "params"] if "family" in df else ["size", "params"]
    return df[cols].drop_duplicates().sort_values(cols[:-2] + ["params"]).reset_index(drop=True)


def _dense_table(df: pd.DataFrame) -> pd.DataFrame:
    """Dense all-pairs values, a column per size (sizes of one family side by side, families one after another)."""
    sub = scaling.full_data(df[(df["mode"] == "dense") & (df["metric"] != "annotation_saving")])
    wide = sub.pivot_table(index=["dataset", "metric", "method"], columns="size", values="value", aggfunc="mean")
    order = family_table(df)["size"]
    return wide[[s for s in order if s in wide.columns]].reset_index()


def family_caveats(df: pd.DataFrame, beside: pd.DataFrame | None) -> list[str]:
    """One sentence per family when more than one is shown: each is its own family, never pooled in a fit."""
    families = [f for f in dict.fromkeys([*df["family"], *([] if beside is None else beside["family"])]) if f]
    if len(families) < 2 and beside is None:
        return []
    own = ", ".join(sorted(set(df["family"]) - {""})) or "this run's"
    out = [f"Families shown: {', '.join(families)}. Each is a different family (architecture, data, training): "
           "its rows stand beside the others in the family and dense tables, and every scaling fit is within one "
           "family only -- no fit ever mixes them."]
    if beside is not None:
        out.append(f"Rows of {', '.join(f for f in families if f not in set(df['family']))} come from other "
                   f"runs (report.beside) and appear only in those two tables; the Findings, figures and paired "
                   f"tables are computed from the {own} family alone.")
    return out


def _paired_tables(df: pd.DataFrame, store: ItemStore, settings: ReportConfig) -> list[Block]:
    """Critical sparsity, alignment gain and static-vs-dynamic tables per headline (dataset, metric) with items."""
    bounded = {(d, m): w for d, m, w in scaling.bounded_everywhere(df)}
    keys = df.loc[df["metric"].isin(HEADLINE_ACCURACY), ["dataset", "metric"]].drop_duplicates()
    keys = [k for k in keys.sort_values(["metric", "dataset"]).itertuples(index=False, name=None)
            if store.cells(*k)]
    if not keys:
        return []
    boot = {"n_boot": min(settings.bootstrap, SECONDARY_RESAMPLES)}
    blocks = [Block("h2", "Critical sparsity"),
              Block("p", f"Highest realized sparsity on the dataset whose paired drop (sparse - dense) stays within "
                    f"-{settings.tolerance:g}, interpolated linearly between measured targets from dense at its "
                    "natural sparsity; 95% bootstrap CI over items and seeds ('none': the lowest target already "
                    "fails and dense's natural sparsity is unknown). The note lists each target's realized sparsity, "
                    "drop and CI.")]
    crit = [scaling.critical_sparsity_table(store, dataset=d, metric=m, tolerance=settings.tolerance, realized=df,
                                            **boot)
            .assign(dataset=d, metric=m) for d, m in keys if (d, m) not in bounded]
    crit = [c for c in crit if not c.empty]
    blocks.append(Block("table", table=pd.concat(crit, ignore_index=True) if crit else pd.DataFrame()))
    for d, m in keys:
        if (d, m) in bounded:
            blocks.append(Block("p", f"{d} {m}: at its {bounded[(d, m)]} in every cell -- no gain or "
                                "static-vs-dynamic table."))
            continue
        gain = scaling.alignment_gain_table(store, dataset=d, metric=m, **boot)
        if not gain.empty:
            blocks += [Block("h2", f"Alignment gain: {m} ({d})"),
                       Block("p", "aligned - base on the same items, 95% paired CI, unadjusted p (secondary: not "
                             "corrected for the many rows; the Findings hold the corrected contrasts)."),
                       Block("table", table=gain)]
        versus = scaling.alignment_gain_table(store, dataset=d, metric=m, reference=REFERENCE, **boot)
        if not versus.empty:
            blocks += [Block("h2", f"Methods vs {REFERENCE}: {m} ({d})"),
                       Block("p", f"method - {REFERENCE} on the same items, 95% paired CI, unadjusted p."),
                       Block("table", table=versus)]
        svd = scaling.static_vs_dynamic_table(store, dataset=d, metric=m, **boot)
        if not svd.empty:
            blocks += [Block("h2", f"Static vs dynamic thresholds: {m} ({d})"),
                       Block("p", "dynamic - static on the same items, 95% paired CI, unadjusted p."),
                       Block("table", table=svd)]
    return blocks


def build_blocks(df: pd.DataFrame, traces: pd.DataFrame | None, fig_dir: Path, title: str, notes: list[str],
                 *, store: ItemStore, found: list[Finding], settings: ReportConfig,
                 beside: pd.DataFrame | None = None) -> list[Block]:
    blocks = [Block("h1", title), *[Block("p", n) for n in notes],
              *findings_blocks(found, settings, bool(store), df), Block("h2", "Caveats"),
              *[Block("p", c) for c in [*caveats(df, store, found), *family_caveats(df, beside)]],
              *(alignment_cost_blocks(store, settings) if store else []), *base_preference_blocks(df, settings)]
    figs = _figures(seed_pooled(df, store), traces, fig_dir)
    if figs:
        blocks += [Block("h2", "Figures"), *figs]
    shown = df if beside is None else pd.concat([df, beside], ignore_index=True)
    blocks += [Block("h2", "Model family"), Block("table", table=family_table(shown)),
               Block("h2", "Dense results"), Block("table", table=_dense_table(shown)),
               Block("h2", "Scaling fits"),
               Block("p", "OLS of the dense, all-pairs values on log10(parameters): slope per decade with its t(n-2) "
                     "95% CI; none from fewer than 4 sizes or from a series at its floor/ceiling."),
               Block("table", table=scaling.scaling_fit_table(
                   df, metrics=sorted(set(df["metric"]) - {"annotation_saving"})))]
    blocks += _paired_tables(df, store, settings)
    ann = df[df["metric"] == "annotation_saving"]
    if not ann.empty:
        blocks += [Block("h2", "Annotation efficiency"),
                   Block("p", f"Per size: pairs {REFERENCE_LABEL} needs to reach its own all-pairs held-out accuracy / "
                         f"pairs the method needs (same interpolation on log #pairs; {REFERENCE_LABEL}'s own saving is 1 "
                         "by construction); 95% bootstrap CI over held-out pairs. Only methods trained on >= 2 subsets."),
                   Block("table", table=ann[["size", "dataset", "method", "value", "ci_low", "ci_high", "n",
                                             "note"]].rename(columns={"value": "saving"}))]
    return blocks


def params_of(df: pd.DataFrame) -> Mapping[str, float]:
    return df.drop_duplicates("size").set_index("size")["params"].to_dict()
