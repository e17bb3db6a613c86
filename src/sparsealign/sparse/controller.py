"""Dynamic thresholds: per sequence (per batch row), per channel (site x layer) online quantile trackers.

PowerInfer and TEAL fix the threshold at calibration time; when the activation statistics move (another prompt
domain, weights changed by alignment, a scale jump) the realized sparsity moves with them.  The controller
re-estimates, token by token, the threshold whose exceedance rate is d* = 1 - s* (the s*-quantile of |v|).

Update rule (one channel, one batch row, after each of its real tokens k; `controller_update`, a pure function):

    q_k    = the s*-quantile of this token's own |v| over the channel's D values  (floored at t_floor)
    f_k    = fraction of the D values with |v| > t_k                               (realized density)
    t_k    = exp(m_k + delta_k)                                                      (threshold applied to token k)
    m_k+1  = m_k + alpha_k (log q_k - m_k)                                           (scale tracker)
    delta_k+1 = clip(delta_k + eta_k (f_k - d*), -log R, log R)   if |log q_k - log t_k| <= band, else delta_k
    alpha_k, eta_k = warmup_track, warmup_step for the row's first warmup_tokens tokens, then track, step

Why two terms.  m follows the activation *scale* geometrically: after a jump by a factor c its error is
(1 - alpha)^n log c after n tokens, whatever the direction and the target (a pure Robbins-Monro tracker moves at
most eta*max(d*, 1 - d*) per token: ~800 tokens to come back from a 50x drop at s* = 0.9).  m alone would settle at
the mean log per-token quantile, which is not the quantile of the pooled stream; delta is the Robbins-Monro
correction that removes that bias, so the long-run guarantee holds: summing its updates over the K tokens where it
learns and does not clip, mean_k f_k - d* = (delta_K - delta_0) / (eta K), i.e. within 2 log R / (eta K) of the
target.  delta only learns while the token's own quantile is within e^band of the threshold: during a scale jump
f saturates at 0 or 1 and carries no information on the bias, and letting delta integrate it would overshoot and
then unwind at eta*d* per token.  R (max_ratio) bounds the correction only, not the scale, so any jump is followed.

Batch invariance.  State lives per batch row and a row's update reads only that row's real (non-padding) tokens, so
a row's thresholds are a function of its own tokens: batch 16 gives each row the thresholds it gets at batch 1.
Every new sequence (a forward with an empty KV cache) restarts all rows at the calibrated t0.  Frozen mode skips
every update (== mode static).  No randomness; tokens of one call are scanned in order, so a teacher-forced forward
equals decoding the same tokens one by one.
"""

from __future__ import annotations

import math

import torch

from sparsealign.errors import UserError
from sparsealign.sparse.config import ControllerConfig


def token_quantile(abs_v: torch.Tensor, sparsity: float, floor: float) -> torch.Tensor:
    """The `sparsity`-quantile of each token's own |v| over its last dim (k-th order statistic, k = round(s D)),
    floored so that log space is defined (ReLU's exact zeros)."""
    k = min(max(1, round(sparsity * abs_v.shape[-1])), abs_v.shape[-1])
    return abs_v.float().kthvalue(k, dim=-1).values.clamp_min(floor)


def controller_update(m: torch.Tensor, delta: torch.Tensor, log_q: torch.Tensor, f: torch.Tensor, density: float,
                      alpha: torch.Tensor, eta: torch.Tensor, band: float, bound: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the update rule above for a vector of rows; returns (m', delta')."""
    learn = (log_q - (m + delta)).abs() <= band
    delta_next = torch.where(learn, (delta + eta * (f - density)).clamp(-bound, bound), delta)
    return m + alpha * (log_q - m), delta_next


class ThresholdController:
    """Per channel c (site x layer) and batch row: m, delta, tokens seen, EMA of the realized sparsity."""

    def __init__(self, static: list[float], targets: list[float], scales: list[float], cfg: ControllerConfig):
        self.cfg, self.targets, self.static = cfg, list(targets), list(static)
        # a channel with target 0 stays exactly dense; a zero static threshold (ReLU already sparser than the
        # target) starts from a small positive floor so log space is defined
        self.enabled = [s > 0 for s in targets]
        self.floor = [1e-3 * max(sc, 1e-12) for sc in scales]
        self.t0 = [max(t, fl) for t, fl in zip(static, self.floor, strict=True)]
        self.reset()

    def reset(self) -> None:
        """Every channel back to one fresh row (broadcast to the batch on first use)."""
        n = len(self.t0)
        self.m = [torch.tensor([math.log(t)], dtype=torch.float64) for t in self.t0]
        self.delta = [torch.zeros(1, dtype=torch.float64) for _ in range(n)]
        self.seen = [torch.zeros(1, dtype=torch.long) for _ in range(n)]
        self.ema = [torch.tensor([float(s)], dtype=torch.float64) for s in self.targets]

    begin = reset  # a new sequence starts every row at the calibrated thresholds

    def snapshot(self) -> tuple:
        """The whole state (to return to it when a KV cache made at this point is copied and continued)."""
        return tuple([v.clone() for v in store] for store in (self.m, self.delta, self.seen, self.ema))

    def restore(self, snap: tuple) -> None:
        self.m, self.delta, self.seen, self.ema = ([v.clone() for v in store] for store in snap)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows' state (a generation loop that drops finished rows calls this)."""
        rows = rows.cpu().long()
        for store in (self.m, self.delta, self.seen, self.ema):
            for c, v in enumerate(store):
                store[c] = v.expand(int(rows.max()) + 1) if v.numel() == 1 else v
                store[c] = store[c][rows].clone()

    def _rows(self, c: int, batch: int) -> None:
        if self.m[c].numel() == batch:
            return
        if self.m[c].numel() != 1:
            raise UserError(f"dynamic controller: batch changed from {self.m[c].numel()} to {batch} rows within a "
                            "sequence", hint="call handle.keep_rows(rows) when a generation loop drops rows")
        for store in (self.m, self.delta, self.seen, self.ema):
            store[c] = store[c].expand(batch).clone()

    def threshold(self, c: int) -> float:
        """Row 0's current threshold (the whole state for batch 1)."""
        if not self.enabled[c]:
            return 0.0
        return float(self.static[c]) if self.cfg.frozen else math.exp(float(self.m[c][0] + self.delta[c][0]))

    def scan(self, c: int, abs_v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Thresholds [B, T] for abs_v [B, T, D], updating each row causally from its valid positions only."""
        B, T = abs_v.shape[:2]
        if not self.enabled[c]:
            return torch.zeros(B, T)
        if self.cfg.frozen:  # exactly the calibrated static value (no floor), so frozen == mode static
            return torch.full((B, T), float(self.static[c]))
        q = token_quantile(abs_v, self.targets[c], self.floor[c]).cpu().double().log()  # [B, T]
        valid = None if valid is None else valid.cpu()
        return torch.stack([self._update(c, abs_v[:, j], q[:, j], None if valid is None else valid[:, j])
                            for j in range(T)], dim=1).float()

    def step(self, c: int, abs_v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Thresholds [B] to apply to one position abs_v [B, D], then the update from it."""
        B = abs_v.shape[0]
        if not self.enabled[c]:
            return torch.zeros(B)
        if self.cfg.frozen:
            return torch.full((B,), float(self.static[c]))
        q = token_quantile(abs_v, self.targets[c], self.floor[c]).cpu().double().log()
        return self._update(c, abs_v, q, None if valid is None else valid.cpu()).float()

    def _update(self, c: int, abs_v: torch.Tensor, log_q: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        self._rows(c, abs_v.shape[0])
        m, delta, seen = self.m[c], self.delta[c], self.seen[c]
        t = (m + delta).exp()
        f = (abs_v > t.to(abs_v.device, abs_v.dtype).unsqueeze(-1)).double().mean(-1).cpu()
        warm = seen < cfg.warmup_tokens
        alpha = torch.where(warm, cfg.warmup_track, cfg.track).double()
        eta = torch.where(warm, cfg.warmup_step, cfg.step).double()
        m2, d2 = controller_update(m, delta, log_q, f, 1.0 - self.targets[c], alpha, eta, cfg.band,
                                   math.log(cfg.max_ratio))
        ema = cfg.ema * self.ema[c] + (1 - cfg.ema) * (1.0 - f)
        if valid is not None:  # padding positions leave the row's state untouched
            m2, d2 = torch.where(valid, m2, m), torch.where(valid, d2, delta)
            ema = torch.where(valid, ema, self.ema[c])
        self.m[c], self.delta[c], self.ema[c] = m2, d2, ema
        self.seen[c] = seen + (1 if valid is None else valid.long())
        return t

    def state(self) -> dict[str, list]:
        """Per channel: row-0 threshold, tokens seen and EMA of realized sparsity (per row when batched)."""
        def rows(v: torch.Tensor) -> float | list[float]:
            return float(v[0]) if v.numel() == 1 else v.tolist()

        return {"threshold": [self.threshold(c) for c in range(len(self.t0))],
                "tokens_seen": [rows(s) for s in self.seen], "ema_sparsity": [rows(e) for e in self.ema]}
