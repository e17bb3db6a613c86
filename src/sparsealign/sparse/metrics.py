"""Pure functions for thresholds and sparsity metrics (each tested against its formula).

Notation: `a` is the thresholded tensor — the gate activation act(gate_proj(x)) of a gated MLP, shape [..., I];
a neuron is *active* when |a| > t.  H = hidden size, I = intermediate size.
"""

from __future__ import annotations

import torch

from sparsealign.sparse.modes import facts


def empirical_threshold(abs_values: torch.Tensor, sparsity: float) -> float:
    """The empirical `sparsity`-quantile of |a|: masking |a| <= t zeroes ~`sparsity` of the samples.

    No distributional assumption (TEAL's and CATS' activations are skewed; ReLU has an atom at 0).  Uses the
    k-th order statistic, k = round(s*N), which has no size limit (torch.quantile stops at 16M elements).
    sparsity <= 0 returns 0.0, which keeps every non-zero activation: exactly dense.
    """
    flat = abs_values.reshape(-1).float()
    if sparsity <= 0 or flat.numel() == 0:
        return 0.0
    k = min(max(1, round(sparsity * flat.numel())), flat.numel())
    return float(flat.kthvalue(k).values)


def realized_sparsity(mask: torch.Tensor) -> float:
    """Fraction of neurons NOT computed (mask is True for active neurons)."""
    return 1.0 - float(mask.float().mean()) if mask.numel() else 0.0


def ffn_flops(hidden: int, inter: int, active: float, mode: str, predictor_rank: int = 0,
              input_density: float = 1.0) -> dict[str, float]:
    """Multiply-add FLOPs per token of one gated FFN, dense and sparse (active = mean number of active neurons).

    Thresholded modes (CATS: static, dynamic): gate is dense (it decides the mask), up and down only for active
    neurons.  A predictor mode (PowerInfer): gate, up and down only for predicted neurons, plus the predictor itself.
    input_density < 1 (TEAL input sparsity of x): gate and up read only that share of their columns.
    """
    dense = 3 * 2 * hidden * inter
    if facts(mode).predictor:
        overhead = 2 * (hidden * predictor_rank + predictor_rank * inter)
        sparse = 2 * 2 * hidden * input_density * active + 2 * hidden * active + overhead
    else:
        sparse = 2 * hidden * input_density * (inter + active) + 2 * hidden * active
    return {"dense": float(dense), "sparse": float(sparse), "skipped_fraction": 1.0 - sparse / dense}


def ideal_speedup(skipped_fraction: float, ffn_share: float = 1.0) -> float:
    """Amdahl: only the FFN share of the time shrinks, by the fraction of its FLOPs (= weight bytes) skipped."""
    return 1.0 / ((1.0 - ffn_share) + ffn_share * (1.0 - skipped_fraction))


def kl_per_token(dense_logits: torch.Tensor, sparse_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_dense || p_sparse) per position, in nats: sum_v p_d (log p_d - log p_s). Shape [...]."""
    logp = torch.log_softmax(dense_logits.double(), dim=-1)
    logq = torch.log_softmax(sparse_logits.double(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def top1_agreement(dense_logits: torch.Tensor, sparse_logits: torch.Tensor) -> float:
    """Fraction of positions where the argmax (greedy next token) is the same."""
    return float((dense_logits.argmax(-1) == sparse_logits.argmax(-1)).float().mean())


def recall_precision(predicted: torch.Tensor, actual: torch.Tensor) -> tuple[float, float]:
    """Recall = |pred & true| / |true|, precision = |pred & true| / |pred| (1.0 when the denominator is 0)."""
    tp = float((predicted & actual).sum())
    n_true, n_pred = float(actual.sum()), float(predicted.sum())
    return (tp / n_true if n_true else 1.0), (tp / n_pred if n_pred else 1.0)


def recall_cutoff(scores_of_positives: torch.Tensor, recall: float) -> float:
    """Largest cut-off c with mean(score >= c) >= recall over the truly active neurons' scores."""
    flat = scores_of_positives.reshape(-1).float()
    if flat.numel() == 0:
        return float("inf")
    k = int(flat.numel() - torch.ceil(torch.tensor(recall * flat.numel())).item())  # how many may fall below
    k = min(max(k, 0), flat.numel() - 1)
    return float(flat.sort().values[k])
