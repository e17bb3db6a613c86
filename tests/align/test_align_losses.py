"""Each preference loss and implicit reward against values worked out by hand from the paper formulas."""

from __future__ import annotations

import math

import pytest
import torch

from sparsealign.align import losses as L


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def softplus_neg(x: float) -> float:
    """-log σ(x) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def test_dpo_loss_and_rewards_match_hand_values():
    # β[(−10 − (−11)) − (−12 − (−11))] = 0.1·(1 + 1) = 0.2  ->  −log σ(0.2) = 0.598138869...
    loss = L.dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    assert loss.item() == pytest.approx(0.5981388693815918, abs=1e-12)
    assert L.dpo_rewards(t(-10.0), t(-11.0), 0.1).item() == pytest.approx(0.1)
    # identical policy and reference: margin 0 -> log 2
    assert L.dpo_loss(t(-3.0), t(-5.0), t(-3.0), t(-5.0), beta=0.5).item() == pytest.approx(math.log(2))


def test_simpo_loss_uses_length_normalised_reward_and_gamma_over_beta():
    # β=2, γ/β=0.5 -> γ=1;  2·(−6/3) − 2·(−10/2) − 1 = −4 + 10 − 1 = 5  ->  −log σ(5)
    loss = L.simpo_loss(t(-6.0), t(3), t(-10.0), t(2), beta=2.0, gamma_beta_ratio=0.5)
    assert loss.item() == pytest.approx(softplus_neg(5.0), abs=1e-12)
    assert loss.item() == pytest.approx(0.006715348489117967, abs=1e-12)
    # TRL's CPO/SimPO form with the *absolute* γ (simpo_gamma = γ/β · β) gives the same number
    beta, simpo_gamma = 2.0, 0.5 * 2.0
    logits = (-6.0 / 3 - -10.0 / 2) - simpo_gamma / beta
    assert loss.item() == pytest.approx(softplus_neg(beta * logits), abs=1e-12)
    assert L.simpo_rewards(t(-6.0), t(3), 2.0).item() == pytest.approx(-4.0)


def test_orpo_loss_matches_odds_computed_directly():
    # chosen: mean logp −1 -> P = e^−1; rejected: mean logp −3 -> P = e^−3; odds = P/(1−P)
    p_w, p_l = math.exp(-1.0), math.exp(-3.0)
    log_or = math.log(p_w / (1 - p_w)) - math.log(p_l / (1 - p_l))
    assert log_or == pytest.approx(2.4076059644, abs=1e-9)
    expected = 1.0 + 0.1 * softplus_neg(log_or)  # L_SFT = mean NLL of the chosen response = 1
    loss, sft, ratio = L.orpo_loss(t(-4.0), t(4), t(-9.0), t(3), lam=0.1)
    assert sft.item() == pytest.approx(1.0)
    assert ratio.item() == pytest.approx(softplus_neg(log_or), abs=1e-12)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert L.log_odds(t(-4.0), t(4)).item() == pytest.approx(math.log(p_w / (1 - p_w)), abs=1e-12)


def test_log1mexp_is_stable_at_both_ends():
    near = t(-1e-6, -0.5, -1.0)  # log(-expm1(x)) is exact here
    assert torch.allclose(L.log1mexp(near), t(*[math.log(-math.expm1(v)) for v in near.tolist()]), rtol=1e-12)
    far = t(-30.0, -200.0)  # log(1 - e^x) = -(e^x + e^2x/2 + ...): naive forms round to 0 or lose digits
    assert torch.allclose(L.log1mexp(far), t(*[-(math.exp(v) + math.exp(2 * v) / 2) for v in far.tolist()]),
                          rtol=1e-12, atol=0)
    # mean log-prob of exactly 0 (P = 1) stays finite instead of an infinite log odds
    assert torch.isfinite(L.log_odds(t(0.0), t(5))).all()
    # float32 just below 0: the naive log1p(-exp(x)) is -inf there, ours is finite (x clamped to -1e-7)
    x32 = torch.tensor([-1e-9], dtype=torch.float32)
    assert not torch.isfinite(torch.log1p(-torch.exp(x32))).all()
    assert L.log1mexp(x32).item() == pytest.approx(math.log(1e-7), rel=1e-3)


@pytest.mark.parametrize("norm,expected_nll", [("mean", 2.0), ("sum", 20.0)])
def test_rationale_term_added_with_weight_and_normalisation(norm, expected_nll):
    base = L.dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1).item()
    params = L.LossParams("rdpo", beta=0.1, rationale_weight=0.5, rationale_norm=norm)
    out = L.preference_loss(params, t(-10.0), t(5), t(-12.0), t(6), t(-11.0), t(-11.0), t(-20.0), t(10))
    assert out["rationale_nll"].item() == pytest.approx(expected_nll)
    assert out["loss"].item() == pytest.approx(base + 0.5 * expected_nll)


def test_dispatch_rewards_and_missing_inputs():
    w, nw, lo, nl = t(-4.0), t(4), t(-9.0), t(3)
    orpo = L.preference_loss(L.LossParams("orpo", lam=0.1), w, nw, lo, nl)
    assert orpo["rewards_chosen"].item() == pytest.approx(L.log_odds(w, nw).item())
    simpo = L.preference_loss(L.LossParams("simpo", beta=2.0), w, nw, lo, nl)
    assert simpo["rewards_rejected"].item() == pytest.approx(2.0 * -3.0)
    with pytest.raises(ValueError, match="reference"):
        L.preference_loss(L.LossParams("dpo"), w, nw, lo, nl)
    with pytest.raises(ValueError, match="rationale"):
        L.preference_loss(L.LossParams("rsimpo"), w, nw, lo, nl)
    assert [m for m in L.METHODS if L.facts(m).needs_reference] == ["dpo", "rdpo"]
    assert L.REFERENCE_METHODS == ("dpo", "rdpo") and L.RATIONALE_METHODS == ("rdpo", "rorpo", "rsimpo")


@pytest.mark.parametrize("method", L.METHODS)
def test_gradients_are_finite_even_for_extreme_log_probs(method):
    torch.manual_seed(0)
    logp = torch.cat([torch.randn(6) * 20 - 40, t(-1e-9, -5000.0).float()]).requires_grad_()
    n = torch.tensor([7, 3, 1, 50, 2, 9, 1, 400])
    ref = torch.randn(8) * 20 - 40
    w, lo = logp[:4], logp[4:]
    out = L.preference_loss(L.LossParams(method), w, n[:4], lo, n[4:], ref[:4], ref[4:], logp[:4] * 2, n[4:])
    out["loss"].mean().backward()
    assert torch.isfinite(out["loss"]).all()
    assert torch.isfinite(logp.grad).all() and logp.grad.abs().sum() > 0
