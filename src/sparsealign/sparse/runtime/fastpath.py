"""Batch-1 decode kernels that touch only the weights of active neurons (no weight copies per token).

Layout: nn.Linear stores gate_proj/up_proj weights as [I, H] — already neuron-major (row i = neuron i).  The down
projection is [H, I] (column i = neuron i), so we keep one neuron-major copy W_down^T [I, H], made once at patch
time.  Per token:

    static / dynamic (CATS):  a = act(W_gate x)               dense, it decides the active set S
                              u_S = W_up[S] x                  only |S| rows are read
                              y = sum_{i in S} a_i u_i W_down^T[i]   one `embedding_bag` (gather-accumulate)
    predictor (PowerInfer):   S = {i : predictor(x)_i >= c}
                              [g_S, u_S] = W_gu[S] x           gate and up rows for S only, one gather
                              keep |act(g_S)| > t inside S, then the same embedding_bag for the down projection

`embedding_bag(mode='sum', per_sample_weights=h)` reads each selected row once and accumulates into [H] without
materialising a [|S|, H] copy; the up projection gathers the |S| rows (`F.embedding`, measured faster than
index_select on CPU) and runs one mv.  The result equals the masked dense reference up to float summation order.

Gate pre-check (static / dynamic, `precheck=True`, ReLU or SiLU, C kernel): the dense gate matvec is replaced by an
int8 copy of W_gate (1/4 of the bytes) with a rigorous per-row error bound (Cauchy-Schwarz with the stored norm of
each row's quantisation error); only rows whose bound can exceed the threshold floor are then computed exactly in
fp32.  Exact: a skipped row provably has |a| <= floor <= t, so the active set and every kept value are the dense
path's (up to float summation order).  `sparse_ffn` runs pre-check, candidate gate rows, threshold (or the
dynamic controller's step) and up/down as two C calls per token.  `bytes_read` counts the weight bytes each call touched (roofline accounting).
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import torch
import torch.nn.functional as F

from sparsealign.sparse.runtime import kernels
from sparsealign.sparse.runtime.hugepages import huge_copy


class NeuronMajor:
    """Neuron-major views/copies of one gated MLP's weights, built once."""

    def __init__(self, mlp: torch.nn.Module, with_gate_up: bool = False, precheck: bool = False):
        self.act = mlp.act_fn
        self.w_gate, self.b_gate = mlp.gate_proj.weight, mlp.gate_proj.bias
        self.w_up, self.b_up = mlp.up_proj.weight, mlp.up_proj.bias
        self.b_down = mlp.down_proj.bias
        self.w_down_t = huge_copy(mlp.down_proj.weight.detach().t())  # [I, H], in 2 MB pages (sparse.runtime.hugepages)
        self._offsets = torch.zeros(1, dtype=torch.long, device=self.w_down_t.device)
        plain = all(b is None for b in (self.b_gate, self.b_up, self.b_down)) and all(
            w.dtype == torch.float32 and w.is_contiguous() and w.device.type == "cpu"
            for w in (self.w_gate, self.w_up, self.w_down_t))
        self.lib = kernels.load() if plain else None  # the C kernel, else torch gather ops
        self._scratch = torch.empty(0)
        # the torch path of predictor mode gathers gate and up rows together: [I, 2H]
        self.w_gu = (torch.cat([self.w_gate, self.w_up], dim=1).detach()
                     if with_gate_up and self.lib is None else None)
        self.act_kind = {torch.nn.ReLU: 0, torch.nn.SiLU: 1}.get(type(self.act))
        self.q8 = quantize_rows(self.w_gate) if precheck and self.lib is not None and self.act_kind is not None else None
        self.bytes_read, self._cand_frac, self._calls = 0.0, 0.0, 0
        self._row_bytes = 4 * self.w_gate.shape[1]

    @property
    def kernel(self) -> str:
        return "c" if self.lib is not None else "torch"

    def _c_updown(self, x: torch.Tensor, c: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        need = kernels.MAX_THREADS * x.numel()
        if self._scratch.numel() < need:
            self._scratch = torch.empty(need)
        return kernels.updown(self.lib, x, c.contiguous(), idx, self.w_up, self.w_down_t, self._scratch)

    def _down(self, idx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        y = F.embedding_bag(idx, self.w_down_t, self._offsets, mode="sum", per_sample_weights=h)[0]
        return y if self.b_down is None else y + self.b_down

    def gate(self, x: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
        """a = act(W_gate x) [I], exact wherever |a| can exceed `floor` (a value <= the threshold that will be
        applied); with the pre-check, rows proven to have |a| <= floor are left at 0 without reading them."""
        inter = self.w_gate.shape[0]
        self._calls += 1
        # the pre-check pays 1/4 of the gate plus the candidates' rows: when most rows stay candidates (a low
        # threshold, SiLU near 0) it costs more than the dense gate, so it is skipped, re-tried every 64 calls
        if self.q8 is None or floor <= 0.0 or (self._cand_frac > 0.6 and self._calls % 64):
            self.bytes_read += inter * self._row_bytes
            return self.act(F.linear(x, self.w_gate, self.b_gate))
        x = x.contiguous()
        idx = kernels.precheck(self.lib, self.q8, x, floor, self.act_kind)
        self._cand_frac = idx.numel() / inter
        self.bytes_read += self.q8[0].numel() + 12 * inter + idx.numel() * self._row_bytes
        a = torch.zeros(inter)
        a[idx] = self.act(kernels.rowdots(self.lib, self.w_gate, idx, x))
        return a

    def precheck_ready(self, floor: float) -> bool:
        """Whether `gate` would take the pre-check for this floor (the same policy, see there)."""
        return self.q8 is not None and floor > 0.0 and not (self._cand_frac > 0.6 and self._calls % 64)

    def sparse_ffn(self, x: torch.Tensor, floor: float, t: float, controller=None,
                   channel: int = 0) -> tuple[torch.Tensor, int, float]:
        """The whole static / dynamic FFN of one token in two C calls (needs `precheck_ready(floor)`): pre-check,
        exact gate rows of the candidates, the threshold (`t`, or `controller`'s step for `channel` on the
        candidates' |a|, the others being provably <= floor), up and down over the kept rows.  The same arithmetic
        as `gate` + `from_gate`, without their per-token tensors.  Returns (y [H], number kept, threshold)."""
        inter = self.w_gate.shape[0]
        self._calls += 1
        x = x.contiguous()
        cand = kernels.precheck(self.lib, self.q8, x, floor, self.act_kind)
        nc = cand.numel()
        self._cand_frac = nc / inter
        y, t_out = torch.empty(x.numel()), ctypes.c_float(0.0)
        bufs = [torch.empty(nc) for _ in range(3)]  # a, kept values, up dots
        kidx = torch.empty(nc, dtype=torch.int64)
        state = controller.c_state(channel, inter) if controller is not None else kernels.NO_CONTROLLER
        kept = self.lib.sparse_ffn(x.data_ptr(), cand.data_ptr(), nc, inter, self.w_gate.data_ptr(), self.act_kind,
                                   t, self.w_up.data_ptr(), self.w_down_t.data_ptr(), x.numel(), y.data_ptr(),
                                   bufs[0].data_ptr(), kidx.data_ptr(), bufs[1].data_ptr(), bufs[2].data_ptr(),
                                   ctypes.byref(t_out), *state)
        self.bytes_read += self.q8[0].numel() + 12 * inter + (nc + 2 * kept) * self._row_bytes
        return y, int(kept), float(t_out.value)

    def from_gate(self, x: torch.Tensor, a: torch.Tensor, abs_a: torch.Tensor, t: float) -> tuple[torch.Tensor, int]:
        """x [H], a [I] -> (y [H], number active): up and down only on {|a| > t}."""
        idx = (abs_a > t).nonzero().squeeze(1)
        self.bytes_read += 2 * idx.numel() * self._row_bytes
        if self.lib is not None:
            return self._c_updown(x.contiguous(), a.index_select(0, idx), idx), int(idx.numel())
        u = torch.mv(F.embedding(idx, self.w_up), x)
        if self.b_up is not None:
            u = u + self.b_up.index_select(0, idx)
        return self._down(idx, a.index_select(0, idx) * u), int(idx.numel())

    def predicted_decode(self, x: torch.Tensor, idx: torch.Tensor, t: float) -> tuple[torch.Tensor, int]:
        """x [H], predicted active set idx -> (y [H], number kept). Only rows in idx are read."""
        if self.lib is not None:
            x = x.contiguous()
            a = self.act(kernels.rowdots(self.lib, self.w_gate, idx, x))
            keep = a.abs() > t
            self.bytes_read += (idx.numel() + 2 * int(keep.sum())) * self._row_bytes
            return self._c_updown(x, a[keep], idx[keep]), int(keep.sum())
        gu = F.embedding(idx, self.w_gu).view(-1, 2, x.shape[-1]) @ x  # [|S|, 2]
        g, u = gu[:, 0], gu[:, 1]
        if self.b_gate is not None:
            g = g + self.b_gate.index_select(0, idx)
            u = u + self.b_up.index_select(0, idx)
        a = self.act(g)
        keep = a.abs() > t
        self.bytes_read += 3 * idx.numel() * self._row_bytes  # the torch path reads gate, up and down rows of idx
        return self._down(idx, a * u * keep), int(keep.sum())


class Int8Rows(NamedTuple):
    """The int8 gate copy of the pre-check: `q` as stored (4 rows at a time with their 32-byte chunks interleaved
    when the shape allows, so a block of 4 rows is one sequential stream for the C kernel; else row-major)."""

    q: torch.Tensor
    scale: torch.Tensor  # [R]
    err: torch.Tensor  # [R] ||w_r - scale_r q_r||_2
    qnorm: torch.Tensor  # [R] ||scale_r q_r||_2
    interleaved: bool

    def rows(self) -> torch.Tensor:
        """q in row-major order [R, C]."""
        if not self.interleaved:
            return self.q
        r, c = self.q.shape
        return self.q.view(r // 4, c // 32, 4, 32).transpose(1, 2).reshape(r, c)


def quantize_rows(w: torch.Tensor) -> Int8Rows:
    """Symmetric per-row int8 copy of w [R, C] with the two norms that bound the pre-check's error
    (`kernels.precheck`), in 2 MB pages."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-30)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    w_hat = q.float() * scale[:, None]
    err = torch.linalg.vector_norm(w - w_hat, dim=1)
    r, c = q.shape
    interleaved = r % 4 == 0 and c % 32 == 0
    if interleaved:
        q = q.view(r // 4, 4, c // 32, 32).transpose(1, 2).reshape(r, c)
    return Int8Rows(huge_copy(q), scale.contiguous(), err.contiguous(),
                    torch.linalg.vector_norm(w_hat, dim=1).contiguous(), interleaved)
