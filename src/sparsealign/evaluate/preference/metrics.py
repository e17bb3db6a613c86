"""Preference metrics of a model on held-out pairs, from its implicit rewards (pure functions, numpy in and out).

Each method defines its own implicit reward r(x, y) (`sparsealign.align.losses`); on a pair the model's preference
probability is p_m = sigma(r_w - r_l).  The metrics compare it with the human preference p_h, and a sparsified
model's p_m with its dense self's.  Every figure is a mean of per-pair values with a seeded bootstrap CI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sparsealign.evaluate.preference.divergence import bernoulli_js, bt_cross_entropy, sigmoid
from sparsealign.stats.intervals import DEFAULT_LEVEL, DEFAULT_RESAMPLES, bootstrap_ci


def _paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, what: str) -> tuple[np.ndarray, ...]:
    """Two per-pair arrays as float64, checked to be 1-D, non-empty and aligned."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"need two equal-length non-empty 1-D {what} arrays, got {x.shape} and {y.shape}")
    return x, y


def _ci(values: np.ndarray, n_resamples: int, level: float, seed: int) -> dict:
    return bootstrap_ci(values, n_resamples=n_resamples, level=level, seed=seed).to_dict()


def preference_metrics(
    rewards_chosen: Sequence[float] | np.ndarray,
    rewards_rejected: Sequence[float] | np.ndarray,
    human_prob: Sequence[float] | np.ndarray | float | None = None,
    *,
    logp_chosen: Sequence[float] | np.ndarray | None = None,
    logp_rejected: Sequence[float] | np.ndarray | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, dict]:
    """Per-pair metrics averaged over pairs, each as {estimate, low, high, level, n, method}.

    reward_accuracy       mean[r_w > r_l]                (a tie counts as wrong)
    mean_margin           mean[r_w - r_l]
    preference_divergence mean JS(Bern(p_h) || Bern(p_m)), p_m = sigma(r_w - r_l), nats, in [0, ln 2]
    bt_cross_entropy      mean -[p_h log p_m + (1 - p_h) log(1 - p_m)]
    ranking_accuracy      mean[log pi(y_w|x) > log pi(y_l|x)]  (only when the summed log-probs are given)
    human_prob defaults to 1 (hard labels); pass sigma((s_w - s_l)/tau) for scored data.
    """
    r_w, r_l = _paired(rewards_chosen, rewards_rejected, "reward")
    p_h = np.broadcast_to(np.asarray(1.0 if human_prob is None else human_prob, dtype=np.float64), r_w.shape)
    if np.any((p_h < 0) | (p_h > 1)) or np.any(np.isnan(p_h)):
        raise ValueError("human_prob must lie in [0, 1]")
    margin = r_w - r_l
    per_pair = {
        "reward_accuracy": (margin > 0).astype(np.float64),
        "mean_margin": margin,
        "preference_divergence": bernoulli_js(p_h, sigmoid(margin)),
        "bt_cross_entropy": bt_cross_entropy(p_h, margin),
    }
    if logp_chosen is not None and logp_rejected is not None:
        lw, ll = _paired(logp_chosen, logp_rejected, "log-prob")
        per_pair["ranking_accuracy"] = (lw > ll).astype(np.float64)
    out = {name: _ci(v, n_resamples, level, seed) for name, v in per_pair.items()}
    out["mean_human_prob"] = {"estimate": float(p_h.mean()), "n": int(p_h.size)}
    return out


def flip_metrics(
    margin_dense: Sequence[float] | np.ndarray,
    margin_sparse: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, dict]:
    """Dense-vs-sparse agreement on the same pairs.

    flip_rate            mean[(m_dense > 0) != (m_sparse > 0)]   (the model's decision changed; a zero margin is
                         "not preferred", as in reward accuracy)
    flip_divergence      mean JS(Bern(sigma(m_dense)) || Bern(sigma(m_sparse))), nats
    margin_shift         mean[m_sparse - m_dense]
    """
    d, s = _paired(margin_dense, margin_sparse, "margin")
    per_pair = {
        "flip_rate": ((d > 0) != (s > 0)).astype(np.float64),
        "flip_divergence": bernoulli_js(sigmoid(d), sigmoid(s)),
        "margin_shift": s - d,
    }
    return {name: _ci(v, n_resamples, level, seed) for name, v in per_pair.items()}


def margin_correlation(margin_dense: Sequence[float] | np.ndarray, margin_sparse: Sequence[float] | np.ndarray, *,
                       level: float = DEFAULT_LEVEL) -> dict:
    """Pearson correlation of one model's margins dense vs sparse on the same pairs, with the Fisher-z interval
    (scipy): 1 = sparsity kept every preference's strength in order, beside the flip rate's 0/1 reading."""
    from scipy import stats

    d, s = _paired(margin_dense, margin_sparse, "margin")
    if d.size < 4 or d.std() == 0 or s.std() == 0:
        return {"estimate": float("nan"), "low": float("nan"), "high": float("nan"), "level": level, "n": int(d.size),
                "method": "none"}
    r = stats.pearsonr(d, s)
    ci = r.confidence_interval(confidence_level=level)
    return {"estimate": float(r.statistic), "low": float(ci.low), "high": float(ci.high), "level": level,
            "n": int(d.size), "method": "fisher-z"}


def kl_estimate(
    logp_policy: Sequence[float] | np.ndarray,
    logp_ref: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict:
    """Monte-Carlo KL(pi || pi_ref) per sequence: mean over y ~ pi(.|x) of log pi(y|x) - log pi_ref(y|x).

    Unbiased only when the completions were sampled from pi itself at temperature 1 with no top-p/top-k.
    """
    lp, lr = _paired(logp_policy, logp_ref, "log-prob")
    return _ci(lp - lr, n_resamples, level, seed)


def length_metrics(
    margins: Sequence[float] | np.ndarray,
    n_chosen: Sequence[float] | np.ndarray,
    n_rejected: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, dict]:
    """What response length alone explains of a preference accuracy (token counts of the two responses):

    - length_baseline_accuracy: the trivial rule "the longer response wins" (ties: 1/2), against the labels;
    - length_agreement: how often the model prefers the longer response (pairs of unequal length);
    - length_controlled_accuracy: the model's accuracy averaged over the two strata "chosen is longer" and
      "chosen is shorter" (equal weight each): a pure length preference scores 1/2 here, whatever the data's mix.
    """
    m, n_w = _paired(margins, n_chosen, "margin / length")
    _, n_l = _paired(margins, n_rejected, "margin / length")
    longer = np.sign(n_w - n_l)
    ci = {"n_resamples": n_resamples, "level": level, "seed": seed}
    out = {"length_baseline_accuracy": _ci((longer + 1) / 2, **ci)}
    unequal = longer != 0
    if unequal.any():
        out["length_agreement"] = _ci(((m[unequal] > 0) == (longer[unequal] > 0)).astype(float), **ci)
    strata = [longer > 0, longer < 0]
    if all(s.any() for s in strata):  # weights that make the plain mean the balanced accuracy (ties left out)
        weights = sum(s * (0.5 * unequal.sum() / s.sum()) for s in strata)
        out["length_controlled_accuracy"] = _ci(((m > 0) * weights)[unequal], **ci)
    return out


def fit_margin_scale(margins: Sequence[float] | np.ndarray, human_prob: Sequence[float] | np.ndarray | float = 1.0,
                     ) -> float:
    """The scale s > 0 that makes p_m = sigma(m / s) the Bradley-Terry maximum-likelihood fit of the labels.

    A reward's units are arbitrary (a mean token log-prob margin is ~0.01): read through sigma at scale 1 every p_m
    is ~1/2 and the divergence sits at its no-preference value whatever the model does.  Fitted on a split of its
    own, the scale turns margins into calibrated probabilities, so the divergence can move.  Searched over
    log s in [-8, 8] around the margins' spread (a separable split gives the smallest scale searched)."""
    from scipy.optimize import minimize_scalar

    m = np.asarray(margins, dtype=np.float64)
    p_h = np.broadcast_to(np.asarray(human_prob, dtype=np.float64), m.shape)
    spread = float(np.std(m)) or 1.0
    res = minimize_scalar(lambda u: float(np.mean(bt_cross_entropy(p_h, m / (spread * np.exp(u))))),
                          bounds=(-8.0, 8.0), method="bounded")
    return float(spread * np.exp(res.x))


def calibrated_divergence(
    margins: Sequence[float] | np.ndarray,
    human_prob: Sequence[float] | np.ndarray | float = 1.0,
    scale: float | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[dict, np.ndarray, float]:
    """Preference divergence with the margin scale fitted on a separate split: pairs 0, 2, 4, ... fit the scale
    (unless `scale` is given -- a sparse model reads its dense self's, so sparsity moves the divergence instead of
    being absorbed by a refit), pairs 1, 3, 5, ... are scored.  Returns (metric with CI, per-pair JS of the scored
    pairs, scale)."""
    m = np.asarray(margins, dtype=np.float64)
    p_h = np.broadcast_to(np.asarray(human_prob, dtype=np.float64), m.shape)
    if scale is None:
        scale = fit_margin_scale(m[0::2], p_h[0::2])
    js = bernoulli_js(p_h[1::2], sigmoid(m[1::2] / scale))
    return _ci(js, n_resamples, level, seed), js, scale
