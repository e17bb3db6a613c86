"""Preference losses and implicit rewards as pure functions on per-sequence log-probabilities.

Every function takes summed token log-probs `logp_*` (shape [B]) and, where a method length-normalises, the number of
scored tokens `n_*` ([B]).  Nothing here touches a model, so each formula is tested against hand-computed values.

    DPO     -log σ(β[(logπ(y_w) - logπ_ref(y_w)) - (logπ(y_l) - logπ_ref(y_l))])           (Rafailov et al. 2023)
    ORPO    L_SFT(y_w) + λ·(-log σ(log odds(y_w) - log odds(y_l))),  odds = P/(1-P),
            P = exp(mean token log-prob)                                                  (Hong et al. 2024)
    SimPO   -log σ(β/|y_w|·logπ(y_w) - β/|y_l|·logπ(y_l) - γ),  γ = gamma_beta_ratio·β    (Meng et al. 2024)
    R*      base loss + γ_r·(-log π(r | x, y_w, y_l))  (rationale NLL, sum or per-token mean) (arXiv 2407.14477)

SimPO's margin is exposed as the paper's γ/β ratio (`gamma_beta_ratio`, paper default 0.5); TRL's `simpo_gamma` is
the absolute γ, so TRL `simpo_gamma = gamma_beta_ratio * beta`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsealign.align.config import (  # noqa: F401 (METHODS, RATIONALE_METHODS, REFERENCE_METHODS re-exported)
    METHOD_FACTS,
    METHODS,
    RATIONALE_METHODS,
    REFERENCE_METHODS,
    MethodFacts,
    facts,
)


# -- implicit rewards (also used by evaluation: preference accuracy/margins of a finished model) -----------------------
def dpo_rewards(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """β·(log π(y|x) - log π_ref(y|x)), per sequence."""
    return beta * (logp - ref_logp)


def simpo_rewards(logp: torch.Tensor, n_tokens: torch.Tensor, beta: float) -> torch.Tensor:
    """β/|y|·log π(y|x): the length-normalised SimPO reward."""
    return beta * logp / n_tokens.clamp(min=1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Mächler 2012): expm1 near 0, log1p far from it."""
    x = x.clamp(max=-1e-7)  # P = 1 exactly would make the odds infinite
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(logp: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """ORPO reward: log(P/(1-P)) with P = exp(mean token log-prob) = log P - log(1-P)."""
    mean_logp = logp / n_tokens.clamp(min=1)
    return mean_logp - log1mexp(mean_logp)


# -- losses (per example, shape [B]; the caller averages) --------------------------------------------------------------
def dpo_loss(
    logp_w: torch.Tensor, logp_l: torch.Tensor, ref_logp_w: torch.Tensor, ref_logp_l: torch.Tensor, beta: float
) -> torch.Tensor:
    margin = dpo_rewards(logp_w, ref_logp_w, beta) - dpo_rewards(logp_l, ref_logp_l, beta)
    return -F.logsigmoid(margin)


def simpo_loss(
    logp_w: torch.Tensor, n_w: torch.Tensor, logp_l: torch.Tensor, n_l: torch.Tensor, beta: float,
    gamma_beta_ratio: float,
) -> torch.Tensor:
    margin = simpo_rewards(logp_w, n_w, beta) - simpo_rewards(logp_l, n_l, beta) - gamma_beta_ratio * beta
    return -F.logsigmoid(margin)


def orpo_loss(
    logp_w: torch.Tensor, n_w: torch.Tensor, logp_l: torch.Tensor, n_l: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, sft_nll, odds_ratio_loss) per example; L_SFT is the chosen response's mean token NLL."""
    sft_nll = -logp_w / n_w.clamp(min=1)
    or_loss = -F.logsigmoid(log_odds(logp_w, n_w) - log_odds(logp_l, n_l))
    return sft_nll + lam * or_loss, sft_nll, or_loss


def rationale_nll(logp_r: torch.Tensor, n_r: torch.Tensor, norm: str = "mean") -> torch.Tensor:
    """-log π(r | x, y_w, y_l) per example: summed over rationale tokens ("sum") or per token ("mean")."""
    if norm == "sum":
        return -logp_r
    if norm == "mean":
        return -logp_r / n_r.clamp(min=1)
    raise ValueError(f"rationale norm must be 'sum' or 'mean', got {norm!r}")


@dataclass(frozen=True)
class LossParams:
    method: str
    beta: float = 0.1  # DPO/SimPO temperature (SimPO paper uses 2.0-10)
    lam: float = 0.1  # ORPO λ
    gamma_beta_ratio: float = 0.5  # SimPO γ/β
    rationale_weight: float = 1.0  # γ_r of the rationale term
    rationale_norm: str = "mean"


class PreferenceLoss:
    """One method's formulas, answering for its facts (torchtune style: the training loop and the evaluators ask
    the loss object, never test method names).  Subclasses implement the base loss and its implicit reward; the
    rationale term of the R* variants is added here, from the facts."""

    def __init__(self, name: str, facts: MethodFacts):
        self.name, self.facts = name, facts

    @property
    def base(self) -> str:
        return self.facts.base

    @property
    def needs_reference(self) -> bool:
        return self.facts.needs_reference

    @property
    def uses_rationale(self) -> bool:
        return self.facts.uses_rationale

    @property
    def default_beta(self) -> float:
        return self.facts.default_beta

    @property
    def reward_uses_beta(self) -> bool:
        return self.facts.reward_uses_beta

    def resolve_beta(self, beta: float | None) -> float:
        return self.default_beta if beta is None else beta

    def implicit_reward(self, logp: torch.Tensor, n_tokens: torch.Tensor, ref_logp: torch.Tensor | None,
                        beta: float) -> torch.Tensor:
        raise NotImplementedError

    def base_terms(self, params: LossParams, logp_w, n_w, logp_l, n_l, ref_logp_w, ref_logp_l) -> dict:
        raise NotImplementedError

    def __call__(self, params: LossParams, logp_w: torch.Tensor, n_w: torch.Tensor, logp_l: torch.Tensor,
                 n_l: torch.Tensor, ref_logp_w: torch.Tensor | None = None, ref_logp_l: torch.Tensor | None = None,
                 logp_r: torch.Tensor | None = None, n_r: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-example `loss`, `rewards_chosen`, `rewards_rejected` (+ extras), shape [B]; the caller averages."""
        if self.needs_reference and (ref_logp_w is None or ref_logp_l is None):
            raise ValueError(f"{self.name} needs reference log-probs")
        out = self.base_terms(params, logp_w, n_w, logp_l, n_l, ref_logp_w, ref_logp_l)
        if self.uses_rationale:
            if logp_r is None or n_r is None:
                raise ValueError(f"{self.name} needs rationale log-probs")
            out["rationale_nll"] = rationale_nll(logp_r, n_r, params.rationale_norm)
            out["loss"] = out["loss"] + params.rationale_weight * out["rationale_nll"]
        return out


class DPOLoss(PreferenceLoss):
    def implicit_reward(self, logp, n_tokens, ref_logp, beta):
        if ref_logp is None:
            raise ValueError(f"{self.name}: the implicit reward beta*log(pi/pi_ref) needs a reference model")
        return dpo_rewards(logp, ref_logp, beta)

    def base_terms(self, params, logp_w, n_w, logp_l, n_l, ref_logp_w, ref_logp_l):
        return {"loss": dpo_loss(logp_w, logp_l, ref_logp_w, ref_logp_l, params.beta),
                "rewards_chosen": dpo_rewards(logp_w, ref_logp_w, params.beta),
                "rewards_rejected": dpo_rewards(logp_l, ref_logp_l, params.beta)}


class SimPOLoss(PreferenceLoss):
    def implicit_reward(self, logp, n_tokens, ref_logp, beta):
        return simpo_rewards(logp, n_tokens, beta)

    def base_terms(self, params, logp_w, n_w, logp_l, n_l, ref_logp_w, ref_logp_l):
        return {"loss": simpo_loss(logp_w, n_w, logp_l, n_l, params.beta, params.gamma_beta_ratio),
                "rewards_chosen": simpo_rewards(logp_w, n_w, params.beta),
                "rewards_rejected": simpo_rewards(logp_l, n_l, params.beta)}


class ORPOLoss(PreferenceLoss):
    def implicit_reward(self, logp, n_tokens, ref_logp, beta):
        return log_odds(logp, n_tokens)

    def base_terms(self, params, logp_w, n_w, logp_l, n_l, ref_logp_w, ref_logp_l):
        loss, sft_nll, or_loss = orpo_loss(logp_w, n_w, logp_l, n_l, params.lam)
        return {"loss": loss, "sft_nll": sft_nll, "odds_ratio_loss": or_loss,
                "rewards_chosen": log_odds(logp_w, n_w), "rewards_rejected": log_odds(logp_l, n_l)}


LOSS_CLASSES: dict[str, type[PreferenceLoss]] = {"dpo": DPOLoss, "orpo": ORPOLoss, "simpo": SimPOLoss}
LOSSES: dict[str, PreferenceLoss] = {name: LOSS_CLASSES[f.base](name, f) for name, f in METHOD_FACTS.items()}


def loss_for(method: str) -> PreferenceLoss:
    facts(method)  # an unknown method: the one error message
    return LOSSES[method]


def preference_loss(
    params: LossParams,
    logp_w: torch.Tensor, n_w: torch.Tensor, logp_l: torch.Tensor, n_l: torch.Tensor,
    ref_logp_w: torch.Tensor | None = None, ref_logp_l: torch.Tensor | None = None,
    logp_r: torch.Tensor | None = None, n_r: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The method's loss object applied (kept as a function: the trainer and the TRL checks call it)."""
    return loss_for(params.method)(params, logp_w, n_w, logp_l, n_l, ref_logp_w, ref_logp_l, logp_r, n_r)
