"""Divergences between preference probabilities, each a pure elementwise function on numpy arrays.

A preference over one pair (y_w, y_l) is a Bernoulli distribution: P(y_w preferred) = p, P(y_l preferred) = 1 - p.
Everything here uses the natural log (nats), so the Jensen-Shannon divergence lies in [0, ln 2].
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_expit, rel_entr

ArrayLike = np.ndarray | float | list[float]


def sigmoid(x: ArrayLike) -> np.ndarray:
    return expit(np.asarray(x, dtype=np.float64))


def human_preference_prob(score_chosen: ArrayLike | None, score_rejected: ArrayLike | None,
                          *, tau: float = 1.0) -> np.ndarray | float:
    """p_h = sigma((s_w - s_l) / tau) from scalar ratings; 1.0 (a hard label) when the data carries no scores."""
    if score_chosen is None or score_rejected is None:
        return 1.0
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    diff = np.asarray(score_chosen, dtype=np.float64) - np.asarray(score_rejected, dtype=np.float64)
    return expit(diff / tau)


def bernoulli_kl(p: ArrayLike, q: ArrayLike) -> np.ndarray:
    """KL(Bern(p) || Bern(q)) in nats (0 log 0 = 0; infinite where q puts 0 mass on an outcome p allows)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return rel_entr(p, q) + rel_entr(1.0 - p, 1.0 - q)


def bernoulli_js(p: ArrayLike, q: ArrayLike) -> np.ndarray:
    """Jensen-Shannon divergence between Bern(p) and Bern(q) in nats: symmetric, finite, 0 iff p == q, <= ln 2."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)
    return 0.5 * bernoulli_kl(p, m) + 0.5 * bernoulli_kl(q, m)


def bt_cross_entropy(p_h: ArrayLike, margin: ArrayLike) -> np.ndarray:
    """Bradley-Terry cross-entropy -[p_h log sigma(m) + (1 - p_h) log sigma(-m)] of the model margin m = r_w - r_l.

    Computed from the margin with log-sigmoid, so it stays finite for margins where sigma(m) rounds to 1.  With a
    hard label (p_h = 1) it is exactly the DPO-style loss -log sigma(m) of the implicit reward margin.
    """
    p_h, m = np.asarray(p_h, dtype=np.float64), np.asarray(margin, dtype=np.float64)
    return -(p_h * log_expit(m) + (1.0 - p_h) * log_expit(-m))
