"""The reward setting of a preference evaluation: which implicit reward turns log-probs into a margin."""

from __future__ import annotations

from sparsealign.align.config import Method
from sparsealign.config import StrictModel


class Reward(StrictModel):
    """A method's implicit reward with its β (for DPO-style methods, read against the reference's log-probs)."""

    method: Method
    beta: float | None = None


# What every model of a study is compared on, base and aligned alike: the mean per-token log-likelihood of the
# response (SimPO's reward at β = 1), reference-free, so aligned − base subtracts like quantities.
SHARED_REWARD = Reward(method="simpo", beta=1.0)
