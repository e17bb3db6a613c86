"""TEAL-style input sparsity for SwiGLU (and any Llama-family) decoders: zero the small entries of each projection's
input, and read only the weight columns of the entries that survive.

Sites (per layer; t = the calibrated `sparsity`-quantile of |input| at that site, as TEAL does):
    qkv      input of q/k/v_proj  (the attention's normed hidden state)
    o        input of o_proj      (the attention output)
    gate_up  input of gate/up_proj (the FFN's normed hidden state)
    down     input of down_proj   (the intermediate SiLU(gate) * up: "intermediate sparsity")
A projection y = W x with x masked to J = {j : |x_j| > t} is y = sum_{j in J} x_j W[:, j]: with the weight stored
input-major (W^T, one contiguous row per input), the kernel (`kernels.colsparse`) reads |J| rows in place and
nothing else.  The transposed copies are made once (`TealOps`); the dense side keeps the model's own layout.

`teal_masked` is the reference: forward pre-hooks that apply the same masks to the HF modules (any batch, any
length), used to measure KL(dense || sparse) teacher-forced on held-out text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsealign.sparse.metrics import empirical_threshold
from sparsealign.sparse.runtime import kernels
from sparsealign.sparse.runtime.decode import DenseOps
from sparsealign.sparse.runtime.hugepages import huge_copy

SITES = ("qkv", "o", "gate_up", "down")


def site_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Per site, the module whose input is masked, per layer (q_proj stands for q/k/v, gate_proj for gate/up)."""
    layers = model.model.layers
    return {"qkv": [la.self_attn.q_proj for la in layers], "o": [la.self_attn.o_proj for la in layers],
            "gate_up": [la.mlp.gate_proj for la in layers], "down": [la.mlp.down_proj for la in layers]}


@torch.no_grad()
def calibrate_teal(model: nn.Module, tokenizer, texts: Sequence[str], sparsity: float, *, max_length: int = 256,
                   max_tokens: int = 4096) -> dict[str, list[float]]:
    """Per site and layer, the `sparsity`-quantile of |input| over the calibration tokens (dense forward)."""
    seen: dict[str, list[list[torch.Tensor]]] = {s: [[] for _ in model.model.layers] for s in SITES}
    hooks = []
    for site, mods in site_modules(model).items():
        for li, mod in enumerate(mods):
            hooks.append(mod.register_forward_pre_hook(
                lambda _m, args, site=site, li=li: seen[site][li].append(args[0].reshape(-1, args[0].shape[-1]).abs())))
    n = 0
    try:
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            model(input_ids=ids)
            n += ids.shape[1]
            if n >= max_tokens:
                break
    finally:
        for h in hooks:
            h.remove()
    return {site: [empirical_threshold(torch.cat(xs), sparsity) for xs in per_layer]
            for site, per_layer in seen.items()}


@contextlib.contextmanager
def teal_masked(model: nn.Module, thresholds: dict[str, list[float]]) -> Iterator[None]:
    """Within the block, every site's input is masked to |x| > t (the reference of what `TealOps` computes)."""
    def mask(t: float):
        return lambda _m, args: (args[0] * (args[0].abs() > t),) + tuple(args[1:])

    mods = site_modules(model)
    extra = {"qkv": [(la.self_attn.k_proj, la.self_attn.v_proj) for la in model.model.layers],
             "gate_up": [(la.mlp.up_proj,) for la in model.model.layers]}
    hooks = []
    for site, ts in thresholds.items():
        for li, t in enumerate(ts):
            for mod in (mods[site][li], *extra.get(site, [()] * len(ts))[li]):
                hooks.append(mod.register_forward_pre_hook(mask(t)))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


class _ColSparse:
    """One input-major weight (plus bias): y = W x_J, reading only the rows of W^T in J."""

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]):
        self.wt = huge_copy(torch.cat([w.detach().float() for w in weights], dim=0).t())  # [In, sum Out]
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach().float() if b is not None else torch.zeros(w.shape[0]) for w, b in zip(weights, biases, strict=True)])
        self.row_bytes = 4 * self.wt.shape[1]
        self._offsets = torch.zeros(1, dtype=torch.long)

    def __call__(self, x: torch.Tensor, t: float, lib) -> tuple[torch.Tensor, int]:
        if lib is not None:
            y, k = kernels.colsparse_t(lib, self.wt, x.contiguous(), t)
        else:  # gather-accumulate without a [|J|, Out] copy
            idx = (x.abs() > t).nonzero().squeeze(1)
            y = F.embedding_bag(idx, self.wt, self._offsets, mode="sum", per_sample_weights=x.index_select(0, idx))[0]
            k = int(idx.numel())
        return (y if self.bias is None else y + self.bias), k


class TealOps(DenseOps):
    """Decode-time projections of `sparse.runtime.decode.Decoder` with TEAL input sparsity at the given sites (others
    dense); `bytes_read` counts the weight rows actually read.  `active[site]` accumulates kept inputs."""

    def __init__(self, model: nn.Module, thresholds: dict[str, list[float]]):
        super().__init__(model)
        self.t = thresholds
        self.lib = kernels.load()
        self.qkv_w, self.o_w, self.gu_w, self.down_w = [], [], [], []
        for a, m in zip(self.attn, self.mlps, strict=True):
            if "qkv" in thresholds:
                self.qkv_w.append(_ColSparse([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight],
                                             [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
            if "o" in thresholds:
                self.o_w.append(_ColSparse([a.o_proj.weight], [a.o_proj.bias]))
            if "gate_up" in thresholds:
                self.gu_w.append(_ColSparse([m.gate_proj.weight, m.up_proj.weight], [m.gate_proj.bias, m.up_proj.bias]))
            if "down" in thresholds:
                self.down_w.append(_ColSparse([m.down_proj.weight], [m.down_proj.bias]))
        self.active = dict.fromkeys(thresholds, 0)
        self._splits = (self.attn[0].q_proj.out_features, self.attn[0].k_proj.out_features)

    def _run(self, site: str, op: _ColSparse, x: torch.Tensor, li: int) -> torch.Tensor:
        y, k = op(x, self.t[site][li], self.lib)
        self.active[site] += k
        self.bytes_read += k * op.row_bytes
        return y

    def qkv(self, li: int, h: torch.Tensor):
        if not self.qkv_w:
            return super().qkv(li, h)
        y = self._run("qkv", self.qkv_w[li], h, li)
        nq, nk = self._splits
        return y[:nq], y[nq:nq + nk], y[nq + nk:]

    def o(self, li: int, x: torch.Tensor) -> torch.Tensor:
        return self._run("o", self.o_w[li], x, li) if self.o_w else super().o(li, x)

    def mlp(self, li: int, h: torch.Tensor) -> torch.Tensor:
        m = self.mlps[li]
        before = self.bytes_read
        if self.gu_w:
            gu = self._run("gate_up", self.gu_w[li], h, li)
            g, u = gu.chunk(2)
        else:
            g, u = F.linear(h, m.gate_proj.weight, m.gate_proj.bias), F.linear(h, m.up_proj.weight, m.up_proj.bias)
            self.bytes_read += 8 * m.gate_proj.weight.numel()
        inter = m.act_fn(g) * u
        if self.down_w:
            y = self._run("down", self.down_w[li], inter, li)
        else:
            y = F.linear(inter, m.down_proj.weight, m.down_proj.bias)
            self.bytes_read += 4 * m.down_proj.weight.numel()
        self.mlp_bytes += self.bytes_read - before
        return y
