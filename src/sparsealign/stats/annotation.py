"""Annotation efficiency: how many preference pairs a method needs to reach the reference method's accuracy.

Target: the reference's (DPO's) held-out accuracy when trained on all pairs.  Pairs needed: where a method's
accuracy-vs-pairs curve first reaches the target, interpolated linearly on log(#pairs), never extrapolated.
Saving = pairs the REFERENCE needs under that same rule / pairs the method needs.  Taking the numerator from the same
rule (not simply "all pairs") makes the reference's saving against itself exactly 1 in the point estimate and in
every bootstrap replicate, even when its curve is noisy and crosses its own all-pairs value early.

Only methods trained on at least two subsets have a curve; others are not reported.  CIs: crossed bootstrap over
held-out items and seeds (`paired.replicate_means`), one draw shared by every (method, subset) so the curves stay
paired.  A replicate in which a method never reaches the target counts as saving 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sparsealign.stats.paired import DEFAULT_LEVEL, DEFAULT_RESAMPLES, percentile_interval, replicate_means

MIN_SUBSETS = 2


@dataclass(frozen=True)
class PairsNeeded:
    pairs: float | None  # None when never reached
    status: str  # "reached" | "reached_at_smallest" (an upper bound) | "not_reached"


def pairs_needed(n_pairs: Sequence[float], accuracy: Sequence[float], target: float) -> PairsNeeded:
    """Fewest pairs at which the accuracy curve first reaches `target`, interpolated linearly in log(#pairs)."""
    pts = sorted(zip(n_pairs, accuracy, strict=True))
    if not pts:
        return PairsNeeded(None, "not_reached")
    if pts[0][1] >= target:
        return PairsNeeded(float(pts[0][0]), "reached_at_smallest")
    for (n0, a0), (n1, a1) in zip(pts, pts[1:], strict=False):
        if a1 >= target > a0:
            frac = (target - a0) / (a1 - a0)
            return PairsNeeded(float(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))), "reached")
    return PairsNeeded(None, "not_reached")


@dataclass(frozen=True)
class AnnotationSaving:
    method: str
    pairs_needed: float | None
    status: str
    saving: float | None  # reference pairs needed / method pairs needed
    ci_low: float
    ci_high: float
    p: float  # two-sided bootstrap p of saving = 1
    reached_fraction: float  # share of replicates in which the target was reached
    n: int  # held-out items behind each point of the curve
    subsets: int


def _savings(acc: Mapping[tuple[str, float], float], methods: list[str], reference: str,
             ref_n: float) -> dict[str, tuple[PairsNeeded, float | None]]:
    target = acc[(reference, ref_n)]

    def need(m: str) -> PairsNeeded:
        keys = sorted(n for mm, n in acc if mm == m)
        return pairs_needed(keys, [acc[(m, n)] for n in keys], target)

    ref_need = need(reference).pairs  # always reached: the curve ends at the target itself
    out = {}
    for m in methods:
        nd = need(m)
        out[m] = (nd, ref_need / nd.pairs if nd.pairs and ref_need else None)
    return out


def annotation_savings(curves: Mapping[tuple[str, float], Sequence | np.ndarray], *, reference: str,
                       n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                       seed: int = 0) -> list[AnnotationSaving]:
    """Per method with a curve, the saving against `reference` and its CI.

    `curves[(method, n_pairs)]`: per held-out item 0/1 correctness, (items,) or (seeds, items), aligned across keys.
    `n_pairs` may be counts or fractions of one pool (the saving is a ratio).
    """
    subsets: dict[str, list[float]] = {}
    for m, n in curves:
        subsets.setdefault(m, []).append(n)
    if len(subsets.get(reference, [])) < MIN_SUBSETS:
        return []
    methods = sorted(m for m, ns in subsets.items() if len(ns) >= MIN_SUBSETS)
    keys = [(m, n) for m in methods for n in subsets[m]]
    ref_n = max(subsets[reference])
    point = _savings({k: float(np.mean(curves[k])) for k in keys}, methods, reference, ref_n)
    names = {k: f"{k[0]}@{k[1]!r}" for k in keys}
    reps = replicate_means({names[k]: curves[k] for k in keys}, n_resamples=n_resamples, seed=seed)
    rep = {m: np.zeros(n_resamples) for m in methods}
    for b in range(n_resamples):
        for m, (_, s) in _savings({k: reps[names[k]][b] for k in keys}, methods, reference, ref_n).items():
            rep[m][b] = s or 0.0
    n_items = int(np.asarray(curves[keys[0]]).shape[-1])
    out = []
    for m in methods:
        need, saving = point[m]
        lo, hi = percentile_interval(rep[m], level)
        tail = min(np.sum(rep[m] <= 1.0), np.sum(rep[m] >= 1.0))
        p = min(1.0, 2.0 * (1 + tail) / (1 + n_resamples))  # never 0 from a finite number of replicates
        out.append(AnnotationSaving(m, need.pairs, need.status, saving, lo, hi, float(p),
                                    float(np.mean(rep[m] > 0)), n_items, len(subsets[m])))
    return out
