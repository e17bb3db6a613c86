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
from typing import TypeVar

import numpy as np
import torch

from sparsealign.errors import UserError
from sparsealign.sparse.config import ControllerConfig
from sparsealign.sparse.runtime import kernels

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def token_quantile(abs_v: np.ndarray, sparsity: float, floor: float) -> np.ndarray:
    """The `sparsity`-quantile of each token's own |v| (float32 [..., D], >= 0) over its last dim (k-th order
    statistic, k = round(s D)), floored so that log space is defined (ReLU's exact zeros); float64.  Introselect
    (`np.partition`) finds the same value as torch's top-k ~4x faster at D = 512; a few rows (decode steps) go by
    their positive values only, since ties at 0 (ReLU, rows the gate pre-check skipped) slow introselect ~25x
    (5,632 values, 86% zeros: 345 -> 13 us)."""
    d = abs_v.shape[-1]
    k = min(max(1, round(sparsity * d)), d)
    if abs_v.size <= 16 * d:
        rows = abs_v.reshape(-1, d)
        kth = np.zeros(rows.shape[0], dtype=np.float32)
        for i, row in enumerate(rows):
            pos = row[row > 0]
            j = k - (d - pos.size)  # rank among the positive values (the zeros come first)
            if j > 0:
                kth[i] = np.partition(pos, j - 1)[j - 1]
        kth = kth.reshape(abs_v.shape[:-1])
    else:
        kth = np.partition(abs_v, k - 1, axis=-1)[..., k - 1]
    return np.maximum(kth, np.float32(floor)).astype(np.float64)


def _branch_points(parents: torch.Tensor | None, valid: np.ndarray | None) -> tuple[dict, dict]:
    """From parents [B, T]: {position: [(row, parent)]} where a row branches, and {position: [rows]} whose state
    after that position must be kept for a later branch."""
    branches: dict[int, list[tuple[int, int]]] = {}
    saves: dict[int, list[int]] = {}
    if parents is None:
        return branches, saves
    par = parents.numpy()
    T = par.shape[1]
    jumps = (par != np.arange(-1, T - 1)[None, :]) & (par >= 0)
    if valid is not None:
        jumps &= valid
    for b, j in zip(*np.nonzero(jumps), strict=True):
        branches.setdefault(int(j), []).append((int(b), int(par[b, j])))
        saves.setdefault(int(par[b, j]), []).append(int(b))
    return branches, saves


def _address(a: np.ndarray | None) -> int | None:
    """A numpy array's data pointer for ctypes (None: the kernel's NULL)."""
    return None if a is None else a.ctypes.data


def controller_update(m: Array, delta: Array, log_q: Array, f: Array, density: float, alpha: Array, eta: Array,
                      band: float, bound: float) -> tuple[Array, Array]:
    """One step of the update rule above for a vector of rows (torch tensors or numpy arrays); returns (m', delta')."""
    xp = np if isinstance(m, np.ndarray) else torch
    learn = abs(log_q - (m + delta)) <= band
    delta_next = xp.where(learn, (delta + eta * (f - density)).clip(-bound, bound), delta)
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
        self._scratch = torch.empty(0)
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

    def join(self, front: tuple, front_rows: int, back_rows: int) -> None:
        """`front` (a snapshot of another batch's `front_rows` rows) followed by this state's `back_rows` rows: a
        generation loop that adds newly prefilled rows to a running batch calls this."""
        for store, saved in zip((self.m, self.delta, self.seen, self.ema), front, strict=True):
            for c, (a, b) in enumerate(zip(saved, store, strict=True)):
                store[c] = torch.cat([a.expand(front_rows) if a.numel() == 1 else a,
                                      b.expand(back_rows) if b.numel() == 1 else b]).clone()

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

    def scan(self, c: int, abs_v: torch.Tensor, valid: torch.Tensor | None = None,
             parents: torch.Tensor | None = None) -> torch.Tensor:
        """Thresholds [B, T] for abs_v [B, T, D], updating each row causally from its valid positions only.

        `parents` [B, T] (from a packed row's 4D mask, `runtime.tree_positions`): where a position's parent is not
        the position before it, the row continues from the state it had after the parent, as if the branch were its
        own sequence (a packed pair's rejected response starts from the state at the end of the prompt)."""
        B, T = abs_v.shape[:2]
        if not self.enabled[c]:
            return torch.zeros(B, T)
        if self.cfg.frozen:  # exactly the calibrated static value (no floor), so frozen == mode static
            return torch.full((B, T), float(self.static[c]))
        values = np.ascontiguousarray(abs_v.detach().cpu().float().numpy())
        rows = None if valid is None else valid.cpu().numpy().astype(bool)
        self._rows(c, B)
        lib = kernels.load()
        if lib is not None:
            return self._scan_c(lib, c, values, rows, parents)
        return self._scan_numpy(c, values, rows, parents)

    def _scan_c(self, lib, c: int, values: np.ndarray, rows: np.ndarray | None,
                parents: torch.Tensor | None) -> torch.Tensor:
        """`scan` in one C call (`kernels.controller_scan`, rows over torch's threads): the per-token quantile and
        the numpy loop below made a dynamic cell's teacher-forced scoring 2.3x a static one's on SmolLM2."""
        B, T, D = values.shape
        out = np.empty((B, T), dtype=np.float32)
        valid = None if rows is None else np.ascontiguousarray(rows, dtype=np.uint8)
        par = None if parents is None else np.ascontiguousarray(parents.numpy(), dtype=np.int64)
        hist = None if par is None else np.empty((B, T, 4))
        scratch = np.empty((B, D), dtype=np.float32)
        state = [store[c].contiguous() for store in (self.m, self.delta, self.seen, self.ema)]
        threads = max(1, min(torch.get_num_threads(), kernels.MAX_THREADS, B))
        lib.controller_scan(_address(values), B, T, D, _address(valid), _address(par), _address(hist), _address(out),
                            threads, *self._rule(c, D, [v.data_ptr() for v in state]), _address(scratch))
        self.m[c], self.delta[c], self.seen[c], self.ema[c] = state
        return torch.from_numpy(out)

    def _scan_numpy(self, c: int, values: np.ndarray, rows: np.ndarray | None,
                    parents: torch.Tensor | None) -> torch.Tensor:
        """`scan` without the kernel library: sequential in numpy, whose per-call cost on [B]-vectors is a fraction
        of torch's."""
        B, T = values.shape[:2]
        q = np.log(token_quantile(values, self.targets[c], self.floor[c]))  # [B, T]
        branches, saves = _branch_points(parents, rows)
        saved: dict[tuple[int, int], list[float]] = {}
        state = [v.numpy().copy() for v in (self.m[c], self.delta[c], self.seen[c], self.ema[c])]  # m, delta, seen, ema
        out = np.empty((B, T))
        for j in range(T):
            for b, parent in branches.get(j, ()):
                for arr, value in zip(state, saved[b, parent], strict=True):
                    arr[b] = value
            out[:, j], state = self._advance(c, state, values[:, j], q[:, j], None if rows is None else rows[:, j])
            for b in saves.get(j, ()):
                saved[b, j] = [float(arr[b]) for arr in state]
        self.m[c], self.delta[c], self.seen[c], self.ema[c] = (torch.from_numpy(v) for v in state)
        return torch.from_numpy(out).float()

    def step(self, c: int, abs_v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Thresholds [B] to apply to one position abs_v [B, D], then the update from it."""
        B = abs_v.shape[0]
        if not self.enabled[c]:
            return torch.zeros(B)
        if self.cfg.frozen:
            return torch.full((B,), float(self.static[c]))
        values = abs_v.detach().cpu().float().numpy()
        q = np.log(token_quantile(values, self.targets[c], self.floor[c]))
        rows = None if valid is None else valid.cpu().numpy().astype(bool)
        return torch.from_numpy(self._update(c, values, q, rows)).float()

    def step_row(self, c: int, abs_a: torch.Tensor) -> float:
        """`step` for batch-1 decode (abs_a [D], float32): the same rule in one C call when the kernel library is
        built (`kernels.controller_step`; ~0.4 ms per layer less on a 1B shape), else `step`."""
        lib = kernels.load()
        if lib is None or not self.enabled[c] or self.cfg.frozen or abs_a.dtype != torch.float32:
            return float(self.step(c, abs_a.view(1, -1))[0])
        d = abs_a.numel()
        # float32, as `step` and `scan` return it
        return float(np.float32(lib.controller_step(abs_a.contiguous().data_ptr(), d, d, *self.c_state(c, d))))

    def c_state(self, c: int, d: int) -> tuple:
        """The C kernels' arguments for channel c's batch-1 state and rule (`kernels.controller_step`): quantile
        rank, floor, pointers to m / delta / seen / ema (updated in place), rates, band, bound, EMA, scratch."""
        self._rows(c, 1)
        if self._scratch.numel() < d:
            self._scratch = torch.empty(d)
        state = [store[c].data_ptr() for store in (self.m, self.delta, self.seen, self.ema)]
        return (*self._rule(c, d, state), self._scratch.data_ptr())

    def _rule(self, c: int, d: int, state: list[int]) -> tuple:
        """Channel c's rule as the C kernels take it: quantile rank, floor, the state pointers, rates, band, bound."""
        cfg = self.cfg
        return (min(max(1, round(self.targets[c] * d)), d), self.floor[c], *state,
                1.0 - self.targets[c], cfg.warmup_track, cfg.track, cfg.warmup_step, cfg.step, cfg.warmup_tokens,
                cfg.band, math.log(cfg.max_ratio), cfg.ema)

    def _update(self, c: int, abs_v: np.ndarray, log_q: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Thresholds [B] for one position (abs_v [B, D] float32), then every valid row's update from it."""
        self._rows(c, abs_v.shape[0])
        state = [v.numpy() for v in (self.m[c], self.delta[c], self.seen[c], self.ema[c])]
        t, state = self._advance(c, state, abs_v, log_q, valid)
        self.m[c], self.delta[c], self.seen[c], self.ema[c] = (torch.from_numpy(v) for v in state)
        return t

    def _advance(self, c: int, state: list[np.ndarray], abs_v: np.ndarray, log_q: np.ndarray,
                 valid: np.ndarray | None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One position on numpy state [m, delta, seen, ema] (each [B]): (thresholds applied, the next state)."""
        cfg = self.cfg
        m, delta, seen, ema = state
        t = np.exp(m + delta)
        f = (abs_v > t.astype(np.float32)[:, None]).mean(-1)  # realized density of this token, float64
        warm = seen < cfg.warmup_tokens
        alpha = np.where(warm, cfg.warmup_track, cfg.track)
        eta = np.where(warm, cfg.warmup_step, cfg.step)
        m2, d2 = controller_update(m, delta, log_q, f, 1.0 - self.targets[c], alpha, eta, cfg.band,
                                   math.log(cfg.max_ratio))
        ema2 = cfg.ema * ema + (1 - cfg.ema) * (1.0 - f)
        if valid is not None:  # padding positions leave the row's state untouched
            m2, d2, ema2 = np.where(valid, m2, m), np.where(valid, d2, delta), np.where(valid, ema2, ema)
        return t, [m2, d2, seen + (1 if valid is None else valid.astype(np.int64)), ema2]

    def state(self) -> dict[str, list]:
        """Per channel: row-0 threshold, tokens seen and EMA of realized sparsity (per row when batched)."""
        def rows(v: torch.Tensor) -> float | list[float]:
            return float(v[0]) if v.numel() == 1 else v.tolist()

        return {"threshold": [self.threshold(c) for c in range(len(self.t0))],
                "tokens_seen": [rows(s) for s in self.seen], "ema_sparsity": [rows(e) for e in self.ema]}
