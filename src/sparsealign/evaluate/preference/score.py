"""Model-level preference evaluation: score held-out pairs, turn log-probs into the method's implicit rewards, and
report `preference_metrics` (+ dense-vs-sparse flips against a baseline model, + Monte-Carlo KL to the reference).

    summary, records = evaluate_preference(model, tok, pairs, "dpo", ref_model=ref)

Tokenisation and scoring are the training stage's own (`sparsealign.align.logps`), so evaluation sees exactly the
log-probs training optimised; rewards come from `sparsealign.align.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsealign.align.logps import (
    TokenizeSettings,
    encode_prompt,
    pad_sequences,
    score_pairs,
    sequence_logps,
)
from sparsealign.align.losses import loss_for
from sparsealign.data.records import PreferencePair
from sparsealign.evaluate.generation import SamplingConfig, generate_from_ids
from sparsealign.evaluate.preference.divergence import human_preference_prob
from sparsealign.evaluate.preference.metrics import (
    flip_metrics,
    kl_estimate,
    length_metrics,
    preference_metrics,
)
from sparsealign.evaluate.preference.reward import Reward
from sparsealign.stats.intervals import DEFAULT_LEVEL, DEFAULT_RESAMPLES


def human_probs(pairs: Sequence[PreferencePair], tau: float = 1.0) -> np.ndarray:
    """p_h per pair: sigma((s_w - s_l)/tau) where the pair carries scores (UltraFeedback), else 1 (a hard label)."""
    return np.array([float(human_preference_prob(p.score_chosen, p.score_rejected, tau=tau)) for p in pairs])


def method_rewards(method: str, scores: dict[str, Any], ref_scores: dict[str, Any] | None,
                   beta: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(rewards_chosen, rewards_rejected, beta used) from `score_pairs` outputs, with the method's own reward,
    in float64 (a reward is a difference of long sums).

    `beta` should be the one the model trained with (`sparsealign.align.sidecar.read_record`); unset, it is the
    loss's own default — the same one training used when its config left β unset."""
    loss = loss_for(method)
    beta = loss.resolve_beta(beta)
    out = []
    for side in ("chosen", "rejected"):
        ref = ref_scores[f"{side}_logps"].double() if ref_scores is not None else None
        logp = scores[f"{side}_logps"].double()
        out.append(loss.implicit_reward(logp, scores[f"{side}_n"], ref, beta).numpy())
    return out[0], out[1], (beta if loss.reward_uses_beta else 1.0)


def sample_kl(model, ref_model, tokenizer, pairs: Sequence[PreferencePair], *, settings, samples: int,
              max_new_tokens: int, seed: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(log pi(y|x), log pi_ref(y|x)) of one completion y ~ pi(.|x) (temperature 1) per prompt of `pairs[:samples]`."""
    import torch

    prompts = [encode_prompt(tokenizer, p.prompt, settings, p.messages)[-settings.max_prompt_length:]
               for p in pairs[:samples]]
    cfg = SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         seed=seed)
    gens = [g[0] for g in generate_from_ids(model, tokenizer, prompts, cfg)]
    parts = [(g.prompt_ids, g.completion_ids) for g in gens if g.completion_ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logps: list[np.ndarray] = []
    ref_logps: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(parts), batch_size):
            ids, attn, target = pad_sequences(parts[start: start + batch_size], pad)
            lp, _ = sequence_logps(model, ids, attn, target)
            lr, _ = sequence_logps(ref_model, ids, attn, target)
            logps.append(lp.double().cpu().numpy())
            ref_logps.append(lr.double().cpu().numpy())
    return np.concatenate(logps), np.concatenate(ref_logps)


def evaluate_preference(
    model,
    tokenizer,
    pairs: Sequence[PreferencePair],
    method: str,
    ref_model=None,
    *,
    beta: float | None = None,
    tau: float = 1.0,
    baseline_model=None,
    baseline_margins: Sequence[float] | None = None,
    ref_scores: dict[str, Any] | None = None,
    also: Reward | None = None,
    kl_samples: int = 0,
    kl_max_new_tokens: int = 128,
    settings=None,
    batch_size: int = 8,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score `pairs` and return (summary, per-pair records).

    `baseline_model` is the dense model a sparsified `model` is compared with (same method, same reference), or
    `baseline_margins` its margins from an earlier run: the summary then carries `flip` metrics.  `ref_scores`
    are the reference's log-probs when they are already known (else `ref_model` is scored).  `also` is a second
    reward read from the same log-probs (e.g. the model's own implicit reward beside a shared one): its metrics go
    to `summary["also"]`, its margins to the records' `also_margin`.  `kl_samples` > 0 (needs `ref_model`) samples that many completions
    from `model` and reports KL(pi || pi_ref).  Every figure has a seeded percentile-bootstrap CI.
    """

    if not pairs:
        raise ValueError("no preference pairs to evaluate")
    settings = settings or TokenizeSettings()
    ci = {"n_resamples": n_resamples, "level": level, "seed": seed}

    def scored(m):
        return score_pairs(m, tokenizer, pairs, settings, batch_size=batch_size)

    scores = scored(model)
    if ref_scores is None and ref_model is not None:
        ref_scores = scored(ref_model)
    r_w, r_l, beta_used = method_rewards(method, scores, ref_scores, beta)
    p_h = human_probs(pairs, tau)
    logp_w, logp_l = scores["chosen_logps"].double().numpy(), scores["rejected_logps"].double().numpy()
    summary: dict[str, Any] = {
        "method": method, "beta": beta_used, "tau": tau, "n_pairs": len(pairs),
        "n_truncated": int(scores["n_truncated"]), "scored_pairs": int((p_h < 1).sum()),
        "metrics": preference_metrics(r_w, r_l, p_h, logp_chosen=logp_w, logp_rejected=logp_l, **ci),
        "length": length_metrics(r_w - r_l, scores["chosen_n"].numpy(), scores["rejected_n"].numpy(), **ci),
    }
    records = [
        {"pair_id": p.id, "reward_chosen": float(r_w[i]), "reward_rejected": float(r_l[i]),
         "margin": float(r_w[i] - r_l[i]), "human_prob": float(p_h[i]), "logp_chosen": float(logp_w[i]),
         "logp_rejected": float(logp_l[i]), "n_chosen": int(scores["chosen_n"][i]),
         "n_rejected": int(scores["rejected_n"][i]), "correct": float(r_w[i] > r_l[i])}
        for i, p in enumerate(pairs)
    ]
    if also is not None:
        a_w, a_l, a_beta = method_rewards(also.method, scores, ref_scores, also.beta)
        summary["also"] = {"method": also.method, "beta": a_beta, "metrics": preference_metrics(
            a_w, a_l, p_h, logp_chosen=logp_w, logp_rejected=logp_l, **ci)}
        for i, rec in enumerate(records):
            rec["also_margin"] = float(a_w[i] - a_l[i])
    if baseline_model is not None:
        b_w, b_l, _ = method_rewards(method, scored(baseline_model), ref_scores, beta)
        baseline_margins = (b_w - b_l).tolist()
    if baseline_margins is not None:
        summary["flip"] = flip_metrics(baseline_margins, r_w - r_l, **ci)
        for i, rec in enumerate(records):
            rec["baseline_margin"] = float(baseline_margins[i])
    if kl_samples > 0:
        if ref_model is None:
            raise ValueError("KL(pi || pi_ref) needs a reference model")
        lp, lr = sample_kl(model, ref_model, tokenizer, pairs, settings=settings, samples=kl_samples,
                           max_new_tokens=kl_max_new_tokens, seed=seed, batch_size=batch_size)
        summary["kl"] = kl_estimate(lp, lr, **ci)
    return summary, records
