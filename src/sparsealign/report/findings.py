"""The report's Findings: each primary contrast of the study config, tested on paired per-item data.

Research questions: (a) does alignment survive sparsity -- estimand `interaction`: (aligned - base)_sparse -
(aligned - base)_dense, the same aligned methods and seeds on both sides, per mode and target, paired over items and
seeds, sizes at the metric's floor or ceiling left out and named; beside it aligned - base at each setting
(`difference`); (b) dynamic minus static thresholds at every target, pooled over all models;
(c) how (a) and (b) change with model size -- OLS slope over log10(params) of the per-size effect at the highest
target, t(n-2) interval, none from fewer than 4 sizes; (d) annotation efficiency -- each rationale method's saving of
preference pairs against DPO (1 = none).

Every contrast reports effect, 95% CI (crossed bootstrap over items and seeds, `stats.paired`), n paired items, and
a p-value Holm-adjusted across all primary contrasts that could be tested.  Verdict: "effect" when the CI excludes
the null (0; 1 for a saving) and the Holm p is below alpha; "inconclusive" otherwise; "not measurable" when the metric
sits at its floor or ceiling in every cell involved, there are fewer than `min_items` paired items, or the data
for it was not produced -- and then no effect is derived at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from sparsealign.align.config import BASELINE_METHOD
from sparsealign.report.items import BOUNDED, CellKey, ItemStore, broadcast_pool, concat_items, item_kind
from sparsealign.sparse.modes import DYNAMIC, STATIC
from sparsealign.stats.annotation import annotation_savings
from sparsealign.stats.multiple import holm
from sparsealign.stats.paired import bound_of, paired_difference
from sparsealign.stats.slopes import MIN_SIZES, slope_interval
from sparsealign.study.config import ContrastConfig, ReportConfig

BASE, REFERENCE = "base", BASELINE_METHOD
QUESTIONS = {
    "alignment": "(a) Does alignment survive sparsity?",
    "thresholds": f"(b) {DYNAMIC.capitalize()} vs {STATIC} thresholds",
    "size": "(c) How do (a) and (b) change with model size?",
    "annotation": "(d) Annotation efficiency of rationale methods",
}


@dataclass
class Finding:
    question: str  # alignment | thresholds | size | annotation
    contrast: str  # what is compared, in words
    dataset: str
    metric: str
    target: float | None
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    n: int  # paired items behind the effect
    seeds: int
    p: float | None  # unadjusted, two-sided
    test: str
    null: float = 0.0
    p_holm: float | None = None
    verdict: str = "not measurable"
    note: str = ""
    estimand: str = ""  # difference | interaction | nominal_target | slope | saving

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


ESTIMANDS = {"alignment": "difference", "thresholds": "nominal_target", "size": "slope", "annotation": "saving"}


def _unmeasurable(spec: ContrastConfig, contrast: str, note: str, target: float | None = None, n: int = 0,
                  estimand: str | None = None) -> Finding:
    return Finding(spec.question, contrast, spec.dataset, spec.metric, target, None, None, None, n, 0, None, "none",
                   note=note, estimand=estimand or ESTIMANDS[spec.question])


def _bound_note(arrays: list[np.ndarray], metric: str) -> str | None:
    if item_kind(metric) not in BOUNDED:
        return None
    where = bound_of(np.concatenate([a.ravel() for a in arrays]))
    return None if where is None else f"{metric} is at its {where} in every cell compared"


def _pair_cells(store: ItemStore, question: str, dataset: str, metric: str, mode: str, target: float,
                size: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One size's (A, B) for question `alignment` (aligned methods pooled vs base) or `thresholds` (dynamic vs
    static, every model pooled) at `target`; None when the cells are missing."""
    cells = [c for c in store.cells(dataset, metric) if c.size == size and c.subset == 1.0]
    if question == "alignment":
        m = "dense" if target == 0 else mode
        base = store.get(CellKey(size, BASE, 1.0, m, target), dataset, metric)
        aligned = [store.get(c, dataset, metric) for c in cells
                   if c.method != BASE and c.mode == m and c.target == target]
        a = broadcast_pool(aligned)
        return None if base is None or a is None else (a, base)
    methods = sorted({c.method for c in cells})
    dyn = [store.get(CellKey(size, x, 1.0, DYNAMIC, target), dataset, metric) for x in methods]
    sta = [store.get(CellKey(size, x, 1.0, STATIC, target), dataset, metric) for x in methods]
    keep = [(d, s) for d, s in zip(dyn, sta, strict=True) if d is not None and s is not None]
    a, b = broadcast_pool([d for d, _ in keep]), broadcast_pool([s for _, s in keep])
    return None if a is None or b is None else (a, b)


def _difference(store: ItemStore, spec: ContrastConfig, question: str, target: float, settings: ReportConfig,
                label: str, seed: int) -> Finding:
    pairs = [p for s in store.sizes() if (p := _pair_cells(store, question, spec.dataset, spec.metric, spec.mode,
                                                           target, s)) is not None]
    a, b = concat_items([p[0] for p in pairs]), concat_items([p[1] for p in pairs])
    if a is None or b is None:
        return _unmeasurable(spec, label, "no paired cells in this study", target)
    note = _bound_note([a, b], spec.metric)
    if note or a.shape[1] < settings.min_items:
        return _unmeasurable(spec, label, note or f"only {a.shape[1]} paired items (< {settings.min_items})",
                             target, a.shape[1])
    d = paired_difference(a, b, n_resamples=settings.bootstrap, seed=seed)
    return Finding(question, label, spec.dataset, spec.metric, target, d.estimate, d.low, d.high, d.n, d.seeds,
                   d.p, d.test, note=f"{len(pairs)} size(s)",
                   estimand=ESTIMANDS[question])


def _interaction_cells(store: ItemStore, dataset: str, metric: str, mode: str, target: float,
                       size: str) -> list[np.ndarray] | None:
    """One size's [aligned sparse, aligned dense, base sparse, base dense] (seeds, items), the aligned side pooled
    over the methods evaluated at (mode, target) -- the same methods, seeds and items on both sides."""
    def cell(method: str, sparse: bool) -> np.ndarray | None:
        return store.get(CellKey(size, method, 1.0, mode if sparse else "dense", target if sparse else 0.0),
                         dataset, metric)

    methods = sorted({c.method for c in store.cells(dataset, metric) if c.size == size and c.subset == 1.0
                      and c.method != BASE and c.mode == mode and c.target == target})
    pairs = [(s, d) for m in methods if (s := cell(m, True)) is not None and (d := cell(m, False)) is not None
             and s.shape == d.shape]
    out = [broadcast_pool([s for s, _ in pairs]), broadcast_pool([d for _, d in pairs]), cell(BASE, True),
           cell(BASE, False)]
    return None if not pairs or any(a is None for a in out) else out


def _interaction(store: ItemStore, spec: ContrastConfig, mode: str, target: float, settings: ReportConfig,
                 seed: int) -> Finding:
    """(aligned - base)_sparse - (aligned - base)_dense = (aligned_sparse - aligned_dense) - (base_sparse -
    base_dense): each side a per-item, per-seed difference of the same model, so the crossed bootstrap and the
    sign-flip test apply unchanged."""
    label = f"(aligned - base) at {mode} {target:g} minus at dense, {spec.dataset} {spec.metric}"
    kept, floored, arrays = [], [], []
    for size in store.sizes():
        cells = _interaction_cells(store, spec.dataset, spec.metric, mode, target, size)
        if cells is None:
            continue
        if _bound_note(cells, spec.metric):
            floored.append(size)
            continue
        kept.append(size)
        arrays.append(cells)
    left_out = f"; left out at floor/ceiling: {', '.join(floored)}" if floored else ""
    if not arrays:
        note = f"{spec.metric} is at its floor or ceiling at every size" if floored else "no paired cells"
        return _unmeasurable(spec, label, note, target, estimand="interaction")
    a = concat_items([c[0] - c[1] for c in arrays])
    b = concat_items([c[2] - c[3] for c in arrays])
    if a is None or b is None or a.shape[1] < settings.min_items:
        n = 0 if a is None else a.shape[1]
        return _unmeasurable(spec, label, f"only {n} paired items (< {settings.min_items}){left_out}", target,
                             n, estimand="interaction")
    d = paired_difference(a, b, n_resamples=settings.bootstrap, seed=seed)
    note = (f"{d.n // len(kept)} items x {len(kept)} size(s) x {d.seeds} seed(s) ({', '.join(kept)}){left_out}")
    return Finding("alignment", label, spec.dataset, spec.metric, target, d.estimate, d.low, d.high, d.n, d.seeds,
                   d.p, d.test, note=note, estimand="interaction")


def _size_effect(store: ItemStore, spec: ContrastConfig, params: Mapping[str, float], settings: ReportConfig,
                 seed: int) -> Finding:
    of = spec.of or "alignment"
    targets = set(store.targets(spec.mode))
    if of == "thresholds":
        targets = set(store.targets(DYNAMIC)) & set(store.targets(STATIC))
    target = max(targets, default=None)
    effect = "aligned - base" if of == "alignment" else f"{DYNAMIC} - {STATIC}"
    at = "the highest target" if target is None else f"{target:g}"
    label = f"slope of ({effect}, {spec.dataset} {spec.metric} @ {at}) per decade of parameters"
    if target is None:
        return _unmeasurable(spec, label, "no sparse cells", target)
    xs, ys, n, arrays = [], [], 0, []
    for size in store.sizes():
        p = _pair_cells(store, of, spec.dataset, spec.metric, spec.mode, target, size)
        if p is None or not math.isfinite(params.get(size, math.nan)):
            continue
        xs.append(params[size])
        ys.append(float(np.mean(p[0]) - np.mean(p[1])))
        n += p[0].shape[1]
        arrays += list(p)
    note = _bound_note(arrays, spec.metric) if arrays else "no paired cells in this study"
    if note:
        return _unmeasurable(spec, label, note, target, n)
    fit = slope_interval(xs, ys)
    if fit is None:
        return _unmeasurable(spec, label, f"{len(xs)} size(s): a slope needs at least {MIN_SIZES}", target, n)
    return Finding("size", label, spec.dataset, spec.metric, target, fit.slope, fit.low, fit.high, n, 1, fit.p,
                   "ols-t", note=f"{len(xs)} sizes, t({len(xs) - 2}) interval", estimand="slope")


def annotation_curves(store: ItemStore, dataset: str, metric: str,
                      sizes: list[str] | None = None) -> dict[tuple[str, float], np.ndarray]:
    """(method, subset) -> (seeds, items) held-out correctness of the dense aligned models, items joined over the
    sizes that have every (method, subset) of the others (so the curves stay paired)."""
    cells = [c for c in store.cells(dataset, metric) if c.mode == "dense" and c.method != BASE
             and (sizes is None or c.size in sizes)]
    by_size: dict[str, set[tuple[str, float]]] = {}
    for c in cells:
        by_size.setdefault(c.size, set()).add((c.method, c.subset))
    if not by_size:
        return {}
    common = set.intersection(*by_size.values())
    out = {}
    for key in sorted(common):
        joined = concat_items([store.get(CellKey(s, key[0], key[1], "dense", 0.0), dataset, metric)
                               for s in sorted(by_size)])
        if joined is not None:
            out[key] = joined
    return out


def _annotation(store: ItemStore, spec: ContrastConfig, settings: ReportConfig, seed: int) -> list[Finding]:
    label = f"pairs saved against {REFERENCE} (ratio; 1 = none)"
    curves = annotation_curves(store, spec.dataset, spec.metric)
    note = _bound_note(list(curves.values()), spec.metric) if curves else "no subset-trained models in this study"
    n = next(iter(curves.values())).shape[1] if curves else 0
    if not note and n < settings.min_items:
        note = f"only {n} paired items (< {settings.min_items})"
    savings = [] if note else annotation_savings(curves, reference=REFERENCE, n_resamples=settings.bootstrap,
                                                 seed=seed)
    others = [s for s in savings if s.method != REFERENCE]
    ref = next((s for s in savings if s.method == REFERENCE), None)
    if ref is not None and ref.status == "reached_at_smallest":  # no part of DPO's curve lies below its target
        note = f"{REFERENCE} already reaches its all-pairs accuracy with the smallest subset: nothing to save against"
        others = []
    if not others:
        return [_unmeasurable(spec, label, note or f"no method besides {REFERENCE} was trained on >= 2 subsets",
                              n=n)]
    return [Finding("annotation", f"{s.method}: {label}", spec.dataset, spec.metric, None, s.saving, s.ci_low,
                    s.ci_high, s.n, next(iter(curves.values())).shape[0], s.p, "bootstrap", null=1.0,
                    note=f"{s.status}; target reached in {s.reached_fraction:.0%} of replicates", estimand="saving")
            for s in others]


def compute_findings(store: ItemStore, params: Mapping[str, float], settings: ReportConfig | None = None,
                     *, seed: int = 0) -> list[Finding]:
    """Every primary contrast of `settings`, expanded over targets / methods, with Holm-adjusted p and verdicts."""
    settings = settings or ReportConfig()
    out: list[Finding] = []
    for spec in settings.primary_contrasts:
        what = f"{spec.dataset} {spec.metric}"
        if spec.question == "alignment":
            for t in [0.0, *(x for x in store.targets(spec.mode) if x > 0)]:
                where = "dense" if t == 0 else f"{spec.mode} @ {t:g}"
                out.append(_difference(store, spec, "alignment", t, settings, f"aligned - base, {what}, {where}",
                                       seed))
            out += [_interaction(store, spec, mode, t, settings, seed)
                    for mode in (STATIC, DYNAMIC) for t in store.targets(mode) if t > 0]
        elif spec.question == "thresholds":
            targets = sorted(set(store.targets(DYNAMIC)) & set(store.targets(STATIC)))
            vs = f"{DYNAMIC} - {STATIC}"
            out += [_difference(store, spec, "thresholds", t, settings, f"{vs}, {what}, @ {t:g}", seed)
                    for t in targets] or [_unmeasurable(spec, f"{vs}, {what}", "needs both modes")]
        elif spec.question == "size":
            out.append(_size_effect(store, spec, params, settings, seed))
        else:
            out += _annotation(store, spec, settings, seed)
    adjusted = holm([f.p if f.p is not None and f.effect is not None else math.nan for f in out])
    for f, p in zip(out, adjusted, strict=True):
        if f.effect is None or math.isnan(p):
            f.verdict, f.p_holm = "not measurable", None
            continue
        f.p_holm = p
        covers = f.ci_low is None or f.ci_high is None or f.ci_low <= f.null <= f.ci_high
        f.verdict = "effect" if not covers and p < settings.alpha else "inconclusive"
    return out


def sentence(f: Finding) -> str:
    if f.verdict == "not measurable":
        return f"{f.contrast}: not measurable ({f.note})."
    seeds = f", {f.seeds} seeds" if f.seeds > 1 else ""
    null = "" if f.null == 0 else f" (null {f.null:g})"
    bound = " (a lower bound: reached at the smallest subset)" if "reached_at_smallest" in f.note else ""
    return (f"{f.contrast}: {f.effect:+.3f}{null}{bound}, 95% CI [{f.ci_low:+.3f}, {f.ci_high:+.3f}], n = {f.n} "
            f"paired items{seeds}, Holm p = {f.p_holm:.2g} ({f.test}) -- {f.verdict}.")


def _unmeasured_sentence(rows: list[Finding]) -> str:
    where = ", ".join("dense" if f.target == 0 else f"{f.target:g}" for f in rows if f.target is not None)
    return f"{rows[0].dataset} {rows[0].metric}{f' ({where})' if where else ''}: not measurable -- {rows[0].note}."


def paragraphs(findings: list[Finding]) -> list[tuple[str, str]]:
    """(question heading, one paragraph) per research question, in (a)-(d) order; the not-measurable contrasts of
    one (dataset, metric, reason) are said once, with their targets, after the measured ones."""
    out = []
    for q, heading in QUESTIONS.items():
        rows = [f for f in findings if f.question == q]
        groups: dict[tuple[str, str, str], list[Finding]] = {}
        for f in rows:
            if f.verdict == "not measurable" and q in ("alignment", "thresholds"):
                groups.setdefault((f.dataset, f.metric, f.note), []).append(f)
        text = [sentence(f) for f in rows if not (f.verdict == "not measurable" and q in ("alignment", "thresholds"))]
        text += [_unmeasured_sentence(g) for g in groups.values()]
        if text:
            out.append((heading, " ".join(text)))
    return out
