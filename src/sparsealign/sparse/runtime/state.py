"""Runtime state of one `apply_sparsity` application: per-site thresholds, the controller, padding and records.

Shared by the `SparseMLP` wrappers and the attention-site hooks of patch.py.  A forward pre-hook on the decoder
stack (`observe_call`) reads each call's attention mask (padding positions are neither counted nor fed to the
controller) and which rows' controller state the call continues (a new KV cache = a new sequence; a copied prefix
cache = back to the prefix's state; rows dropped from a cache are followed), which makes dynamic thresholds
batch-invariant.
"""

from __future__ import annotations

import re
import types
import weakref
from typing import Any

import torch
from torch import nn

from sparsealign.errors import UserError
from sparsealign.sparse.artifacts import SparsityArtifacts
from sparsealign.sparse.config import SITES, Prefill
from sparsealign.sparse.modes import Mode, facts
from sparsealign.sparse.runtime.controller import ThresholdController

INPUT_SITES = SITES[1:]


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned: the `cache` field from transformers 5.2x on (reading the old name there warns
    even when the field is empty, as in every scoring call), `past_key_values` before."""
    fields = getattr(output, "__dataclass_fields__", {})
    return getattr(output, "cache" if "cache" in fields else "past_key_values", None)


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


class Runtime:
    """State shared by the wrappers of one application: thresholds, controller, predictors, records."""

    def __init__(self, art: SparsityArtifacts, mode: Mode, prefill: Prefill, fast: bool,
                 controller: ThresholdController | None, thresholds: list[float]):
        self.art, self.mode, self.prefill, self.fast = art, mode, prefill, fast
        self.facts = facts(mode)  # what the mode does: the wrappers and hooks branch on these, never on the name
        self.controller, self.thresholds = controller, thresholds
        self.predictors, self.cutoffs = art.predictors, art.cutoffs
        # static thresholds per site and layer; input sites are active when calibrated above 0
        self.static = {site: thresholds if site == "intermediate" else art.site(site)["thresholds"] for site in SITES}
        self.input_sites = [s for s in INPUT_SITES if s in art.sites]
        self.dense_prefix: int | None = None
        self.valid: torch.Tensor | None = None  # [B, T] real (non-padding) positions of the current call
        self.parents: torch.Tensor | None = None  # [B, T] where a custom 4D mask branches (`tree_positions`)
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
        self.valid, self.parents = None, None
        if ref is not None and isinstance(mask, torch.Tensor) and mask.shape[0] == ref.shape[0]:
            if mask.dim() == 2:
                valid = mask[:, -ref.shape[1]:].bool()
            elif mask.dim() == 4 and mask.dtype == torch.bool and mask.shape[-1] == mask.shape[-2] == ref.shape[1]:
                valid, self.parents = tree_positions(mask)
            else:
                valid = torch.ones(ref.shape[:2], dtype=torch.bool)
            self.valid = None if bool(valid.all()) else valid
        ctl = self.controller
        if ctl is None:
            return
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        length = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        self.fresh = cache is None or length == 0
        previous = self.last_cache()
        if previous is not None and previous is not cache:  # kept, should its rows be joined by this call's
            vars(previous)["_controller_rows"] = ctl.snapshot()
        if self.fresh:
            ctl.begin()
        elif previous is not cache:
            ctl.restore(self.root[1]) if self.root and self.root[0] == length else ctl.begin()
        if hasattr(cache, "batch_select_indices") and "batch_select_indices" not in vars(cache):
            cache.batch_select_indices = types.MethodType(self._select_rows, cache)
            cache.batch_join = types.MethodType(self._join_rows, cache)

    def after_call(self, _module: nn.Module, _args: tuple, output: Any) -> None:
        """Forward post-hook: remember the cache this call extended (and the state at the end of a fresh one)."""
        cache = output_cache(output)
        self.last_cache = weakref.ref(cache) if cache is not None else lambda: None
        if self.controller is not None and self.fresh and hasattr(cache, "get_seq_length"):
            self.root = (cache.get_seq_length(), self.controller.snapshot())

    def _select_rows(self, cache: Any, indices: torch.Tensor) -> None:
        type(cache).batch_select_indices(cache, indices)
        if self.controller is not None and self.last_cache() is cache:
            self.controller.keep_rows(indices)

    def _join_rows(self, cache: Any, other: Any, rows: int, other_rows: int) -> None:
        """`other`'s rows (the cache the last call extended) are appended to `cache`'s (`rows` of them, whose
        state was kept when `other`'s call began): the controller continues both, and `cache` is the one followed."""
        saved = vars(cache).pop("_controller_rows", None)
        if self.controller is None or saved is None or self.last_cache() is not other:
            raise RuntimeError("batch_join: the joined rows must come from the call right after this cache's")
        self.controller.join(saved, rows, other_rows)
        self.last_cache = weakref.ref(cache)

    def valid_for(self, B: int, T: int) -> torch.Tensor | None:
        v = self.valid
        return v if v is not None and tuple(v.shape) == (B, T) else None

    def n_dense(self, T: int) -> int:
        if self.dense_prefix is not None:
            return min(self.dense_prefix, T)
        return T if T > 1 and self.prefill == "dense" else 0

    def thresholds_for(self, site: str, layer: int, abs_v: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """[B, T] thresholds for abs_v [B, T, D]: the static value, or the controller's per-row scan."""
        if self.facts.controller:
            parents = self.parents
            parents = parents if parents is not None and tuple(parents.shape) == tuple(abs_v.shape[:2]) else None
            return self.controller.scan(SITES.index(site) * self.art.num_layers + layer, abs_v, valid, parents)
        return torch.full(abs_v.shape[:2], float(self.static[site][layer]))

    def mask_input(self, site: str, layer: int, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v [B, T, D] with |v| <= t zeroed (TEAL), and the kept mask; counts sparse, real positions only."""
        B, T, _ = v.shape
        valid, n_dense = self.valid_for(B, T), self.n_dense(T)
        abs_v = v.abs()
        t = self.thresholds_for(site, layer, abs_v, valid)
        keep = abs_v > t.to(abs_v.device, abs_v.dtype).unsqueeze(-1)
        keep[:, :n_dense] = True
        w = position_weights(valid, B, T, n_dense, v.device)
        c = self.site_counts[site][layer]
        c[0], c[1] = c[0] + float(w.sum()) * v.shape[-1], c[1] + float((keep.sum(-1) * w).sum())
        return v * keep.to(v.dtype), keep


def tree_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(valid [B, T], parents [B, T] or None) of a custom boolean 4D mask [B, 1, T, T] (True = attend; see
    `align.packed`): a position is real iff it attends to itself; its parent is the latest earlier position it
    attends to (-1 if none).  `parents` is None when every real position's parent is the one before it."""
    m = mask[:, 0].bool()
    T = m.shape[-1]
    valid = m.diagonal(dim1=-2, dim2=-1)
    earlier = m & torch.ones(T, T, dtype=torch.bool, device=m.device).tril(-1)
    parents = (earlier.long() * torch.arange(1, T + 1, device=m.device)).amax(-1) - 1
    linear = (parents == torch.arange(-1, T - 1, device=m.device)) | ~valid
    return valid.cpu(), None if bool(linear.all()) else parents.cpu()


def position_weights(valid: torch.Tensor | None, B: int, T: int, n_dense: int, device) -> torch.Tensor:
    """[B, T] 1.0 on the positions that count (real, not dense prompt), else 0."""
    w = torch.ones(B, T, device=device) if valid is None else valid.to(device).float()
    w[:, :n_dense] = 0.0
    return w


def attn_input_hook(rt: Runtime, layer: int):
    def hook(_module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": mask_3d(rt, "attn_input", layer, kwargs["hidden_states"])}
        else:
            args = (mask_3d(rt, "attn_input", layer, args[0]), *args[1:])
        return args, kwargs
    return hook


def attn_output_hook(rt: Runtime, layer: int):
    def hook(_module, args):
        return (mask_3d(rt, "attn_output", layer, args[0]), *args[1:])
    return hook


def mask_3d(rt: Runtime, site: str, layer: int, v: torch.Tensor) -> torch.Tensor:
    T = v.shape[-2] if v.dim() >= 2 else 1
    return rt.mask_input(site, layer, v.reshape(-1, T, v.shape[-1]))[0].reshape(v.shape)
