"""Critical sparsity: how far a model can be sparsified before its metric measurably drops below dense."""

from __future__ import annotations

from collections.abc import Iterable


def critical_sparsity(drops: Iterable[tuple[float, float]], *, tolerance: float) -> float | None:
    """Highest target whose paired CI of the drop from dense (sparse - dense) stays above -`tolerance`.

    `drops` holds (target, ci_low of sparse - dense).  "Stays" is cumulative: a target past the first one whose CI
    reaches below -tolerance does not count even if noise lifts it back.  None when even the lowest target fails.
    A CI that is merely wide (few items) fails too: the data must *show* the drop is within tolerance.
    """
    best = None
    for target, ci_low in sorted(drops):
        if not ci_low >= -tolerance:  # NaN fails
            break
        best = float(target)
    return best
