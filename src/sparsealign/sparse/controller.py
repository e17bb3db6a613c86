"""Dynamic threshold adjustment: a per-layer online quantile tracker that holds a target sparsity under drift.

PowerInfer and TEAL fix the threshold at calibration time; when the activation statistics move (another prompt
domain, weights changed by alignment) the realized sparsity moves with them.  This controller re-estimates, token by
token, the threshold whose exceedance rate is 1 - s* (the s*-quantile of |a|).

Update rule (per layer l, after each token k; a Robbins-Monro quantile tracker in log-threshold space):

    f_k        = fraction of the layer's I neurons with |a| > t_k on token k       (realized density)
    log t_k+1  = clip( log t_k + eta_k * (f_k - (1 - s*)),  log t0 - log R,  log t0 + log R )
    eta_k      = warmup_step while k < warmup_tokens, else step

State: log t (starts at the calibrated static threshold t0), tokens seen k, and an EMA of 1 - f_k for the trace.
Stability: E[f | t] decreases monotonically in log t, so the drift pushes log t towards the unique fixed point
where E[f] = 1 - s*; linearised, the error contracts by (1 - eta * rho) per token, rho = density of log|a| at the
fixed point (< 1 for the activations we see), so any eta < 1/rho is stable, and the clip keeps a burst of outliers
from running away.  Summing the update over K tokens gives the long-run guarantee
    mean_k f_k - (1 - s*) = (log t_K - log t_0) / (eta K),
so the time-averaged realized sparsity meets the target to within 2 log R / (eta K) even without convergence.
Log space makes the step scale-free (the same eta works for layers whose |a| differ by orders of magnitude) and
tracks multiplicative drift.  Warm-up uses a larger step so the first tokens of a new domain lock on quickly.
Frozen mode skips every update: thresholds stay at t0, i.e. exactly the static baseline.  No randomness: replaying
the same tokens gives the same thresholds.  Tokens inside one call are processed in order (a causal scan), so a
teacher-forced forward over a sequence gives the same thresholds as decoding it token by token.
"""

from __future__ import annotations

import math

import torch

from sparsealign.sparse.config import ControllerConfig


class ThresholdController:
    """Holds the per-layer state; `MLP` wrappers call `scan(layer, abs_a)` once per forward."""

    def __init__(self, static: list[float], targets: list[float], scales: list[float], cfg: ControllerConfig):
        self.cfg, self.targets, self.static = cfg, list(targets), list(static)
        # a layer with target 0 stays exactly dense; a zero static threshold (ReLU already sparser than the target)
        # starts from a small positive floor so log space is defined
        self.enabled = [s > 0 for s in targets]
        self.t0 = [max(t, 1e-3 * max(sc, 1e-12)) for t, sc in zip(static, scales, strict=True)]
        self.reset()

    def reset(self) -> None:
        self.log_t = [math.log(t) for t in self.t0]
        self.seen = [0] * len(self.t0)
        self.ema = [float(s) for s in self.targets]

    def threshold(self, layer: int) -> float:
        return math.exp(self.log_t[layer]) if self.enabled[layer] else 0.0

    def scan(self, layer: int, abs_a: torch.Tensor) -> torch.Tensor:
        """Thresholds for each position of abs_a [B, T, I] (shared over the batch), updating the state causally."""
        T = abs_a.shape[-2]
        if not self.enabled[layer]:
            return torch.zeros(T)
        if self.cfg.frozen:  # exactly the calibrated static value (no floor), so frozen == mode static
            return torch.full((T,), float(self.static[layer]))
        return torch.tensor([self.step(layer, abs_a[..., j, :]) for j in range(T)])

    def step(self, layer: int, abs_a: torch.Tensor) -> float:
        """The threshold to apply to one position's |a| (any leading batch dims), then the update from it."""
        if not self.enabled[layer]:
            return 0.0
        if self.cfg.frozen:
            return float(self.static[layer])
        cfg, log_t = self.cfg, self.log_t[layer]
        t = math.exp(log_t)
        f = float((abs_a > t).float().mean())
        eta = cfg.warmup_step if self.seen[layer] < cfg.warmup_tokens else cfg.step
        base, lo_hi = math.log(self.t0[layer]), math.log(cfg.max_ratio)
        self.log_t[layer] = min(max(log_t + eta * (f - (1.0 - self.targets[layer])), base - lo_hi), base + lo_hi)
        self.seen[layer] += 1
        self.ema[layer] = cfg.ema * self.ema[layer] + (1 - cfg.ema) * (1.0 - f)
        return t

    def state(self) -> dict[str, list[float]]:
        return {"threshold": [self.threshold(i) for i in range(len(self.t0))], "tokens_seen": list(self.seen),
                "ema_sparsity": list(self.ema)}
