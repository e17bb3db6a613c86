"""Multiple-comparison control: Holm's step-down adjustment across the report's primary contrasts."""

from __future__ import annotations

import math
from collections.abc import Sequence


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) becomes max over j <= i of min(1, (m - j) * p_(j)); the running
    max keeps the adjusted values monotone.  NaN entries (contrasts that could not be tested, e.g. a metric at its
    floor) are left NaN and do not count towards m: the family is the contrasts actually tested.  statsmodels'
    `multipletests(method="holm")` computes the same; not a dependency for these few lines.
    """
    tested = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    if any(not 0.0 <= p <= 1.0 for p, _ in tested):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {[p for p, _ in tested]}")
    m = len(tested)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
