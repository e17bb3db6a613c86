"""The report's Findings: each primary contrast of the study config, tested on paired per-item data.

Research questions and their estimands (each Finding carries its `estimand`):
(a) does alignment survive sparsity -- `interaction`: (aligned - base)_sparse - (aligned - base)_dense, the same
    aligned methods and seeds on both sides, per mode and target, paired over items and seeds;
(b) dynamic vs static thresholds -- `nominal_target`: dynamic - static at the same target (the deployment reading),
    and `matched_sparsity`: dynamic - the static curve read at the dynamic cell's realized sparsity on the same
    domain (the mechanism reading, `report.matched`);
(c) how (a) and (b) change with model size -- `slope`: OLS over log10(params) of the per-size effect at the highest
    target, t(n-2) interval, only from >= 4 sizes off the metric's floor/ceiling;
(d) annotation efficiency -- `saving`: each rationale method's saving of preference pairs against DPO (1 = none).

A pooled contrast leaves out the sizes whose cells sit at the metric's floor or ceiling and names them; each Finding
has a per-size table (effect, items, realized sparsity on its domain).  Every contrast reports effect, 95% CI
(crossed bootstrap over items and seeds, `stats.paired`), n paired items (stated as items x sizes x seeds), and a
p-value Holm-adjusted across all primary contrasts that could be tested.  Verdict: "effect" when the CI excludes
the null (0; 1 for a saving) and the Holm p is below alpha; "inconclusive" otherwise; "not measurable" when no size
is off its floor/ceiling, there are fewer than `min_items` paired items, or the data for it was not produced -- and
then no effect is derived at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from sparsealign.align.config import BASELINE_METHOD
from sparsealign.report.items import (
    BOUNDED,
    RELATIVE_TO_BASE,
    CellKey,
    ItemStore,
    broadcast_pool,
    concat_items,
    item_kind,
)
from sparsealign.report.matched import Match, Realized, matched_static
from sparsealign.sparse.modes import DYNAMIC, STATIC
from sparsealign.stats.annotation import annotation_savings
from sparsealign.stats.multiple import holm
from sparsealign.stats.paired import bound_of, paired_difference
from sparsealign.stats.slopes import MIN_SIZES, slope_interval
from sparsealign.study.config import ContrastConfig, ReportConfig

BASE, REFERENCE = "base", BASELINE_METHOD


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
    estimand: str = ""  # interaction | nominal_target | matched_sparsity | slope | saving
    per_size: list[dict] = field(default_factory=list)  # each size's effect (or why it was left out)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


ESTIMANDS = {"alignment": "interaction", "thresholds": "nominal_target", "size": "slope", "annotation": "saving"}


def _unmeasurable(spec: ContrastConfig, contrast: str, note: str, target: float | None = None, n: int = 0,
                  estimand: str | None = None) -> Finding:
    return Finding(spec.question, contrast, spec.dataset, spec.metric, target, None, None, None, n, 0, None, "none",
                   note=note, estimand=estimand or ESTIMANDS[spec.question])


def _bound_where(arrays: list[np.ndarray], metric: str) -> str | None:
    """"floor" / "ceiling" when a 0/1 metric sits at that bound in every one of `arrays`, else None."""
    if item_kind(metric) not in BOUNDED:
        return None
    return bound_of(np.concatenate([a.ravel() for a in arrays]))


def _bound_note(arrays: list[np.ndarray], metric: str) -> str | None:
    where = _bound_where(arrays, metric)
    return None if where is None else f"{metric} is at its {where} in every cell compared"


def _methods(store: ItemStore, dataset: str, metric: str, size: str,
             at: tuple[str, float] | None = None) -> list[str]:
    """The models (base and aligned methods, all pairs) one size has cells of, optionally only at (mode, target)."""
    return sorted({c.method for c in store.cells(dataset, metric) if c.size == size and c.subset == 1.0
                   and (at is None or (c.mode, c.target) == at)})


def _pair_cells(store: ItemStore, dataset: str, metric: str, target: float,
                size: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One size's (dynamic, static) at `target`, the models evaluated in both modes pooled; None when missing."""
    methods = _methods(store, dataset, metric, size)
    dyn = [store.get(CellKey(size, x, 1.0, DYNAMIC, target), dataset, metric) for x in methods]
    sta = [store.get(CellKey(size, x, 1.0, STATIC, target), dataset, metric) for x in methods]
    keep = [(d, s) for d, s in zip(dyn, sta, strict=True) if d is not None and s is not None]
    a, b = broadcast_pool([d for d, _ in keep]), broadcast_pool([s for _, s in keep])
    return None if a is None or b is None else (a, b)


@dataclass
class _Arm:
    """One size's paired (A, B) of a contrast, the raw cells behind them (for the floor check) and what the
    per-size table shows beside its effect."""
    size: str
    a: np.ndarray
    b: np.ndarray
    raw: list[np.ndarray]
    info: dict = field(default_factory=dict)


def _pooled(spec: ContrastConfig, question: str, estimand: str, label: str, target: float | None, arms: list[_Arm],
            skipped: dict[str, str], settings: ReportConfig, seed: int) -> Finding:
    """Pool the sizes' arms into one paired contrast: sizes whose cells sit at the metric's floor or ceiling are
    left out and named (they would add structural zeros), and so are sizes that could not be paired."""
    floored = {arm.size: f"{spec.metric} at its {where}" for arm in arms
               if (where := _bound_where(arm.raw, spec.metric))}
    kept = [arm for arm in arms if arm.size not in floored]
    left = {**floored, **skipped}
    left_out = "; left out: " + ", ".join(f"{k} ({v})" for k, v in left.items()) if left else ""
    table = [{"size": arm.size, "effect": float(np.mean(arm.a) - np.mean(arm.b)), "items": arm.a.shape[1],
              **arm.info} for arm in kept] + [{"size": k, "left out": v} for k, v in left.items()]
    a, b = concat_items([arm.a for arm in kept]), concat_items([arm.b for arm in kept])
    if a is None or b is None:
        note = "no size is measurable" if left else "no paired cells in this study"
        return replace(_unmeasurable(spec, label, note + left_out, target, estimand=estimand),
                       per_size=table)
    if a.shape[1] < settings.min_items:
        return replace(_unmeasurable(spec, label, f"only {a.shape[1]} paired items (< {settings.min_items})"
                                     f"{left_out}", target, a.shape[1], estimand=estimand),
                       per_size=table)
    d = paired_difference(a, b, n_resamples=settings.bootstrap, seed=seed)
    items = sorted({arm.a.shape[1] for arm in kept})
    per = f"{items[0]}" if len(items) == 1 else "/".join(str(arm.a.shape[1]) for arm in kept)
    note = (f"{per} items x {len(kept)} size(s) ({', '.join(arm.size for arm in kept)}) x {d.seeds} seed(s)"
            f"{left_out}")
    return Finding(question, label, spec.dataset, spec.metric, target, d.estimate, d.low, d.high, d.n, d.seeds,
                   d.p, d.test, note=note, estimand=estimand, per_size=table)


def _realized_info(realized: Realized, size: str, dataset: str, target: float, modes: tuple[str, ...],
                   methods: list[str]) -> dict:
    """Realized sparsity on `dataset` of each mode's cells at `target` (mean over the methods pooled)."""
    out = {}
    for mode in modes:
        vals = [v for m in methods if (v := realized.get((CellKey(size, m, 1.0, mode, target), dataset))) is not None]
        if vals:
            out[f"{mode} realized"] = round(float(np.mean(vals)), 4)
    return out


def _nominal(store: ItemStore, spec: ContrastConfig, target: float, realized: Realized, settings: ReportConfig,
             seed: int) -> Finding:
    """Dynamic - static at the same nominal target (the deployment reading), every model of a size pooled; the
    realized sparsity of both on this domain is shown per size, since it need not be equal."""
    label = f"{DYNAMIC} - {STATIC} at target {target:g}, {spec.dataset} {spec.metric}"
    arms, skipped = [], {}
    for size in store.sizes():
        pair = _pair_cells(store, spec.dataset, spec.metric, target, size)
        if pair is None:
            continue
        methods = _methods(store, spec.dataset, spec.metric, size)
        arms.append(_Arm(size, *pair, raw=list(pair),
                         info=_realized_info(realized, size, spec.dataset, target, (DYNAMIC, STATIC), methods)))
    return _pooled(spec, "thresholds", "nominal_target", label, target, arms, skipped, settings, seed)


def _matched(store: ItemStore, spec: ContrastConfig, target: float, realized: Realized, settings: ReportConfig,
             seed: int) -> Finding:
    """Dynamic at `target` - static read at the dynamic cell's realized sparsity on the same domain
    (`report.matched`), every model of a size pooled: the controller's own effect, the sparsity gap removed."""
    label = f"{DYNAMIC} - {STATIC} at equal realized sparsity (dynamic target {target:g}), {spec.dataset} {spec.metric}"
    arms, skipped = [], {}
    for size in store.sizes():
        methods = _methods(store, spec.dataset, spec.metric, size, at=(DYNAMIC, target))
        if not methods:
            continue
        matches = {m: matched_static(store, realized, size, m, spec.dataset, spec.metric, target) for m in methods}
        ok = {m: x for m, x in matches.items() if isinstance(x, Match)}
        if len(ok) < len(methods):
            skipped[size] = "; ".join(f"{m}: {x}" for m, x in matches.items() if not isinstance(x, Match))
            continue
        a = broadcast_pool([x.dynamic for x in ok.values()])
        b = broadcast_pool([x.static for x in ok.values()])
        if a is None or b is None:
            skipped[size] = "seed counts differ between models"
            continue
        info = {"dynamic realized": round(float(np.mean([x.realized for x in ok.values()])), 4),
                "static read at": "; ".join(f"{m}: {x.between}" for m, x in ok.items())}
        arms.append(_Arm(size, a, b, raw=[a, b], info=info))
    return _pooled(spec, "thresholds", "matched_sparsity", label, target, arms, skipped, settings, seed)


def _interaction_cells(store: ItemStore, dataset: str, metric: str, mode: str, target: float,
                       size: str) -> list[np.ndarray] | None:
    """One size's [aligned sparse, aligned dense, base sparse, base dense] (seeds, items), the aligned side pooled
    over the methods evaluated at (mode, target) -- the same methods, seeds and items on both sides."""
    def cell(method: str, sparse: bool) -> np.ndarray | None:
        return store.get(CellKey(size, method, 1.0, mode if sparse else "dense", target if sparse else 0.0),
                         dataset, metric)

    methods = [m for m in _methods(store, dataset, metric, size, at=(mode, target)) if m != BASE]
    pairs = [(s, d) for m in methods if (s := cell(m, True)) is not None and (d := cell(m, False)) is not None
             and s.shape == d.shape]
    if not pairs:
        return None
    if item_kind(metric) in RELATIVE_TO_BASE:  # the base model's reward relative to itself: 0 on every item
        base = np.zeros((1, pairs[0][0].shape[1]))
        return [broadcast_pool([s for s, _ in pairs]), broadcast_pool([d for _, d in pairs]), base, base]
    out = [broadcast_pool([s for s, _ in pairs]), broadcast_pool([d for _, d in pairs]), cell(BASE, True),
           cell(BASE, False)]
    return None if any(a is None for a in out) else out


def _interaction(store: ItemStore, spec: ContrastConfig, mode: str, target: float, realized: Realized,
                 settings: ReportConfig, seed: int) -> Finding:
    """(aligned - base)_sparse - (aligned - base)_dense = (aligned_sparse - aligned_dense) - (base_sparse -
    base_dense): each side a per-item, per-seed difference of the same model, so the crossed bootstrap and the
    sign-flip test apply unchanged.  The per-size table shows aligned - base at dense and at the sparse setting."""
    label = f"(aligned - base) at {mode} {target:g} minus at dense, {spec.dataset} {spec.metric}"
    arms = []
    for size in store.sizes():
        cells = _interaction_cells(store, spec.dataset, spec.metric, mode, target, size)
        if cells is None:
            continue
        a_s, a_d, b_s, b_d = (float(np.mean(c)) for c in cells)
        methods = _methods(store, spec.dataset, spec.metric, size)
        info = {"aligned - base, dense": round(a_d - b_d, 4), "aligned - base, sparse": round(a_s - b_s, 4),
                **_realized_info(realized, size, spec.dataset, target, (mode,), methods)}
        raw = cells[:2] if item_kind(spec.metric) in RELATIVE_TO_BASE else cells  # the floor check: measured cells
        arms.append(_Arm(size, cells[0] - cells[1], cells[2] - cells[3], raw=raw, info=info))
    return _pooled(spec, "alignment", "interaction", label, target, arms, {}, settings, seed)


def _size_effect(store: ItemStore, spec: ContrastConfig, params: Mapping[str, float], settings: ReportConfig,
                 seed: int) -> Finding:
    of = spec.of or "alignment"
    targets = set(store.targets(spec.mode))
    if of == "thresholds":
        targets = set(store.targets(DYNAMIC)) & set(store.targets(STATIC))
    target = max(targets, default=None)
    effect = "(aligned - base) sparse - dense" if of == "alignment" else f"{DYNAMIC} - {STATIC}"
    at = "the highest target" if target is None else f"{target:g}"
    label = f"slope of ({effect}, {spec.dataset} {spec.metric} @ {at}) per decade of parameters"
    if target is None:
        return _unmeasurable(spec, label, "no sparse cells", target)
    xs, ys, n, table, floored = [], [], 0, [], []
    for size in store.sizes():
        if not math.isfinite(params.get(size, math.nan)):
            continue
        if of == "alignment":
            cells = _interaction_cells(store, spec.dataset, spec.metric, spec.mode, target, size)
            pair = None if cells is None else (cells[0] - cells[1], cells[2] - cells[3])
        else:
            cells = _pair_cells(store, spec.dataset, spec.metric, target, size)
            pair = cells
        if pair is None:
            continue
        if _bound_where(list(cells), spec.metric):  # a floor size's effect is 0 by construction: it makes slopes
            floored.append(size)
            continue
        xs.append(params[size])
        ys.append(float(np.mean(pair[0]) - np.mean(pair[1])))
        n += pair[0].shape[1]
        table.append({"size": size, "params": params[size], "effect": ys[-1], "items": pair[0].shape[1]})
    table += [{"size": size, "left out": f"{spec.metric} at its floor/ceiling"} for size in floored]
    left = f"; left out at floor/ceiling: {', '.join(floored)}" if floored else ""
    if not xs:
        return replace(_unmeasurable(spec, label, ("every size is at floor/ceiling" if floored else
                                                   "no paired cells in this study") + left, target, n),
                       per_size=table)
    fit = slope_interval(xs, ys)
    if fit is None:
        return replace(_unmeasurable(spec, label, f"{len(xs)} non-floor size(s): a slope needs at least {MIN_SIZES}"
                                     f"{left}", target, n), per_size=table)
    return Finding("size", label, spec.dataset, spec.metric, target, fit.slope, fit.low, fit.high, n, 1, fit.p,
                   "ols-t", note=f"{len(xs)} sizes, t({len(xs) - 2}) interval{left}", estimand="slope",
                   per_size=table)


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
                     *, seed: int = 0, realized: Realized | None = None) -> list[Finding]:
    """Every primary contrast of `settings`, expanded over modes and targets, with Holm-adjusted p and verdicts.
    `realized`: realized sparsity per (cell, dataset) (`report.matched.realized_by_cell`) -- without it the
    matched-sparsity contrasts are not measurable."""
    settings, realized = settings or ReportConfig(), realized or {}
    out: list[Finding] = []
    for spec in settings.primary_contrasts:
        if spec.question == "alignment":
            out += [_interaction(store, spec, mode, t, realized, settings, seed)
                    for mode in (STATIC, DYNAMIC) for t in store.targets(mode) if t > 0] or [
                _unmeasurable(spec, f"(aligned - base) sparse minus dense, {spec.dataset} {spec.metric}",
                              "no sparse cells")]
        elif spec.question == "thresholds":
            targets = sorted(set(store.targets(DYNAMIC)) & set(store.targets(STATIC)))
            out += [f for t in targets for f in (_nominal(store, spec, t, realized, settings, seed),
                                                 _matched(store, spec, t, realized, settings, seed))] or [
                _unmeasurable(spec, f"{DYNAMIC} - {STATIC}, {spec.dataset} {spec.metric}", "needs both modes")]
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
