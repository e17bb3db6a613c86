"""Pure threshold / metric functions against their formulas, and the dynamic controller on synthetic streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsealign.sparse.config import ControllerConfig
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
from sparsealign.sparse.runtime.controller import ThresholdController, controller_update, token_quantile


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


def _realized(stream: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """[B, T] realized sparsity of each position under its applied threshold."""
    return 1 - (stream > thresholds.unsqueeze(-1)).float().mean(-1)


def test_controller_tracks_target_through_a_scale_shift_where_static_drifts():
    target = 0.7
    calib = _stream(2000, 1.0, 0)
    t0 = empirical_threshold(calib, target)
    ctl = ThresholdController([t0], [target], [float(calib.median())], ControllerConfig())
    shifted = _stream(3000, 1.6, 1)  # the activations grow by 60%: static sparsity collapses
    thresholds = ctl.scan(0, shifted)
    dyn = float(_realized(shifted, thresholds)[0, 500:].mean())
    static = 1 - float((shifted[0, 500:] > t0).float().mean())
    print(f"target {target}: dynamic {dyn:.4f}, static {static:.4f}")
    assert abs(dyn - target) < 0.02
    assert abs(static - target) > 0.1
    assert ctl.threshold(0) / t0 == pytest.approx(1.6, rel=0.1)  # it found the new quantile


def test_update_rule_is_the_formula():
    m, delta = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([0.1, -0.2, 0.5], dtype=torch.float64)
    log_q = torch.tensor([0.5, 3.0, 2.2], dtype=torch.float64)
    f = torch.tensor([0.4, 0.9, 0.1], dtype=torch.float64)
    alpha, eta = torch.full((3,), 0.2, dtype=torch.float64), torch.full((3,), 0.05, dtype=torch.float64)
    m2, d2 = controller_update(m, delta, log_q, f, 0.3, alpha, eta, band=1.0, bound=0.52)
    assert m2.tolist() == pytest.approx([0.0 + 0.2 * 0.5, 1.0 + 0.2 * 2.0, 2.0 + 0.2 * 0.2])
    # row 0 learns: |0.5 - 0.1| <= 1; row 1 does not: |3.0 - 0.8| > 1 (a scale jump); row 2 learns
    assert d2.tolist() == pytest.approx([0.1 + 0.05 * (0.4 - 0.3), -0.2, 0.5 + 0.05 * (0.1 - 0.3)])
    _, d3 = controller_update(m, delta, log_q, torch.ones(3, dtype=torch.float64), 0.3, alpha, eta, 10.0, 0.52)
    assert d3[2].item() == pytest.approx(0.52)  # |delta| <= log R
    q = token_quantile(np.array([[[0.0, 0.0, 3.0, 1.0], [4.0, 2.0, 3.0, 1.0]]], dtype=np.float32), 0.5, 1e-3)
    assert q[0].tolist() == pytest.approx([1e-3, 2.0])  # the 2nd order statistic of each token, floored
    rng = np.random.default_rng(0)
    for shape, zeros in (((1, 5632), 0.86), ((3, 97), 0.5), ((40, 64), 0.7), ((2, 10), 1.0)):
        v = np.abs(rng.standard_normal(shape)).astype(np.float32)
        v[rng.random(shape) < zeros] = 0.0
        expected = np.maximum(np.sort(v, axis=-1)[:, round(0.9 * shape[1]) - 1], np.float32(1e-3))
        assert token_quantile(v, 0.9, 1e-3).tolist() == expected.astype(np.float64).tolist()  # both code paths


def test_controller_time_average_identity_frozen_and_bounds():
    target, eta = 0.5, 0.05
    # the correction always learns (band large) and never clips: the Robbins-Monro identity is exact
    cfg = ControllerConfig(step=eta, warmup_tokens=0, max_ratio=1e6, band=1e6)
    stream = _stream(400, 1.0, 3, inter=64)
    ctl = ThresholdController([0.3], [target], [1.0], cfg)
    ts = ctl.scan(0, stream)
    f = (1 - _realized(stream, ts)[0]).double()
    # summing the update rule: mean(f) - (1 - s) = (delta_K - delta_0) / (eta K), exactly
    assert float(f.mean() - (1 - target)) == pytest.approx(float(ctl.delta[0][0]) / (eta * 400), abs=1e-9)
    frozen = ThresholdController([0.3], [target], [1.0], ControllerConfig(frozen=True))
    assert torch.all(frozen.scan(0, stream) == 0.3)
    off = ThresholdController([0.0], [0.0], [1.0], ControllerConfig())
    assert torch.all(off.scan(0, stream) == 0.0)
    bounded = ThresholdController([0.3], [target], [1.0], ControllerConfig(max_ratio=2.0, band=1e6))
    bounded.scan(0, stream * 100)
    assert abs(float(bounded.delta[0][0])) <= math.log(2.0) + 1e-12  # R bounds the correction, not the scale
    assert bounded.threshold(0) > 10 * 0.3


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9])
@pytest.mark.parametrize("jump", [50.0, 1 / 50])
def test_controller_recovers_from_a_50x_scale_jump(target, jump):
    """docs/sparse.md: every 16-token window starting >= 48 tokens after a 50x jump (up or down) is within 0.02
    of the target (SmolLM2's FFN width, i.i.d. |N(0,1)| activations)."""
    width, n = 1536, 400
    t0 = empirical_threshold(_stream(2000, 1.0, 0, width), target)
    ctl = ThresholdController([t0], [target], [0.67], ControllerConfig())
    stream = torch.cat([_stream(n, 1.0, 1, width), _stream(n, jump, 2, width)], dim=1)
    realized = _realized(stream, ctl.scan(0, stream))[0]
    windows = realized[n + 48:].unfold(0, 16, 1).mean(-1)
    assert float((windows - target).abs().max()) <= 0.02
    assert float((realized[n - 100:n] - target).abs().mean()) < 0.02  # on target before the jump too
    assert abs(float(realized[n:n + 4].mean()) - target) > 0.09  # the jump is real: it starts far off
    assert ctl.threshold(0) / t0 == pytest.approx(jump, rel=0.1)


def test_controller_rows_are_independent_and_padding_is_ignored():
    """Batch invariance: row b of a padded batch gets exactly the thresholds of its own tokens alone."""
    rows = [_stream(40, 1.0, 10 + b, 128)[0] for b in range(3)]
    lengths = [40, 25, 31]
    batch = torch.zeros(3, 40, 128)
    valid = torch.zeros(3, 40, dtype=torch.bool)
    for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):  # left padding with garbage values
        batch[b, 40 - n:] = row[:n]
        batch[b, :40 - n] = 1e3
        valid[b, 40 - n:] = True
    cfg = ControllerConfig()
    together = ThresholdController([0.5], [0.6], [0.7], cfg).scan(0, batch, valid)
    for b, n in enumerate(lengths):
        alone = ThresholdController([0.5], [0.6], [0.7], cfg).scan(0, rows[b][:n].unsqueeze(0))
        assert torch.equal(together[b, 40 - n:], alone[0])


def test_controller_is_causal_and_reproducible():
    stream = _stream(64, 1.0, 5, inter=128)
    a = ThresholdController([0.5], [0.6], [0.7], ControllerConfig())
    whole = a.scan(0, stream)
    b = ThresholdController([0.5], [0.6], [0.7], ControllerConfig())
    pieces = torch.cat([b.scan(0, stream[:, i:i + 1]) for i in range(64)], dim=1)
    assert torch.equal(whole, pieces)
    c = ThresholdController([0.5], [0.6], [0.7], ControllerConfig())
    steps = torch.stack([c.step(0, stream[:, i]) for i in range(64)], dim=1)
    assert torch.equal(whole, steps)


def test_profile_stats_and_hot_cold_summary():
    from sparsealign.sparse.calibration.profile import hot_cold_summary, neuron_stats

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


def test_the_c_decode_step_follows_the_python_rule():
    """`step_row` (one C call at batch-1 decode) gives the thresholds and state of `step` (numpy) on a stream that
    warms up, jumps 50x in scale (the correction stops learning, then clips) and has ReLU zeros."""
    from sparsealign.sparse.runtime import kernels

    if kernels.load() is None:
        pytest.skip("no C compiler here: step_row falls back to step itself")
    cfg = ControllerConfig(max_ratio=2.0)
    rng = np.random.default_rng(0)
    fast, slow = (ThresholdController([0.5, 0.3], [0.9, 0.6], [1.0, 1.0], cfg) for _ in range(2))
    for k in range(120):
        scale = 50.0 if 40 <= k < 80 else 1.0
        for c, d in ((0, 5632), (1, 97)):
            v = np.abs(rng.standard_normal(d)).astype(np.float32) * scale
            v[rng.random(d) < 0.6] = 0.0
            a = torch.from_numpy(v)
            t_slow = float(slow.step(c, a.view(1, -1))[0])
            assert fast.step_row(c, a) == pytest.approx(t_slow, rel=1e-12, abs=0)
    for c in (0, 1):
        for name in ("m", "delta", "seen", "ema"):
            assert float(getattr(fast, name)[c][0]) == pytest.approx(float(getattr(slow, name)[c][0]), rel=1e-12)
    assert float(slow.delta[0][0]) != 0.0 and int(fast.seen[0][0]) == 120


def test_the_c_scan_follows_the_python_scan_on_packed_padded_rows():
    """`scan` in one C call gives the thresholds and final state of the numpy scan, on rows that are packed pairs
    (the rejected branch restarts from the end of the prompt), padded at the end, tied, and jump 50x in scale."""
    from sparsealign.sparse.runtime import kernels

    lib = kernels.load()
    if lib is None:
        pytest.skip("no C compiler here: scan runs in numpy only")
    rng = np.random.default_rng(1)
    B, T, D, prompt, chosen = 3, 40, 257, 10, 14
    v = np.abs(rng.standard_normal((B, T, D))).astype(np.float32)
    v[:, 20:30] *= 50.0
    v[rng.random((B, T, D)) < 0.5] = 0.0
    v[2] = np.round(v[2] * 4) / 4  # row 2: a handful of distinct values, ties at every quantile
    valid = np.ones((B, T), dtype=bool)
    valid[1, 33:] = False  # padding: the row's state must not move
    parents = np.tile(np.arange(-1, T - 1), (B, 1))
    parents[:2, prompt + chosen] = prompt - 1  # rows 0 and 1: the rejected response branches off the prompt
    parents[~valid] = -1
    cfg = ControllerConfig(max_ratio=2.0)
    fast, slow = (ThresholdController([0.5], [0.7], [1.0], cfg) for _ in range(2))
    for ctl in (fast, slow):
        ctl._rows(0, B)
    t_fast = fast._scan_c(lib, 0, v, valid, torch.from_numpy(parents))
    t_slow = slow._scan_numpy(0, v, valid, torch.from_numpy(parents))
    np.testing.assert_allclose(t_fast.numpy(), t_slow.numpy(), rtol=1e-6)
    for name in ("m", "delta", "ema"):
        np.testing.assert_allclose(getattr(fast, name)[0].numpy(), getattr(slow, name)[0].numpy(), rtol=1e-9)
    # tokens seen: a branched row counts its prompt and rejected response, the padded one stops at its end
    assert fast.seen[0].tolist() == slow.seen[0].tolist() == [T - chosen, 33 - chosen, T]
    # row 0's rejected branch gets the thresholds of prompt + rejected scanned as one sequence of its own
    alone = ThresholdController([0.5], [0.7], [1.0], cfg)
    linear = np.ascontiguousarray(np.concatenate([v[:1, :prompt], v[:1, prompt + chosen:]], axis=1))
    alone._rows(0, 1)
    np.testing.assert_allclose(alone._scan_c(lib, 0, linear, None, None)[0, prompt:].numpy(),
                               t_fast[0, prompt + chosen:].numpy(), rtol=1e-6)
