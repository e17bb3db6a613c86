"""Pure threshold / metric functions against their formulas, and the dynamic controller on synthetic streams."""

from __future__ import annotations

import math

import pytest
import torch

from sparsealign.sparse.config import ControllerConfig
from sparsealign.sparse.controller import ThresholdController
from sparsealign.sparse.metrics import (
    empirical_threshold,
    ffn_flops,
    ideal_speedup,
    kl_per_token,
    realized_sparsity,
    recall_cutoff,
    recall_precision,
    top1_agreement,
)


def test_empirical_threshold_is_the_order_statistic_and_hits_the_fraction():
    values = torch.arange(1, 1001, dtype=torch.float32)[torch.randperm(1000)]
    t = empirical_threshold(values, 0.3)
    assert t == 300.0
    assert realized_sparsity(values > t) == pytest.approx(0.3)
    assert empirical_threshold(values, 0.0) == 0.0


def test_empirical_threshold_makes_no_symmetry_assumption():
    g = torch.Generator().manual_seed(0)
    skewed = torch.distributions.Exponential(1.0).sample((200_000,)) ** 3  # heavy right tail
    for s in (0.5, 0.9):
        t = empirical_threshold(skewed, s)
        assert realized_sparsity(skewed > t) == pytest.approx(s, abs=1e-4)
    # ReLU-like atom at 0: a target below the natural zero share gives t = 0 (realized = natural zeros)
    relu = torch.relu(torch.randn(10_000, generator=g))
    assert empirical_threshold(relu, 0.3) == 0.0
    assert realized_sparsity(relu > 0.0) == pytest.approx(float((relu == 0).float().mean()))


def test_kl_top1_recall_formulas():
    p_logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    q_logits = torch.tensor([[1.0, 1.0, -1.0], [0.0, 0.1, 3.0]])
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    expected = (p * (p / q).log()).sum(-1)
    assert torch.allclose(kl_per_token(p_logits, q_logits).float(), expected, atol=1e-6)
    assert torch.all(kl_per_token(p_logits, p_logits) == 0)
    assert top1_agreement(p_logits, q_logits) == 1.0
    pred = torch.tensor([True, True, False, False, True])
    true = torch.tensor([True, False, True, False, True])
    assert recall_precision(pred, true) == pytest.approx((2 / 3, 2 / 3))


def test_recall_cutoff_keeps_the_requested_fraction():
    scores = torch.arange(1, 101, dtype=torch.float32)[torch.randperm(100)]
    c = recall_cutoff(scores, 0.9)
    assert float((scores >= c).float().mean()) == pytest.approx(0.9)
    assert float((scores >= recall_cutoff(scores, 1.0)).float().mean()) == 1.0


def test_ffn_flops_and_amdahl():
    H, I = 64, 256  # noqa: E741 (the paper notation)
    s = 0.75
    static = ffn_flops(H, I, I * (1 - s), "static")
    assert static["dense"] == 6 * H * I
    assert static["skipped_fraction"] == pytest.approx(2 / 3 * s)  # gate stays dense
    pred = ffn_flops(H, I, I * (1 - s), "predictor", predictor_rank=8)
    assert pred["sparse"] == 6 * H * I * (1 - s) + 2 * (H * 8 + 8 * I)
    assert ideal_speedup(0.5) == pytest.approx(2.0)
    assert ideal_speedup(0.9, ffn_share=0.5) == pytest.approx(1 / (0.5 + 0.05))


def _stream(n: int, scale: float, seed: int, inter: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, inter, generator=g) * scale).abs().view(1, n, inter)


def test_controller_tracks_target_through_a_scale_shift_where_static_drifts():
    target = 0.7
    calib = _stream(2000, 1.0, 0)
    t0 = empirical_threshold(calib, target)
    ctl = ThresholdController([t0], [target], [float(calib.median())], ControllerConfig())
    shifted = _stream(3000, 1.6, 1)  # the activations grow by 60%: static sparsity collapses
    thresholds = ctl.scan(0, shifted)
    dyn = 1 - float((shifted[0, 500:] > thresholds[500:, None]).float().mean())
    static = 1 - float((shifted[0, 500:] > t0).float().mean())
    print(f"target {target}: dynamic {dyn:.4f}, static {static:.4f}")
    assert abs(dyn - target) < 0.02
    assert abs(static - target) > 0.1
    assert ctl.threshold(0) / t0 == pytest.approx(1.6, rel=0.1)  # it found the new quantile


def test_controller_time_average_identity_frozen_and_bounds():
    target, eta = 0.5, 0.05
    cfg = ControllerConfig(step=eta, warmup_tokens=0, max_ratio=1e6)
    stream = _stream(400, 1.0, 3, inter=64)
    ctl = ThresholdController([0.3], [target], [1.0], cfg)
    ts = ctl.scan(0, stream)
    f = (stream[0] > ts[:, None]).float().mean(-1).double()
    # summing the update rule: mean(f) - (1 - s) = (log t_K - log t_0) / (eta K), exactly
    assert float(f.mean() - (1 - target)) == pytest.approx((math.log(ctl.threshold(0)) - math.log(0.3)) / (eta * 400),
                                                           abs=1e-9)
    frozen = ThresholdController([0.3], [target], [1.0], ControllerConfig(frozen=True))
    assert torch.all(frozen.scan(0, stream) == 0.3)
    bounded = ThresholdController([0.3], [target], [1.0], ControllerConfig(max_ratio=2.0))
    bounded.scan(0, stream * 100)
    assert bounded.threshold(0) == pytest.approx(0.6)
    off = ThresholdController([0.0], [0.0], [1.0], ControllerConfig())
    assert torch.all(off.scan(0, stream) == 0.0)


def test_controller_is_causal_and_reproducible():
    stream = _stream(64, 1.0, 5, inter=128)
    a = ThresholdController([0.5], [0.6], [0.7], ControllerConfig())
    whole = a.scan(0, stream)
    b = ThresholdController([0.5], [0.6], [0.7], ControllerConfig())
    pieces = torch.cat([b.scan(0, stream[:, i:i + 1]) for i in range(64)])
    assert torch.equal(whole, pieces)


def test_profile_stats_and_hot_cold_summary():
    from sparsealign.sparse.profile import hot_cold_summary, neuron_stats

    # 4 neurons over 10 tokens: neuron 0 fires always, 1 on 9/10 tokens, 2 on 1/10, 3 never
    a = torch.zeros(10, 4)
    a[:, 0] = 2.0
    a[:9, 1] = 1.0
    a[0, 2] = 5.0
    stats = neuron_stats(a, 0.5)
    assert stats["frequency"].tolist() == pytest.approx([1.0, 0.9, 0.1, 0.0])
    assert stats["mean_abs_a"].tolist() == pytest.approx([2.0, 0.9, 0.5, 0.0])
    assert stats["max_abs_a"].tolist() == [2.0, 1.0, 5.0, 0.0]
    summary = hot_cold_summary(stats["frequency"], hot_fraction=0.8)
    assert summary["hot_neurons"] == 0.5  # neurons 0 and 1
    assert summary["hot_firing_share"] == pytest.approx(1.9 / 2.0)
    assert summary["neurons_for_80pct_firings"] == 0.5  # 1.0 + 0.9 >= 0.8 * 2.0
