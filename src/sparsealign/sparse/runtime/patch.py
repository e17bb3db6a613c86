"""Run any HF model whose MLP has gate_proj / up_proj / down_proj / act_fn (Llama, Mistral, Qwen2, ...) sparse.

`apply_sparsity` swaps each MLP module for a `SparseMLP` that wraps (and keeps) the original, so `model(...)` and
`model.generate(...)` run sparse unchanged; `handle.remove()` puts the very same original objects back.

What is thresholded (CATS-style, our primary choice): the gate activation a = act(gate_proj(x)); neuron i is kept
on a token when |a_i| > t_l and the MLP computes down_proj(a * up_proj(x) * mask).  Why this tensor rather than
TEAL's input hidden state: the mask is per *neuron*, so it removes whole rows of up_proj and columns of down_proj
(2/3 of the FFN weights read per token) and it is the same unit that PowerInfer's predictor and the hot/cold profile
talk about; for ReLU MLPs |a| > 0 is exactly ReLU's own sparsity.  Threshold 0 reproduces the dense MLP bit for bit.

Input sites (TEAL, `SparsityConfig.sites`): `ffn_input` masks the MLP input x (|x_i| > t: gate and up read only
those columns), `attn_input` the attention block's input (q/k/v columns), `attn_output` the input of o_proj.  The
attention sites are forward pre-hooks on `self_attn` and `o_proj`.  Threshold 0 at every site is exactly dense.

Batches: a forward pre-hook on the decoder stack reads each call's attention mask (padding positions are neither
counted nor fed to the dynamic controller) and whether the KV cache is empty (a new sequence: every row of the
controller restarts at the calibrated thresholds), so a padded batch gives each row what it gets at batch 1.

Prefill policy (recorded in `handle.info`): a call with more than one position is a prefill; with prefill="dense"
its positions run dense (the dynamic controller still *observes* them, so the prompt warms it up on the current
domain), with prefill="sparse" every position is masked.  Decode calls (one position) are always sparse.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sparsealign.errors import UserError
from sparsealign.sparse.artifacts import SparsityArtifacts
from sparsealign.sparse.config import SITES, ControllerConfig, Prefill
from sparsealign.sparse.metrics import ffn_flops
from sparsealign.sparse.modes import STATIC, Mode, facts
from sparsealign.sparse.runtime.controller import ThresholdController
from sparsealign.sparse.runtime.fastpath import NeuronMajor
from sparsealign.sparse.runtime.state import (
    Runtime,
    attn_input_hook,
    attn_output_hook,
    decoder_stack,
    find_attention,
    position_weights,
)

MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")


def find_mlps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every gated MLP, in forward order."""
    found = [(n, m) for n, m in model.named_modules()
             if all(hasattr(m, p) for p in MLP_PARTS) and not isinstance(m, SparseMLP)]
    if not found:
        raise UserError(f"{type(model).__name__}: no MLP with {'/'.join(MLP_PARTS)} found",
                        hint="sparsify supports gated MLPs (Llama, Mistral, Qwen2 families)")
    return found


class SparseMLP(nn.Module):
    """Wraps an HF gated MLP; `inner` is the untouched original module.

    For a fast path: `self._rt.static[site][self.layer]` are the static thresholds, `mask_input(...)` gives the
    masked FFN input and its kept columns, the controller's per-row thresholds come from `thresholds_for`."""

    def __init__(self, inner: nn.Module, layer: int, rt: Runtime):
        super().__init__()
        self.inner, self.layer = inner, layer
        object.__setattr__(self, "_rt", rt)  # shared, not a submodule
        object.__setattr__(self, "_nm", NeuronMajor(inner, with_gate_up=rt.facts.predictor,
                                                    precheck=not rt.facts.predictor) if rt.fast else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rt = self._rt
        if self._nm is not None and x.numel() == x.shape[-1] and not rt.dense_prefix:  # batch-1 decode
            return self._decode_fast(x.reshape(-1)).view(x.shape)
        T = x.shape[-2] if x.dim() >= 2 else 1
        return self._reference(x.reshape(-1, T, x.shape[-1]), rt.n_dense(T)).reshape(x.shape)

    # -- exact masked computation: any batch, prefill, and the numerical reference for the fast path ----------
    def _reference(self, x: torch.Tensor, n_dense: int) -> torch.Tensor:
        rt, li, mlp = self._rt, self.layer, self.inner
        B, T, _ = x.shape
        valid = rt.valid_for(B, T)
        if "ffn_input" in rt.input_sites:
            x = rt.mask_input("ffn_input", li, x)[0]
        a = mlp.act_fn(mlp.gate_proj(x))  # [B, T, I]
        abs_a = a.abs()
        t = rt.thresholds_for("intermediate", li, abs_a, valid)
        mask = abs_a > t.to(device=abs_a.device, dtype=abs_a.dtype).unsqueeze(-1)
        computed = mask
        w = position_weights(valid, B, T, n_dense, x.device)
        if rt.facts.predictor:
            pred = rt.predictors[li](x.float()) >= rt.cutoffs[li]
            c = rt.counts[li]
            c[3] += float(((pred & mask).sum(-1) * w).sum())
            c[4] += float((mask.sum(-1) * w).sum())
            c[5] += float((pred.sum(-1) * w).sum())
            mask, computed = mask & pred, pred
        if n_dense:
            mask[:, :n_dense] = True
            t[:, :n_dense] = 0.0
        out = mlp.down_proj(a * mlp.up_proj(x) * mask.to(a.dtype))
        kept = mask.sum(-1, dtype=torch.float32)  # [B, T]: one pass over the mask serves every count below
        self._record(kept, kept if computed is mask else computed.sum(-1, dtype=torch.float32), mask.shape[-1],
                     t, w, valid, n_dense)
        return out

    # -- batch-1 decode: only active neurons' weights are read -------------------------------------------
    def _decode_fast(self, x: torch.Tensor) -> torch.Tensor:
        rt, li, nm = self._rt, self.layer, self._nm
        inter = rt.art.intermediate_size
        if "ffn_input" in rt.input_sites:  # semantics here; the kept columns are what a column-sparse gate/up reads
            x = rt.mask_input("ffn_input", li, x.view(1, 1, -1))[0].view(-1)
        if rt.facts.predictor:
            idx = (rt.predictors[li](x.float()) >= rt.cutoffs[li]).nonzero().squeeze(1)
            t = rt.thresholds[li]
            y, kept = nm.predicted_decode(x, idx, t)
            computed = idx.numel()
        else:
            floor = self._threshold_floor()
            ctl = rt.controller  # None unless the mode has a controller
            if nm.precheck_ready(floor) and (ctl is None or not ctl.cfg.frozen):
                y, kept, t = nm.sparse_ffn(x, floor, rt.thresholds[li], ctl, li)  # pre-check .. down, 2 C calls
            else:
                a = nm.gate(x, floor)  # exact wherever |a| can exceed floor; the pre-check skips the other rows
                t = ctl.step_row(li, a.abs()) if ctl is not None else rt.thresholds[li]
                y, kept = nm.from_gate(x, a, a.abs(), t)
            if t < floor:  # not reachable with a correct floor; keeps the fast path exact regardless
                a = nm.gate(x)
                y, kept = nm.from_gate(x, a, a.abs(), t)
            computed = kept
        rt.realized[li].append(1.0 - kept / inter)
        rt.applied_t[li].append(t)
        c = rt.counts[li]
        c[0], c[1], c[2] = c[0] + 1, c[1] + kept, c[2] + computed
        if li == 0:
            rt.is_prefill.append(False)
        return y

    def _threshold_floor(self) -> float:
        """Hook for the fast path's gate pre-check: a value <= the threshold this decode step will apply."""
        rt, li = self._rt, self.layer
        ctl = rt.controller
        if ctl is None:
            return rt.thresholds[li]
        if not ctl.enabled[li]:
            return 0.0
        if ctl.cfg.frozen:
            return rt.thresholds[li]
        # what ctl.step will return, less its float32 rounding: with the exact float64 value, half the steps found
        # t < floor after rounding and recomputed the dense gate (1B dynamic: +22 MB read per layer and token)
        return ctl.threshold(li) * (1.0 - 1e-6)

    def _record(self, kept, computed, width: int, t, w, valid, n_dense) -> None:
        """Trace (per position, mean over real rows) and counts (real, sparse positions only); `kept` and
        `computed` are [B, T] neuron counts out of `width`."""
        rt, li = self._rt, self.layer
        B, T = kept.shape
        rows = torch.ones(B, T, device=kept.device) if valid is None else valid.to(kept.device).float()
        denom = rows.sum(0).clamp_min(1.0)
        realized = ((1.0 - kept / width) * rows).sum(0) / denom
        rt.realized[li].append(realized.detach().float().cpu())
        rt.applied_t[li].append(((t.to(rows.device) * rows).sum(0) / denom).detach().float().cpu())
        c = rt.counts[li]
        c[0] += float(w.sum())
        c[1] += float((kept * w).sum())
        c[2] += float((computed * w).sum())
        if li == 0:
            flags = torch.zeros(T, dtype=torch.bool)
            flags[:n_dense] = True
            rt.is_prefill.append(flags)


class SparsityHandle:
    """Returned by `apply_sparsity`: remove(), trace(), stats(), reset(); also a context manager."""

    def __init__(self, model: nn.Module, rt: Runtime, originals: list[tuple[nn.Module, str, nn.Module]],
                 hooks: list[Any]):
        self.model, self._rt, self._originals, self._hooks = model, rt, originals, hooks
        self.info: dict[str, Any] = {
            "mode": rt.mode, "prefill": rt.prefill, "fast_decode": rt.fast, "sites": rt.art.sites,
            "target_sparsity": rt.art.config.target_sparsity, "layer_sparsity": rt.art.layer_sparsity,
            "controller": rt.controller.cfg.model_dump() if rt.controller else None,
        }

    @property
    def controller(self) -> ThresholdController | None:
        return self._rt.controller

    def remove(self) -> None:
        """Put the original MLP modules back (the same objects); safe to call twice."""
        for parent, name, original in self._originals:
            setattr(parent, name, original)
        for hook in self._hooks:
            hook.remove()
        self._originals, self._hooks = [], []

    def keep_rows(self, rows: torch.Tensor) -> None:
        """A generation loop that drops finished rows from its batch calls this with the rows it keeps, so the
        dynamic controller's per-row state follows them."""
        if self._rt.controller is not None:
            self._rt.controller.keep_rows(rows)

    def site_thresholds(self) -> dict[str, list[float]]:
        """Per sparsified site, per layer: the static threshold, or (dynamic) row 0's current one."""
        rt, L = self._rt, self._rt.art.num_layers
        ctl = rt.controller
        return {site: [ctl.threshold(SITES.index(site) * L + li) if ctl else float(rt.static[site][li])
                       for li in range(L)] for site in ["intermediate", *rt.input_sites]}

    def __enter__(self) -> SparsityHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def reset(self, *, controller: bool = True) -> None:
        """Clear the records (and, by default, restart the controller from the calibrated thresholds)."""
        self._rt.clear()
        if controller and self._rt.controller is not None:
            self._rt.controller.reset()

    @contextlib.contextmanager
    def dense_prefix(self, n: int) -> Iterator[None]:
        """Within the block, the first n positions of every call are the (dense-policy) prompt: teacher-forced
        evaluation of "prefill n tokens, then decode the rest" in one forward."""
        self._rt.dense_prefix = n if self._rt.prefill == "dense" else 0
        try:
            yield
        finally:
            self._rt.dense_prefix = None

    @contextlib.contextmanager
    def window(self) -> Iterator[dict[str, float]]:
        """Realized sparsity of what runs inside the block alone (one domain of a longer sequence): the yielded dict
        gets `realized_sparsity` (mean over layers of each layer's share of zeroed FFN neurons over the block's
        sparse positions) when the block is left, if it ran any sparse position."""
        before = [(tok, kept) for tok, kept, *_ in self._rt.counts]
        out: dict[str, float] = {}
        try:
            yield out
        finally:
            width = self._rt.art.intermediate_size
            per_layer = [1.0 - (kept - k0) / ((tok - t0) * width)
                         for (t0, k0), (tok, kept, *_) in zip(before, self._rt.counts, strict=True) if tok > t0]
            if per_layer and len(per_layer) == len(before):
                out["realized_sparsity"] = sum(per_layer) / len(per_layer)

    def trace(self) -> dict[str, Any]:
        """Per layer, per processed position (batch-averaged): realized sparsity and applied threshold."""
        rt = self._rt
        def cat(items: list) -> list:
            out: list = []
            for item in items:
                if isinstance(item, torch.Tensor):
                    out.extend(item.tolist())
                else:
                    out.append(item)
            return out

        return {
            "layers": rt.art.layer_names,
            "realized_sparsity": [cat(r) for r in rt.realized],
            "threshold": [cat(t) for t in rt.applied_t],
            "prefill": cat(rt.is_prefill),
        }

    def stats(self) -> dict[str, Any]:
        """Per-layer and overall realized sparsity, FFN FLOPs skipped and predictor recall/precision (sparse
        positions only; recall/precision are measured on the reference path, where every |a| is computed)."""
        rt, art = self._rt, self._rt.art
        rank = art.predictors[0].fc1.out_features if art.predictors else 0
        layers = []
        for li, (tok, kept, comp, tp, n_true, n_pred) in enumerate(rt.counts):
            row: dict[str, Any] = {"layer": art.layer_names[li], "tokens": int(tok)}
            if tok:
                row["realized_sparsity"] = 1.0 - kept / (tok * art.intermediate_size)
                seen, kept_in = rt.site_counts.get("ffn_input", [[0.0, 0.0]] * (li + 1))[li]
                flops = ffn_flops(art.hidden_size, art.intermediate_size, comp / tok, rt.mode, rank,
                                  input_density=kept_in / seen if seen else 1.0)
                row["flops_skipped"] = flops["skipped_fraction"]
            if n_true:
                row["predictor_recall"] = tp / n_true
                row["predictor_precision"] = tp / n_pred if n_pred else 1.0
            layers.append(row)
        overall = {k: sum(r[k] for r in layers) / len(layers) for k in
                   ("realized_sparsity", "flops_skipped", "predictor_recall", "predictor_precision")
                   if all(k in r for r in layers)}
        sites = {}
        for site, per_layer in rt.site_counts.items():
            dims = [1.0 - kept / seen if seen else None for seen, kept in per_layer]
            sites[site] = {"layers": dims}
            if all(d is not None for d in dims):
                sites[site]["realized_sparsity"] = sum(dims) / len(dims)
        return {"mode": rt.mode, "prefill": rt.prefill, "layers": layers, **overall, "sites": sites}


def apply_sparsity(
    model: nn.Module, artifacts: SparsityArtifacts, mode: Mode = STATIC, prefill: Prefill = "dense", *,
    fast: bool = True, controller: ControllerConfig | None = None, thresholds: list[float] | None = None,
) -> SparsityHandle:
    """Patch `model` in place; returns the handle (call `.remove()` to restore).

    mode: one of `sparse.modes.MODES`, run by its facts: static (calibrated thresholds), dynamic (a controller;
    `controller` overrides the calibrated ControllerConfig, frozen=True == static), predictor (predicted active set
    AND the static threshold).
    fast: use the gather-accumulate kernels for batch-1 single-token calls (apply after moving the model).
    """
    mf = facts(mode)  # an unknown mode: the one error message
    if prefill not in ("dense", "sparse"):
        raise UserError(f"prefill {prefill!r}: expected dense or sparse")
    if mf.predictor and artifacts.predictors is None:
        raise UserError(f"mode {mode}: these artifacts have no predictors",
                        hint="calibrate with --set predictor.enabled=true")
    if any(isinstance(m, SparseMLP) for m in model.modules()):
        raise UserError("this model is already sparsified", hint="call .remove() on the previous handle first")
    mlps = find_mlps(model)
    names = [n for n, _ in mlps]
    if names != artifacts.layer_names:
        raise UserError(f"artifacts are for MLPs {artifacts.layer_names[:2]}... but the model has {names[:2]}...",
                        hint="calibrate on this model")
    inter = mlps[0][1].up_proj.out_features
    if inter != artifacts.intermediate_size:
        raise UserError(f"artifacts intermediate_size {artifacts.intermediate_size} != model's {inter}")
    thr = list(thresholds if thresholds is not None else artifacts.thresholds)
    ctl = None
    if mf.controller:  # one channel per (site, layer), site-major; sites not calibrated stay dense
        per_site = [artifacts.site(site) for site in SITES]
        ctl = ThresholdController(thr + [t for v in per_site[1:] for t in v["thresholds"]],
                                  [s for v in per_site for s in v["layer_sparsity"]],
                                  [s for v in per_site for s in v["scales"]], controller or artifacts.config.controller)
    rt = Runtime(artifacts, mode, prefill, fast, ctl, thr)
    device = mlps[0][1].up_proj.weight.device
    if rt.predictors is not None and device.type != "cpu":  # copies: the artifacts themselves stay on the CPU
        rt.predictors = [copy.deepcopy(p).to(device) for p in rt.predictors]
    attns = ([find_attention(model, name) for name in names]  # checked before anything is patched
             if {"attn_input", "attn_output"} & set(rt.input_sites) else [])
    originals, wrappers = [], []
    for i, (name, module) in enumerate(mlps):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        originals.append((parent, attr, module))
        wrappers.append(SparseMLP(module, i, rt))
        setattr(parent, attr, wrappers[-1])
    stack = decoder_stack(model, names[0])
    hooks = [stack.register_forward_pre_hook(rt.observe_call, with_kwargs=True),
             stack.register_forward_hook(rt.after_call)]
    for i, attn in enumerate(attns):
        if "attn_input" in rt.input_sites:
            hooks.append(attn.register_forward_pre_hook(attn_input_hook(rt, i), with_kwargs=True))
        if "attn_output" in rt.input_sites:
            hooks.append(attn.o_proj.register_forward_pre_hook(attn_output_hook(rt, i)))
    handle = SparsityHandle(model, rt, originals, hooks)
    handle.info["decode_kernel"] = wrappers[0]._nm.kernel if fast else None
    return handle
