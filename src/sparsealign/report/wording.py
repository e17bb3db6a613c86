"""The Findings in words: a lead that answers each research question in a sentence, then one paragraph per
question with every contrast's effect, CI, n, Holm p and verdict (and, for (b), the realized sparsity behind it)."""

from __future__ import annotations

from sparsealign.report.findings import Finding
from sparsealign.sparse.modes import DYNAMIC, STATIC

QUESTIONS = {
    "alignment": "(a) Does alignment survive sparsity?",
    "thresholds": f"(b) {DYNAMIC.capitalize()} vs {STATIC} thresholds",
    "size": "(c) How do (a) and (b) change with model size?",
    "annotation": "(d) Annotation efficiency of rationale methods",
}
LOWER_IS_BETTER = ("reference_nll", "kl", "divergence", "cross_entropy")  # metric names whose fall is a gain


def lower_is_better(metric: str) -> bool:
    return any(part in metric for part in LOWER_IS_BETTER)


def _direction(f: Finding) -> str:
    return " (lower is better)" if lower_is_better(f.metric) else ""


def sentence(f: Finding) -> str:
    if f.verdict == "not measurable":
        return f"{f.contrast}: not measurable ({f.note})."
    seeds = f", {f.seeds} seeds" if f.seeds > 1 else ""
    null = "" if f.null == 0 else f" (null {f.null:g})"
    bound = " (a lower bound: reached at the smallest subset)" if "reached_at_smallest" in f.note else ""
    return (f"{f.contrast}{_direction(f)}: {f.effect:+.3f}{null}{bound}, 95% CI [{f.ci_low:+.3f}, {f.ci_high:+.3f}], n = {f.n} "
            f"paired items{seeds} ({f.note}), Holm p = {f.p_holm:.2g} ({f.test}) -- {f.verdict}.{_realized_said(f)}")


def _realized_said(f: Finding) -> str:
    """(b) Findings say the realized sparsity behind them on their own domain, size by size."""
    if f.question != "thresholds":
        return ""
    parts = [f"{row['size']} " + " / ".join(f"{k.split()[0]} {v:.3f}" for k, v in row.items() if k.endswith("realized"))
             for row in f.per_size if any(k.endswith("realized") for k in row)]
    return f" Realized sparsity on {f.dataset}: {'; '.join(parts)}." if parts else ""


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


def _listed(rows: list[Finding]) -> str:
    return "; ".join(f"{f.dataset} {f.metric} at {f.contrast.split(' at ')[1].split(' minus')[0].split(',')[0]}: "
                     f"{f.effect:+.3g} [{f.ci_low:+.3g}, {f.ci_high:+.3g}]" for f in rows)


def lead(findings: list[Finding]) -> list[str]:
    """One sentence per question that has measurable contrasts: how many are effects, which, and in which
    direction -- the answer a reader needs before the paragraphs."""
    out = []
    inter = [f for f in findings if f.estimand == "interaction" and f.verdict != "not measurable"]
    if inter:
        hits = [f for f in inter if f.verdict == "effect"]
        said = f": {_listed(hits)}" if hits else ""
        widest = max(f.ci_high - f.ci_low for f in inter) / 2
        out.append(f"(a) Alignment's effect changes under sparsity in {len(hits)} of {len(inter)} measurable "
                   f"interaction contrasts [(aligned - base)_sparse - (aligned - base)_dense]{said}; the others are "
                   f"inconclusive (CI half-widths up to {widest:.3g}), which bounds, not excludes, a change.")
    for estimand, what in (("matched_sparsity", "at equal realized sparsity on the same dataset (the controller's "
                            "own effect)"), ("nominal_target", "at the same nominal target (what a deployment gets)")):
        rows = [f for f in findings if f.estimand == estimand and f.verdict != "not measurable"]
        if rows:
            hits = [f for f in rows if f.verdict == "effect"]
            better = [f for f in hits if (f.effect < 0) == lower_is_better(f.metric)]
            detail = "; ".join(f"{f.dataset} {f.metric} @ {f.target:g}: {f.effect:+.3g} [{f.ci_low:+.3g}, "
                               f"{f.ci_high:+.3g}]{_direction(f)}" for f in rows)
            rest = len(rows) - len(hits)
            out.append(f"(b) {DYNAMIC} vs {STATIC} thresholds {what}: {DYNAMIC} is better in {len(better)} and worse "
                       f"in {len(hits) - len(better)} of {len(rows)} measurable contrasts"
                       f"{f', {rest} inconclusive' if rest else ''} ({detail}).")
    return out
