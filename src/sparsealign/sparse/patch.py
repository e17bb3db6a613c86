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
import re
import types
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sparsealign.errors import UserError
from sparsealign.sparse.artifacts import SparsityArtifacts
from sparsealign.sparse.config import SITES, ControllerConfig, Mode, Prefill
from sparsealign.sparse.controller import ThresholdController
from sparsealign.sparse.fastpath import NeuronMajor
from sparsealign.sparse.metrics import ffn_flops

MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")
INPUT_SITES = SITES[1:]


def find_mlps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every gated MLP, in forward order."""
    found = [(n, m) for n, m in model.named_modules()
             if all(hasattr(m, p) for p in MLP_PARTS) and not isinstance(m, SparseMLP)]
    if not found:
        raise UserError(f"{type(model).__name__}: no MLP with {'/'.join(MLP_PARTS)} found",
                        hint="sparsify supports gated MLPs (Llama, Mistral, Qwen2 families)")
    return found


def find_attention(model: nn.Module, mlp_name: str) -> nn.Module:
    """The attention module beside an MLP (`<layer>.self_attn` with an `o_proj`)."""
    parent_name = mlp_name.rpartition(".")[0]
    attn = getattr(model.get_submodule(parent_name) if parent_name else model, "self_attn", None)
    if attn is None or not hasattr(attn, "o_proj"):
        raise UserError(f"{mlp_name}: no self_attn with o_proj beside this MLP",
                        hint="attention sites need a Llama-style decoder layer; use sites=[intermediate, ffn_input]")
    return attn


def decoder_stack(model: nn.Module, mlp_name: str) -> nn.Module:
    """The module that runs the decoder layers (`model` of `model.layers.0.mlp`), or the model itself."""
    match = re.match(r"^(.*)\.layers\.\d+\.mlp$", mlp_name)
    return model.get_submodule(match.group(1)) if match and match.group(1) else model


class _Runtime:
    """State shared by the wrappers of one application: thresholds, controller, predictors, records."""

    def __init__(self, art: SparsityArtifacts, mode: Mode, prefill: Prefill, fast: bool,
                 controller: ThresholdController | None, thresholds: list[float]):
        self.art, self.mode, self.prefill, self.fast = art, mode, prefill, fast
        self.controller, self.thresholds = controller, thresholds
        self.predictors, self.cutoffs = art.predictors, art.cutoffs
        # static thresholds per site and layer; input sites are active when calibrated above 0
        self.static = {site: thresholds if site == "intermediate" else art.site(site)["thresholds"] for site in SITES}
        self.input_sites = [s for s in INPUT_SITES if s in art.sites]
        self.dense_prefix: int | None = None
        self.valid: torch.Tensor | None = None  # [B, T] real (non-padding) positions of the current call
        self.fresh, self.root, self.last_cache = True, None, lambda: None  # which rows a call continues
        self.clear()

    def clear(self) -> None:
        L = self.art.num_layers
        # per call: a [T] tensor (multi-position calls) or a float (decode, kept cheap: no tensor per token)
        self.realized: list[list[torch.Tensor | float]] = [[] for _ in range(L)]
        self.applied_t: list[list[torch.Tensor | float]] = [[] for _ in range(L)]
        self.is_prefill: list[torch.Tensor | bool] = []
        # per layer: sparse tokens, neurons kept, neurons computed (for FLOPs), predictor tp / true / predicted
        self.counts = [[0.0] * 6 for _ in range(L)]
        # per input site and layer: values at sparse positions, values kept
        self.site_counts = {s: [[0.0, 0.0] for _ in range(L)] for s in self.input_sites}

    def observe_call(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the decoder stack: this call's padding mask, and which rows' controller state it
        continues.  An empty KV cache is a new sequence (every row restarts); the cache of the previous call
        continues its rows; another cache (a copy of a cached prompt prefix) restarts from the state saved when
        that prefix was computed (else from t0).  Rows dropped with `cache.batch_select_indices` are followed."""
        ref = kwargs.get("input_ids", args[0] if args else None)
        ref = ref if ref is not None else kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        self.valid = None
        if ref is not None and isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == ref.shape[0]:
            valid = mask[:, -ref.shape[1]:].bool()
            self.valid = None if bool(valid.all()) else valid
        ctl = self.controller
        if ctl is None:
            return
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        length = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        self.fresh = cache is None or length == 0
        if self.fresh:
            ctl.begin()
        elif self.last_cache() is not cache:
            ctl.restore(self.root[1]) if self.root and self.root[0] == length else ctl.begin()
            if hasattr(cache, "batch_select_indices") and "batch_select_indices" not in vars(cache):
                cache.batch_select_indices = types.MethodType(self._select_rows, cache)

    def after_call(self, _module: nn.Module, _args: tuple, output: Any) -> None:
        """Forward post-hook: remember the cache this call extended (and the state at the end of a fresh one)."""
        cache = getattr(output, "cache", None)
        cache = cache if cache is not None else getattr(output, "past_key_values", None)
        self.last_cache = weakref.ref(cache) if cache is not None else lambda: None
        if self.controller is not None and self.fresh and hasattr(cache, "get_seq_length"):
            self.root = (cache.get_seq_length(), self.controller.snapshot())

    def _select_rows(self, cache: Any, indices: torch.Tensor) -> None:
        type(cache).batch_select_indices(cache, indices)
        if self.controller is not None and self.last_cache() is cache:
            self.controller.keep_rows(indices)

    def valid_for(self, B: int, T: int) -> torch.Tensor | None:
        v = self.valid
        return v if v is not None and tuple(v.shape) == (B, T) else None

    def n_dense(self, T: int) -> int:
        if self.dense_prefix is not None:
            return min(self.dense_prefix, T)
        return T if T > 1 and self.prefill == "dense" else 0

    def thresholds_for(self, site: str, layer: int, abs_v: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """[B, T] thresholds for abs_v [B, T, D]: the static value, or the controller's per-row scan."""
        if self.mode == "dynamic":
            return self.controller.scan(SITES.index(site) * self.art.num_layers + layer, abs_v, valid)
        return torch.full(abs_v.shape[:2], float(self.static[site][layer]))

    def mask_input(self, site: str, layer: int, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v [B, T, D] with |v| <= t zeroed (TEAL), and the kept mask; counts sparse, real positions only."""
        B, T, _ = v.shape
        valid, n_dense = self.valid_for(B, T), self.n_dense(T)
        abs_v = v.abs()
        t = self.thresholds_for(site, layer, abs_v, valid)
        keep = abs_v > t.to(abs_v.device, abs_v.dtype).unsqueeze(-1)
        keep[:, :n_dense] = True
        w = _weights(valid, B, T, n_dense, v.device)
        c = self.site_counts[site][layer]
        c[0], c[1] = c[0] + float(w.sum()) * v.shape[-1], c[1] + float((keep.sum(-1) * w).sum())
        return v * keep.to(v.dtype), keep


def _weights(valid: torch.Tensor | None, B: int, T: int, n_dense: int, device) -> torch.Tensor:
    """[B, T] 1.0 on the positions that count (real, not dense prompt), else 0."""
    w = torch.ones(B, T, device=device) if valid is None else valid.to(device).float()
    w[:, :n_dense] = 0.0
    return w


class SparseMLP(nn.Module):
    """Wraps an HF gated MLP; `inner` is the untouched original module.

    For a fast path: `self._rt.static[site][self.layer]` are the static thresholds, `mask_input(...)` gives the
    masked FFN input and its kept columns, the controller's per-row thresholds come from `thresholds_for`."""

    def __init__(self, inner: nn.Module, layer: int, rt: _Runtime):
        super().__init__()
        self.inner, self.layer = inner, layer
        object.__setattr__(self, "_rt", rt)  # shared, not a submodule
        object.__setattr__(self, "_nm", NeuronMajor(inner, with_gate_up=rt.mode == "predictor",
                                                    precheck=rt.mode != "predictor") if rt.fast else None)

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
        w = _weights(valid, B, T, n_dense, x.device)
        if rt.mode == "predictor":
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
        self._record(mask, t, w, valid, n_dense, computed)
        return out

    # -- batch-1 decode: only active neurons' weights are read -------------------------------------------
    def _decode_fast(self, x: torch.Tensor) -> torch.Tensor:
        rt, li, nm = self._rt, self.layer, self._nm
        inter = rt.art.intermediate_size
        if "ffn_input" in rt.input_sites:  # semantics here; the kept columns are what a column-sparse gate/up reads
            x = rt.mask_input("ffn_input", li, x.view(1, 1, -1))[0].view(-1)
        if rt.mode == "predictor":
            idx = (rt.predictors[li](x.float()) >= rt.cutoffs[li]).nonzero().squeeze(1)
            t = rt.thresholds[li]
            y, kept = nm.predicted_decode(x, idx, t)
            computed = idx.numel()
        else:
            floor = self._threshold_floor()
            a = nm.gate(x, floor)  # exact wherever |a| can exceed floor; the gate pre-check skips the other rows
            abs_a = a.abs()
            t = float(rt.controller.step(li, abs_a.view(1, -1))[0]) if rt.mode == "dynamic" else rt.thresholds[li]
            if t < floor:  # not reachable with a correct floor; keeps the fast path exact regardless
                a = nm.gate(x)
                abs_a = a.abs()
            y, kept = nm.from_gate(x, a, abs_a, t)
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
        if rt.mode != "dynamic":
            return rt.thresholds[li]
        ctl = rt.controller
        if not ctl.enabled[li]:
            return 0.0
        return rt.thresholds[li] if ctl.cfg.frozen else ctl.threshold(li)  # what ctl.step will return

    def _record(self, mask, t, w, valid, n_dense, computed) -> None:
        """Trace (per position, mean over real rows) and counts (real, sparse positions only)."""
        rt, li = self._rt, self.layer
        B, T = mask.shape[:2]
        rows = torch.ones(B, T, device=mask.device) if valid is None else valid.to(mask.device).float()
        denom = rows.sum(0).clamp_min(1.0)
        realized = ((1.0 - mask.float().mean(-1)) * rows).sum(0) / denom
        rt.realized[li].append(realized.detach().float().cpu())
        rt.applied_t[li].append(((t.to(rows.device) * rows).sum(0) / denom).detach().float().cpu())
        c = rt.counts[li]
        c[0] += float(w.sum())
        c[1] += float((mask.sum(-1) * w).sum())
        c[2] += float((computed.sum(-1) * w).sum())
        if li == 0:
            flags = torch.zeros(T, dtype=torch.bool)
            flags[:n_dense] = True
            rt.is_prefill.append(flags)


def _attn_input_hook(rt: _Runtime, layer: int):
    def hook(_module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": _mask3(rt, "attn_input", layer, kwargs["hidden_states"])}
        else:
            args = (_mask3(rt, "attn_input", layer, args[0]), *args[1:])
        return args, kwargs
    return hook


def _attn_output_hook(rt: _Runtime, layer: int):
    def hook(_module, args):
        return (_mask3(rt, "attn_output", layer, args[0]), *args[1:])
    return hook


def _mask3(rt: _Runtime, site: str, layer: int, v: torch.Tensor) -> torch.Tensor:
    T = v.shape[-2] if v.dim() >= 2 else 1
    return rt.mask_input(site, layer, v.reshape(-1, T, v.shape[-1]))[0].reshape(v.shape)


class SparsityHandle:
    """Returned by `apply_sparsity`: remove(), trace(), stats(), reset(); also a context manager."""

    def __init__(self, model: nn.Module, rt: _Runtime, originals: list[tuple[nn.Module, str, nn.Module]],
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
    model: nn.Module, artifacts: SparsityArtifacts, mode: Mode = "static", prefill: Prefill = "dense", *,
    fast: bool = True, controller: ControllerConfig | None = None, thresholds: list[float] | None = None,
) -> SparsityHandle:
    """Patch `model` in place; returns the handle (call `.remove()` to restore).

    mode: static (calibrated thresholds), dynamic (online controller; `controller` overrides the calibrated
    ControllerConfig, frozen=True == static), predictor (predicted active set AND the static threshold).
    fast: use the gather-accumulate kernels for batch-1 single-token calls (apply after moving the model).
    """
    if mode not in ("static", "dynamic", "predictor"):
        raise UserError(f"mode {mode!r}: expected one of static, dynamic, predictor")
    if prefill not in ("dense", "sparse"):
        raise UserError(f"prefill {prefill!r}: expected dense or sparse")
    if mode == "predictor" and artifacts.predictors is None:
        raise UserError("mode predictor: these artifacts have no predictors",
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
    if mode == "dynamic":  # one channel per (site, layer), site-major; sites not calibrated stay dense
        per_site = [artifacts.site(site) for site in SITES]
        ctl = ThresholdController(thr + [t for v in per_site[1:] for t in v["thresholds"]],
                                  [s for v in per_site for s in v["layer_sparsity"]],
                                  [s for v in per_site for s in v["scales"]], controller or artifacts.config.controller)
    rt = _Runtime(artifacts, mode, prefill, fast, ctl, thr)
    device = mlps[0][1].up_proj.weight.device
    if rt.predictors is not None and device.type != "cpu":  # copies: the artifacts themselves stay on the CPU
        rt.predictors = [copy.deepcopy(p).to(device) for p in rt.predictors]
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
    for i, name in enumerate(names):
        if "attn_input" in rt.input_sites:
            hooks.append(find_attention(model, name).register_forward_pre_hook(_attn_input_hook(rt, i),
                                                                               with_kwargs=True))
        if "attn_output" in rt.input_sites:
            hooks.append(find_attention(model, name).o_proj.register_forward_pre_hook(_attn_output_hook(rt, i)))
    handle = SparsityHandle(model, rt, originals, hooks)
    handle.info["decode_kernel"] = wrappers[0]._nm.kernel if fast else None
    return handle
