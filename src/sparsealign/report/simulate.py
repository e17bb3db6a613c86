"""Simulated studies for validating the Findings pipeline: per-task 0/1 outcomes with the real item structure.

Generative model (a threshold / probit model), per size k and task i, every component N(0, 1) and independent of
the others unless said:

    T[k, i]   task difficulty, correlated `size_corr` across sizes (the same tasks for every size)
    G[k, i]   the alignment perturbation all aligned models share (every method and seed), `size_corr_change`
    U[m, r, i]  the seed-specific part of aligned method m, seed r
    D[k, i]   the sparsity damage of a task, shared by every model of the size and by both threshold modes,
              `size_corr_change` across sizes
    E[cell, i] cell noise (greedy decoding of one model under one sparsifier)

    dense latent   L[model, dense] = sqrt(1 - mu) T + sqrt(mu) M[model],  M[base] own noise,
                                     M[m, r] = sqrt(kappa) G + sqrt(1 - kappa) U[m, r]
    sparse latent  L[model, mode]  = sqrt(keep) L[model, dense] + sqrt(damage) D + sqrt(1 - keep - damage) E

and task i passes in a cell when L > Phi^-1(1 - rate(cell) - seed shift), so each cell's expected pass rate is its
`rate`: base dense at the size's measured rate, sparse = dense x the mode's relative rate, aligned = base + the
alignment lift.  Each aligned seed adds a seed-level shift of its pass rate (shared by its cells, plus a part of
its own in every cell).  Sizes at rate 0 (the metric's floor) give all-zero items, as the real ones do.

A planted `effect` (pass-rate points, on every size off the floor): `interaction` -- aligned models lose `effect`
more under sparsity (`mode`, every target) than the base does; `difference` -- aligned - base at dense; `thresholds`
-- dynamic - static of every model grows by `effect`.  `detection_rate` draws studies, runs the report's Findings on
each (`report.findings.compute_findings`, or another callable) and counts the verdict "effect" on the contrast in
question, with its Wilson interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import norm

from sparsealign.report.findings import compute_findings
from sparsealign.report.items import ItemStore
from sparsealign.sparse.modes import DYNAMIC, STATIC
from sparsealign.stats.intervals import Interval, wilson_interval
from sparsealign.study.config import ReportConfig

CONTRASTS = ("interaction", "difference", "thresholds")
DATASET, METRIC = "generated", "pass@1"

# Micro family (docs/design.md): non-embedding parameters ("Natural sparsity of the micro family") and dense
# generated-task pass@1 of the base model on the 200 default tasks: micro-xxs and micro-xs 0 (floor), micro-s 26/200
# ("Alignment hyper-parameters": "micro-s 0.12 (26 tasks)"), micro-m 0.635 (/tmp/dflt partial default run, 127/200).
MICRO_SIZES: dict[str, tuple[float, float]] = {
    "micro-xxs": (8_272, 0.0), "micro-xs": (32_928, 0.0), "micro-s": (197_056, 0.13), "micro-m": (1_049_728, 0.635)}
# (dataset, metric) at the floor for every micro model (docs/design.md: MBPP pass@1): not measurable, out of the Holm
# family
MICRO_FLOOR = (("mbpp", "pass@1"),)


@dataclass(frozen=True)
class ItemModel:
    """Latent correlations and rates, estimated from the real per-item arrays of a partial default run (micro-m,
    base and 3 DPO seeds x dense / static 0.9 / dynamic 0.9, 200 generated tasks; /tmp/dflt/runs/default/eval):
    tetrachoric correlations between cells, averaged, and method-of-moments seed variances."""

    # 1 - mu = corr(base, aligned) at dense: tetrachoric 0.84 / 0.98 / 0.95 for the three DPO seeds (discordance
    # 17.5 / 6 / 10%) -> 0.92
    mu: float = 0.08
    # corr(aligned seed r, seed r') = 1 - mu + mu kappa: tetrachoric 0.93 / 0.98 / 0.99 (discordance 11.5 / 7.5 / 4%)
    # -> 0.965 -> kappa = 0.56
    kappa: float = 0.56
    # keep = corr(dense, sparse) of one model, squared-root scale: dense vs static tetrachoric 0.39 / 0.41 / 0.24 /
    # 0.19 (base, 3 seeds; discordance 43-51%) -> sqrt(keep) 0.31; dense vs dynamic 0.84 / 0.73 / 0.66 / 0.68
    # (discordance 21-28%) -> sqrt(keep) 0.73.  damage: corr(base, aligned) under the mode = keep (1 - mu) + damage:
    # static 0.90 / 0.95 / 0.92 -> 0.83; dynamic 0.59 / 0.83 / 0.80 -> 0.25 (the rest is cell noise: the dynamic
    # controller's outputs vary more between models).  The damage is one component for both modes (corr 1; the data's
    # static-dynamic tetrachoric 0.79 would ask for more than 1).
    keep: dict[str, float] = field(default_factory=lambda: {STATIC: 0.096, DYNAMIC: 0.53})
    damage: dict[str, float] = field(default_factory=lambda: {STATIC: 0.83, DYNAMIC: 0.25})
    # sparse pass rate / dense pass rate of the same model at target 0.9: base micro-m 0.355 / 0.635 (static),
    # 0.505 / 0.635 (dynamic); applied to every size and target
    relative_rate: dict[str, float] = field(default_factory=lambda: {STATIC: 0.559, DYNAMIC: 0.795})
    # aligned - base dense pass rate in the background (points): 0 here; the real default has +4.8 (DPO 0.72 / 0.665 /
    # 0.665 against 0.635) -- a planted `difference` replaces it
    align_lift: float = 0.0
    # seed-level shifts of an aligned seed's pass rate, latent units (x ~0.36 = pass-rate points near 0.6): the
    # between-seed sd of the DPO seeds' pass rates beyond what their item discordance explains: interaction per seed
    # -1.5 / -9 / -4 points (static), +1 / 0 / +4 (dynamic) against ~2.2 points from items alone -> 1.55 points per
    # (seed, cell); dense rates 0.72 / 0.665 / 0.665 (sd 3.2 points, 1.4 from items) -> 2.3 points shared by a seed's
    # cells.  Three seeds: these are rough.
    seed_sd: float = 0.065
    seed_cell_sd: float = 0.042
    # task difficulty across sizes: not measurable from the partial run (micro-m only); an assumption -- sizes of
    # one family pretrained on one corpus find the same tasks easy.  size_corr_change: the same for the task-level
    # alignment and sparsity components (assumed weaker)
    size_corr: float = 0.8
    size_corr_change: float = 0.5


def latent_correlations(model: ItemModel, mode: str = DYNAMIC) -> dict[str, float]:
    """The latent (tetrachoric) correlations the model implies between cells of one size: what a large draw
    should reproduce."""
    m, keep, dmg = model, model.keep[mode], model.damage[mode]
    return {"base~aligned dense": 1 - m.mu, "seed~seed dense": 1 - m.mu + m.mu * m.kappa,
            f"dense~{mode} same model": float(np.sqrt(keep)),
            f"base~aligned {mode}": keep * (1 - m.mu) + dmg,
            f"seed~seed {mode}": keep * (1 - m.mu + m.mu * m.kappa) + dmg}


@dataclass(frozen=True)
class Design:
    """What the study measures: tasks per cell, sizes (name, params, base dense pass@1), aligned methods and
    seeds, the methods evaluated sparse, threshold modes and targets, bootstrap replicates, and how many other
    primary contrasts share the Holm family (each simulated as a null test)."""

    tasks: int = 200
    sizes: tuple[tuple[str, float, float], ...] = tuple((k, p, r) for k, (p, r) in MICRO_SIZES.items())
    seeds: int = 3
    methods: tuple[str, ...] = ("dpo", "rdpo")
    sparse_methods: tuple[str, ...] = ("dpo",)
    modes: tuple[str, ...] = (STATIC, DYNAMIC)
    targets: tuple[float, ...] = (0.9,)
    bootstrap: int = 200
    other_tests: int = 6
    mode: str = DYNAMIC  # the threshold mode of the alignment contrasts (the study's primary one)

    def with_(self, **changes: Any) -> Design:
        return replace(self, **changes)


def design_of(study: Any, *, floor: Sequence[tuple[str, str]] = MICRO_FLOOR,
              rates: dict[str, tuple[float, float]] | None = None, bootstrap: int = 200) -> Design:
    """The `Design` of a loaded study config (`study.config.load_study_config`): tasks = evaluation.generated_tasks,
    seeds = alignment.seeds, methods, sparse methods, modes and targets, and the Holm family's other tests.

    Sizes and their rates come from `rates` (name -> (params, base dense pass@1); default: the micro family's).
    Other tests counted per primary contrast not on generated pass@1 and not at a floor (`floor`): alignment, one
    interaction per mode and target; thresholds, a nominal and a matched-sparsity difference per target; size, a
    slope; annotation, one saving per subset method besides DPO.  Plus the matched-sparsity difference of the
    generated thresholds contrast (it needs realized sparsity, which a simulation has not)."""
    rates = rates or MICRO_SIZES
    sp = study.sparsity
    modes, targets = tuple(sp.modes), tuple(t for t in sp.targets if t > 0)
    other = 0
    for c in study.report.primary_contrasts:
        if (c.dataset, c.metric) in floor:
            continue
        ours = c.dataset == DATASET and c.metric == METRIC
        if c.question == "alignment" and not ours:
            other += len(modes) * len(targets)
        elif c.question == "thresholds":
            other += len(targets) if ours else 2 * len(targets)
        elif c.question == "size" and not ours:
            other += 1
        elif c.question == "annotation":
            other += len([m for m in study.alignment.subset_methods if m != "dpo"])
    sizes = tuple((k, *rates[k]) for k in rates)
    return Design(tasks=study.evaluation.generated_tasks, sizes=sizes, seeds=study.alignment.seeds,
                  methods=tuple(study.alignment.methods), sparse_methods=tuple(sp.methods or study.alignment.methods),
                  modes=modes, targets=targets, bootstrap=bootstrap, other_tests=other)


def _key(size: str, method: str, seed: int, mode: str, target: float) -> str:
    s = f"s{seed}/" if seed else ""
    return f"{size}/{method}/f1.000/{s}{mode}/{target:.2f}"


def _mix(rng: np.random.Generator, shared: np.ndarray, corr: float) -> np.ndarray:
    return np.sqrt(corr) * shared + np.sqrt(1 - corr) * rng.standard_normal(shared.shape)


def _passed(latent: np.ndarray, rate: float) -> list[float]:
    rate = min(max(rate, 1e-4), 1 - 1e-4)
    return (latent > norm.ppf(1 - rate)).astype(np.float64).tolist()


def _rate(rate: float, shift: float) -> float:
    """`rate` moved by a latent `shift` (probit scale)."""
    return float(norm.cdf(norm.ppf(min(max(rate, 1e-4), 1 - 1e-4)) + shift))


def draw_items(design: Design, rng: np.random.Generator, *, contrast: str = "interaction", effect: float = 0.0,
               model: ItemModel | None = None) -> dict[str, dict[str, list[float]]]:
    """One simulated study's per-item arrays, {cell key: {"generated_passed": [0/1 per task]}} (`ItemStore`'s
    input), with `effect` pass-rate points planted on `contrast`."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    m = model or ItemModel()
    n = design.tasks
    z, g0, d0 = (rng.standard_normal(n) for _ in range(3))  # family-wide task components
    lift = m.align_lift + (effect if contrast == "difference" else 0.0)
    out: dict[str, dict[str, list[float]]] = {}
    for size, _, base_rate in design.sizes:
        t, g, d = _mix(rng, z, m.size_corr), _mix(rng, g0, m.size_corr_change), _mix(rng, d0, m.size_corr_change)
        models: list[tuple[str, int, np.ndarray]] = [("base", 0, rng.standard_normal(n))]
        models += [(meth, r, _mix(rng, g, m.kappa)) for meth in design.methods for r in range(design.seeds)]
        seed_shift = {r: rng.normal(0, m.seed_sd) for r in range(design.seeds)}
        for meth, r, own in models:
            aligned = meth != "base"
            dense = np.sqrt(1 - m.mu) * t + np.sqrt(m.mu) * own
            conditions = [("dense", 0.0)]
            if meth == "base" or meth in design.sparse_methods:
                conditions += [(mode, tg) for mode in design.modes for tg in design.targets]
            for mode, target in conditions:
                if mode == "dense":
                    latent, base_cell = dense, base_rate
                else:
                    keep, dmg = m.keep[mode], m.damage[mode]
                    latent = (np.sqrt(keep) * dense + np.sqrt(dmg) * d
                              + np.sqrt(1 - keep - dmg) * rng.standard_normal(n))
                    base_cell = base_rate * m.relative_rate[mode]
                    if contrast == "thresholds" and mode == DYNAMIC:  # dynamic = static + effect
                        base_cell = base_rate * m.relative_rate[STATIC] + effect
                rate = base_cell
                if aligned:
                    rate = base_cell + lift  # aligned - base is the same at dense and sparse ...
                    if contrast == "interaction" and mode == design.mode:
                        rate -= effect  # ... except where an interaction is planted
                    rate = _rate(rate, seed_shift[r] + rng.normal(0, m.seed_cell_sd))
                # a size at the floor passes nothing in any cell
                passed = [0.0] * n if base_rate <= 0 else _passed(latent, rate)
                out[_key(size, meth, r, mode, target)] = {f"{DATASET}_passed": passed}
    return out


def pad_items(design: Design, rng: np.random.Generator, items: int = 12) -> dict[str, dict[str, list[float]]]:
    """The Holm family's other primary contrasts, each a null dynamic - static difference on a small dataset of its
    own ("other<j>", base model of the largest size): they take their places in the family and, being small, are
    never rejected (the conservative reading: every other contrast is null)."""
    size, target = design.sizes[-1][0], max(design.targets)
    out: dict[str, dict[str, list[float]]] = {}
    for mode in (STATIC, DYNAMIC):
        arrays = {}
        for j in range(design.other_tests):
            x = (rng.random(items) < 0.5).astype(np.float64)
            x[0] = 1.0  # never at the floor
            arrays[f"other{j}_passed"] = x.tolist()
        out[_key(size, "base", 0, mode, target)] = arrays
    return out


def primary_contrasts(design: Design) -> list[dict[str, str]]:
    """The primary contrasts of a simulated study: the study's four on generated pass@1 (alignment, thresholds,
    size of each) and one thresholds contrast per other test."""
    rows = [{"question": "alignment", "dataset": DATASET, "metric": METRIC, "mode": design.mode},
            {"question": "thresholds", "dataset": DATASET, "metric": METRIC},
            {"question": "size", "dataset": DATASET, "metric": METRIC, "of": "alignment", "mode": design.mode},
            {"question": "size", "dataset": DATASET, "metric": METRIC, "of": "thresholds"}]
    return rows + [{"question": "thresholds", "dataset": f"other{j}", "metric": METRIC}
                   for j in range(design.other_tests)]


def select(findings: Sequence[Any], design: Design, contrast: str) -> Any:
    """The Finding of `contrast` at the design's highest target (interaction: in the design's mode; difference: at
    dense)."""
    target = max(design.targets)
    for f in findings:
        if f.dataset != DATASET:
            continue
        if contrast == "interaction" and f.estimand == "interaction" and f.target == target \
                and f" {design.mode} " in f" {f.contrast} ":
            return f
        if contrast == "difference" and f.estimand == "difference" and f.target == 0:
            return f
        if contrast == "thresholds" and f.estimand == "nominal_target" and f.target == target:
            return f
    raise ValueError(f"the Findings hold no {contrast} contrast on {DATASET} {METRIC} "
                     f"({sorted({f.estimand for f in findings})})")


# (items, params, primary contrasts as dicts, bootstrap replicates, seed) -> Findings (`report.findings`)
FindingsFn = Callable[[dict[str, dict[str, list[float]]], dict[str, float], list[dict[str, str]], int, int],
                      Sequence[Any]]


@dataclass(frozen=True)
class Detection:
    contrast: str
    effect: float
    hits: int
    draws: int
    interval: Interval  # Wilson, of hits / draws
    effects: tuple[float, ...]  # each draw's estimate (None-free: not-measurable draws are left out)

    @property
    def rate(self) -> float:
        return self.hits / self.draws


def run_findings(items: dict, params: dict, contrasts: list[dict], bootstrap: int, seed: int) -> list:
    """The report's own Findings on one simulated study (what `detection_rate` calls by default)."""
    settings = ReportConfig(primary_contrasts=contrasts, bootstrap=bootstrap)
    return compute_findings(ItemStore(items), params, settings, seed=seed)


def detection_rate(design: Design, effect: float, draws: int, seed: int, *, findings: FindingsFn = run_findings,
                   contrast: str = "interaction", model: ItemModel | None = None) -> Detection:
    """How often `findings` calls `contrast` an "effect" over `draws` simulated studies with `effect` planted
    (0: the null), and the Wilson interval of that rate.  Each draw: one `draw_items` + `pad_items` and one call."""
    rng = np.random.default_rng(seed)
    params = {size: p for size, p, _ in design.sizes}
    contrasts = primary_contrasts(design)
    hits, estimates = 0, []
    for i in range(draws):
        items = draw_items(design, rng, contrast=contrast, effect=effect, model=model)
        for key, arrays in pad_items(design, rng).items():
            items.setdefault(key, {}).update(arrays)
        f = select(findings(items, params, contrasts, design.bootstrap, seed + i), design, contrast)
        hits += f.verdict == "effect"
        if f.effect is not None:
            estimates.append(float(f.effect))
    return Detection(contrast, effect, hits, draws, wilson_interval(hits, draws), tuple(estimates))
