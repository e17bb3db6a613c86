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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsealign.sparse import kernels


class NeuronMajor:
    """Neuron-major views/copies of one gated MLP's weights, built once."""

    def __init__(self, mlp: torch.nn.Module, with_gate_up: bool = False):
        self.act = mlp.act_fn
        self.w_gate, self.b_gate = mlp.gate_proj.weight, mlp.gate_proj.bias
        self.w_up, self.b_up = mlp.up_proj.weight, mlp.up_proj.bias
        self.b_down = mlp.down_proj.bias
        self.w_down_t = mlp.down_proj.weight.detach().t().contiguous()  # [I, H]
        self._offsets = torch.zeros(1, dtype=torch.long, device=self.w_down_t.device)
        plain = all(b is None for b in (self.b_gate, self.b_up, self.b_down)) and all(
            w.dtype == torch.float32 and w.is_contiguous() and w.device.type == "cpu"
            for w in (self.w_gate, self.w_up, self.w_down_t))
        self.lib = kernels.load() if plain else None  # the C kernel, else torch gather ops
        self._scratch = torch.empty(0)
        # the torch path of predictor mode gathers gate and up rows together: [I, 2H]
        self.w_gu = (torch.cat([self.w_gate, self.w_up], dim=1).detach()
                     if with_gate_up and self.lib is None else None)

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

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """a = act(W_gate x) [I]: dense, it decides the active set."""
        return self.act(F.linear(x, self.w_gate, self.b_gate))

    def from_gate(self, x: torch.Tensor, a: torch.Tensor, abs_a: torch.Tensor, t: float) -> tuple[torch.Tensor, int]:
        """x [H], a [I] -> (y [H], number active): up and down only on {|a| > t}."""
        idx = (abs_a > t).nonzero().squeeze(1)
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
            return self._c_updown(x, a[keep], idx[keep]), int(keep.sum())
        gu = F.embedding(idx, self.w_gu).view(-1, 2, x.shape[-1]) @ x  # [|S|, 2]
        g, u = gu[:, 0], gu[:, 1]
        if self.b_gate is not None:
            g = g + self.b_gate.index_select(0, idx)
            u = u + self.b_up.index_select(0, idx)
        a = self.act(g)
        keep = a.abs() > t
        return self._down(idx, a * u * keep), int(keep.sum())
