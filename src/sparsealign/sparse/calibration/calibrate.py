"""Calibration: record FFN activations on text, then static thresholds, greedy allocation, predictors, profile.

    calibrate(model, tokenizer, texts, SparsityConfig) -> SparsityArtifacts

Thresholds are the empirical per-layer quantile of |act(gate x)| over the recorded tokens (see metrics.py); for the
input sites of `SparsityConfig.sites` (TEAL) the same quantile of |x| (FFN input), of the attention block's input,
or of o_proj's input.
Greedy allocation (after TEAL's block-wise greedy search, here per MLP layer and scored on the model output): start
every layer at sparsity 0; repeatedly try raising each layer by `greedy_step` and keep the single raise that adds
the least KL(dense || sparse) on a calibration batch, until the mean over layers reaches the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsealign.errors import UserError
from sparsealign.sparse.artifacts import SparsityArtifacts
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.metrics import empirical_threshold, kl_per_token
from sparsealign.sparse.modes import STATIC
from sparsealign.sparse.runtime.patch import apply_sparsity, find_mlps
from sparsealign.sparse.runtime.predictor import train_predictor
from sparsealign.sparse.runtime.state import find_attention


@dataclass
class Recording:
    """Per layer: MLP inputs x [N, H], gate activations a [N, I], and running sums of |a * up| over ALL tokens;
    `inputs[site]` per layer [N, D] for the attention sites that were asked for (ffn_input is `x`)."""

    layer_names: list[str]
    x: list[torch.Tensor]
    a: list[torch.Tensor]
    abs_h_sum: list[torch.Tensor]
    n_all: int
    token_ids: list[torch.Tensor]  # per text, for greedy search
    inputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def values(self, site: str) -> list[torch.Tensor]:
        """Per layer, the recorded tensor a site thresholds (its absolute value is what the quantile is of)."""
        if site == "intermediate":
            return self.a
        if site == "ffn_input":
            return self.x
        if site not in self.inputs:
            raise UserError(f"site {site}: not recorded", hint=f"record_activations(..., sites=[{site!r}])")
        return self.inputs[site]


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[torch.Tensor]:
    """One [1, T] id tensor per non-empty text (no padding: batch-1 forwards are exact and match decode)."""
    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
        if ids.shape[1] >= 2:
            out.append(ids)
    if not out:
        raise UserError("calibration texts are empty after tokenization", hint="pass non-empty texts")
    return out


@torch.no_grad()
def record_activations(model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int = 256,
                       max_tokens: int = 8192, sites: Sequence[str] = ()) -> Recording:
    """Run the (unpatched) model densely over texts, keeping the first `max_tokens` tokens' x and a per layer
    (and the inputs of the attention `sites` asked for: attn_input, attn_output)."""
    mlps = find_mlps(model)
    L = len(mlps)
    attn_sites = [s for s in sites if s in ("attn_input", "attn_output")]
    ins: dict[str, list[list[torch.Tensor]]] = {s: [[] for _ in range(L)] for s in attn_sites}
    xs: list[list[torch.Tensor]] = [[] for _ in range(L)]
    as_: list[list[torch.Tensor]] = [[] for _ in range(L)]
    h_sum = [torch.zeros(m.up_proj.out_features, dtype=torch.float64) for _, m in mlps]
    kept = [0]

    def hook(i: int):
        def fn(mod, args, _out):
            x = args[0].reshape(-1, args[0].shape[-1])
            a = mod.act_fn(mod.gate_proj(x))
            h_sum[i] += (a * mod.up_proj(x)).abs().sum(0).double()
            room = max_tokens - kept[0]
            if room > 0:
                xs[i].append(x[:room].float().cpu())
                as_[i].append(a[:room].float().cpu())
        return fn

    def keep(site: str, i: int):
        def fn(_mod, args, kwargs):
            v = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            room = max_tokens - kept[0]
            if room > 0:
                ins[site][i].append(v.reshape(-1, v.shape[-1])[:room].float().cpu())
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(mlps)]
    for i, (name, _) in enumerate(mlps):
        if "attn_input" in ins:
            handles.append(find_attention(model, name).register_forward_pre_hook(keep("attn_input", i),
                                                                                 with_kwargs=True))
        if "attn_output" in ins:
            handles.append(find_attention(model, name).o_proj.register_forward_pre_hook(keep("attn_output", i),
                                                                                        with_kwargs=True))
    ids_list = tokenize(tokenizer, texts, max_length)
    n_all = 0
    try:
        for ids in ids_list:
            model(input_ids=ids.to(model.device))
            kept[0] = min(max_tokens, kept[0] + ids.shape[1])
            n_all += ids.shape[1]
    finally:
        for h in handles:
            h.remove()
    return Recording([n for n, _ in mlps], [torch.cat(v) for v in xs], [torch.cat(v) for v in as_], h_sum,
                     n_all, ids_list, {s: [torch.cat(v) for v in per] for s, per in ins.items()})


def site_thresholds(values: list[torch.Tensor], target: float) -> dict[str, list[float]]:
    """Per layer: the empirical target-quantile of |v| (TEAL's input thresholds), the target, median |v|."""
    abs_v = [v.abs() for v in values]
    return {"thresholds": [empirical_threshold(v, target) for v in abs_v], "layer_sparsity": [target] * len(abs_v),
            "scales": [float(v.median()) for v in abs_v]}


@torch.no_grad()
def greedy_allocation(model: nn.Module, art: SparsityArtifacts, rec: Recording, target: float, step: float,
                      n_texts: int = 4) -> list[float]:
    """TEAL-style greedy per-layer sparsities with mean == target (least added output KL per step)."""
    batch = rec.token_ids[:n_texts]
    dense = [model(input_ids=ids).logits for ids in batch]
    abs_a = [a.abs() for a in rec.a]
    L = art.num_layers
    levels = [0.0] * L

    def error(lv: list[float]) -> float:
        thr = [empirical_threshold(abs_a[i], lv[i]) for i in range(L)]
        with apply_sparsity(model, art, STATIC, "sparse", fast=False, thresholds=thr):
            return sum(float(kl_per_token(d, model(input_ids=ids).logits).mean()) for d, ids in zip(dense, batch, strict=True))

    while sum(levels) / L < target - 1e-9:
        remaining = target * L - sum(levels)
        inc = min(step, remaining)
        best = min((error(levels[:i] + [levels[i] + inc] + levels[i + 1:]), i) for i in range(L)
                   if levels[i] + inc < 0.999)
        levels[best[1]] += inc
    return levels


def calibrate(model: nn.Module, tokenizer, texts: Sequence[str], cfg: SparsityConfig | None = None,
              *, recording: Recording | None = None) -> SparsityArtifacts:
    """Static thresholds (+ optional greedy allocation and predictors) for `model` from calibration `texts`."""

    cfg = cfg or SparsityConfig()
    model.eval()
    rec = recording or record_activations(model, tokenizer, texts, max_length=cfg.max_length,
                                          max_tokens=cfg.max_tokens, sites=cfg.sites)
    L = len(rec.layer_names)
    abs_a = [a.abs() for a in rec.a]
    layer_sparsity = [cfg.site_target("intermediate")] * L
    art = SparsityArtifacts(
        layer_names=rec.layer_names, hidden_size=rec.x[0].shape[1], intermediate_size=rec.a[0].shape[1],
        thresholds=[empirical_threshold(v, layer_sparsity[0]) for v in abs_a], layer_sparsity=layer_sparsity,
        scales=[float(v.median()) for v in abs_a], config=cfg,
        model_info={"model_type": getattr(model.config, "model_type", None),
                    "name_or_path": getattr(model.config, "_name_or_path", None),
                    "hidden_act": getattr(model.config, "hidden_act", None)},
    )
    for site in cfg.sites:
        if site != "intermediate":
            art.inputs[site] = site_thresholds(rec.values(site), cfg.site_target(site))
    if cfg.allocation == "greedy" and layer_sparsity[0] > 0:
        art.layer_sparsity = greedy_allocation(model, art, rec, cfg.target_sparsity, cfg.greedy_step)
        art.thresholds = [empirical_threshold(abs_a[i], art.layer_sparsity[i]) for i in range(L)]
    art.calibration = {
        "tokens_recorded": int(rec.a[0].shape[0]), "tokens_seen": rec.n_all,
        "calibration_sparsity": [1.0 - float((v > t).float().mean()) for v, t in zip(abs_a, art.thresholds, strict=True)],
        "sites": art.sites,
    }
    if cfg.predictor.enabled:
        preds, cutoffs, val = [], [], []
        for i in range(L):
            pred, cut, metrics = train_predictor(rec.x[i], abs_a[i] > art.thresholds[i], cfg.predictor,
                                                 seed=cfg.seed + i)
            preds.append(pred)
            cutoffs.append(cut)
            val.append(metrics)
        art.predictors, art.cutoffs = preds, cutoffs
        art.calibration["predictor_validation"] = val
    return art
