"""Batch-1 CPU decode speed, dense vs sparse (static / dynamic / predictor), against the memory roofline.

    bench_decode(model, tokenizer, calib_texts, prompt, sparsities=, modes=, tokens=) -> {"results": [...], ...}

A row is {mode, sparsity, dense_tokens_per_s, sparse_tokens_per_s, speedup, ideal_speedup,
dense_fraction_of_roofline, sparse_fraction_of_roofline, ...}.  How it is measured (the same way for every row,
in one process):
- decode = greedy, batch 1, fp32, the static-KV decoder of `sparse.runtime.decode` (the layer loop in plain torch ops over
  the model's own weights; no HF per-module dispatch): one dense prefill, then `tokens` single-token steps, of
  which only the steps are timed.  The sparse side runs the same loop with the MLPs patched by `apply_sparsity`
  (fast path of `sparse.runtime.fastpath`: C kernels reading active rows in place; static/dynamic use the exact int8 gate
  pre-check).
- Pairing: dense and sparse decode side by side, alternating every token step (each with its own KV cache), so a
  busy neighbour on shared cores slows both sides of a ratio alike; the sparse side is fed the dense side's greedy
  tokens, so KL(dense || sparse) and top-1 agreement of every step come with the speed (`kl_mean`,
  `top1_agreement`).  `repeats` such runs are averaged.
- Roofline (`sparse.bench.roofline`): bytes per step are counted (dense: every weight, norms, K/V, lm_head; sparse: the
  same outside the FFN plus what the active sets touched, predictor weights included), the read bandwidth is
  measured in-process before every step pair (the row uses the median; `bandwidth_probe_spread` = min, max; the
  result's `bandwidth_probes` are 256 MB probes between rows); roofline tokens/s = bandwidth / bytes,
  `*_fraction_of_roofline` = measured / roofline, `*_overhead_ms_per_token` = time not explained by bytes.
- ideal_speedup = dense bytes / sparse bytes per token (what the roofline allows); fraction_of_ideal = speedup /
  ideal.  amdahl_speedup = 1 / ((1 - f) + f (1 - skipped)) with f the FFN share of dense decode time and skipped
  the FFN bytes skipped; ffn_* = the FFN block alone (timed around each MLP call).  flops_skipped = from
  `handle.stats()` (FLOP count, the gate counted dense for static/dynamic as before).
- Predictor mode on random weights: a low-rank predictor cannot learn random activations, so for speed rows the
  logit cut-off is set to the quantile that keeps (1 - sparsity) of the neurons on the dense decode trajectory
  being timed (`predictor_cutoff="density"`); its KL on random weights says nothing about real models.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparsealign.errors import UserError
from sparsealign.sparse.bench.roofline import measure_bandwidth, paired_decode, roofline_fields
from sparsealign.sparse.calibration.calibrate import calibrate, record_activations
from sparsealign.sparse.config import PredictorConfig, SparsityConfig
from sparsealign.sparse.metrics import ideal_speedup
from sparsealign.sparse.modes import facts, needs_predictors
from sparsealign.sparse.runtime.decode import PatchedOps
from sparsealign.sparse.runtime.hugepages import rehome_weights
from sparsealign.sparse.runtime.patch import apply_sparsity

# 1B-shaped ReLU Llama stacks (TinyLlama-1.1B widths: hidden 2048, FFN 5632, 32 heads, 4 KV heads, vocab 32000)
PRESETS: dict[str, dict[str, Any]] = {
    "1b-relu": dict(hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32, num_kv_heads=4,
                    vocab_size=32000),
    "1b-relu-small": dict(hidden_size=2048, intermediate_size=5632, num_layers=4, num_heads=32, num_kv_heads=4,
                          vocab_size=32000),
    "tiny-relu": dict(hidden_size=256, intermediate_size=1024, num_layers=2, num_heads=4, num_kv_heads=2,
                      vocab_size=512),
}


POOL_SIZE = 1 << 24


def build_preset(name: str, *, num_layers: int | None = None, intermediate_size: int | None = None,
                 seed: int = 0) -> nn.Module:
    """A random-weight ReLU `LlamaForCausalLM` of a preset shape, fp32, eval mode (weights: N(0, 0.02))."""
    from transformers import LlamaConfig, LlamaForCausalLM


    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = dict(PRESETS[name])
    p["num_layers"] = num_layers or p["num_layers"]
    p["intermediate_size"] = intermediate_size or p["intermediate_size"]
    config = LlamaConfig(
        vocab_size=p["vocab_size"], hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"], num_attention_heads=p["num_heads"], num_key_value_heads=p["num_kv_heads"],
        hidden_act="relu", max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    # meta-device construction + a fill from one random pool: HF's per-module init of ~1B normals takes minutes
    # on 2 shared cores, a memcpy-speed fill seconds.  Each tensor is a window of an N(0, 0.02) pool starting at a
    # random offset (not a multiple of a row), so rows are distinct iid-looking vectors.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    pool = torch.empty(POOL_SIZE).normal_(0.0, 0.02, generator=gen)
    with torch.no_grad():
        for name_, param in model.named_parameters():
            if name_.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            flat, pos = param.view(-1), 0
            start = int(torch.randint(0, POOL_SIZE, (1,), generator=gen))
            while pos < flat.numel():
                n = min(flat.numel() - pos, POOL_SIZE - start)
                flat[pos:pos + n] = pool[start:start + n]
                pos, start = pos + n, (start + n + 7919) % POOL_SIZE  # a prime step, so wraps do not realign
        model.model.rotary_emb.__init__(config)  # meta buffers (inv_freq) need real values
    return model.eval().requires_grad_(False)


class ModuleTimer:
    """Wall time spent inside some modules (pre/post forward hooks); `seconds` accumulates while `on`."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.seconds, self.on, self._t0 = 0.0, False, 0.0
        self._handles = []
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, *_: Any) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: Any) -> None:
        if self.on:
            self.seconds += time.perf_counter() - self._t0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def mlp_modules(model: nn.Module) -> list[nn.Module]:
    """The (possibly patched) MLP module of every decoder layer."""
    return [layer.mlp for layer in model.model.layers]


@torch.no_grad()
def timed_decode(model: nn.Module, prompt: torch.Tensor, tokens: int) -> dict[str, Any]:
    """Greedy batch-1 decode of `tokens` tokens after `prompt` [1, P] with a KV cache.

    Returns per-token seconds: total, inside MLPs (`ffn`) and inside decoder layers (`layers`), plus the ids."""
    from transformers import DynamicCache

    ffn = ModuleTimer(mlp_modules(model))
    layers = ModuleTimer(list(model.model.layers))
    try:
        cache = DynamicCache()
        out = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)
        new = [int(nxt)]
        ffn.on = layers.on = True
        start = time.perf_counter()
        for _ in range(tokens):
            out = model(input_ids=nxt, cache=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            new.append(int(nxt))
        total = time.perf_counter() - start
        return {"total": total / tokens, "ffn": ffn.seconds / tokens, "layers": layers.seconds / tokens, "ids": new}
    finally:
        ffn.remove()
        layers.remove()


@torch.no_grad()
def mlp_inputs(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the MLP input x [T, H] of every position of `ids` [1, T] (dense forward)."""
    xs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, args, _o: xs.append(args[0].reshape(-1, args[0].shape[-1])))
               for m in mlp_modules(model)]
    try:
        model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return xs


def density_cutoffs(predictors, xs: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """Per-layer predictor logit cut-off keeping (1 - sparsity) of the neurons over the positions in xs."""
    out = []
    for pred, x in zip(predictors, xs, strict=True):
        logits = pred(x.float()).flatten()
        k = min(max(1, round(sparsity * logits.numel())), logits.numel())
        out.append(float(logits.kthvalue(k).values) if sparsity > 0 else float("-inf"))
    return out


def local_texts(n: int = 64, chars: int = 1200) -> list[str]:
    """Text that is always present: this package's own source, in chunks (for tokenizers and calibration of
    random-weight presets, whose activations do not depend on what the text says)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]  # the sparsealign package
    source = "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")))
    return [source[i:i + chars] for i in range(0, min(len(source), n * chars), chars)]


def _row(mode: str, sparsity: float, d: dict[str, float], s: dict[str, float], stats: dict[str, Any],
         gb_per_s: float, num_layers: int, extrapolate_layers: int | None) -> dict[str, Any]:

    ffn_share = min(1.0, d["ffn"] / d["total"])
    ffn_ideal = d["ffn_bytes"] / s["ffn_bytes"]
    skipped = 1.0 - s["ffn_bytes"] / d["ffn_bytes"]
    row = {
        "mode": mode, "sparsity": sparsity, "dense_tokens_per_s": 1.0 / d["total"],
        "sparse_tokens_per_s": 1.0 / s["total"], "speedup": d["total"] / s["total"],
        **roofline_fields(d, s, gb_per_s),
        "amdahl_speedup": ideal_speedup(skipped, ffn_share),
        "realized_sparsity": float(stats.get("realized_sparsity", 0.0)),
        "flops_skipped": float(stats.get("flops_skipped", 0.0)), "ffn_bytes_skipped": skipped,
        "ffn_share_dense": ffn_share, "ffn_ms_dense": d["ffn"] * 1e3, "ffn_ms_sparse": s["ffn"] * 1e3,
        "ffn_speedup": d["ffn"] / s["ffn"], "ffn_ideal_speedup": ffn_ideal,
        "ffn_fraction_of_ideal": d["ffn"] / s["ffn"] / ffn_ideal, "kernel": stats.get("kernel"),
        "kl_mean": s["kl"], "top1_agreement": s["top1"],
    }
    if extrapolate_layers:
        # per-token time = outside the decoder layers (embedding, final norm, lm_head, Python) + L x per-layer
        scale = extrapolate_layers / num_layers
        full_d = d["total"] + (scale - 1.0) * d["layers"]
        full_s = s["total"] + (scale - 1.0) * s["layers"]
        row.update({
            "extrapolated_layers": extrapolate_layers, "extrapolated_speedup": full_d / full_s,
            "extrapolated_ideal_speedup": ideal_speedup(skipped, min(1.0, d["ffn"] * scale / full_d)),
            "extrapolated_dense_tokens_per_s": 1.0 / full_d, "extrapolated_sparse_tokens_per_s": 1.0 / full_s,
        })
    return row


@torch.no_grad()
def bench_decode(
    model: nn.Module, tokenizer, calib_texts: Sequence[str], prompt: str, *, sparsities: Sequence[float],
    modes: Sequence[str], tokens: int = 32, repeats: int = 3, predictor_rank: int = 64, predictor_epochs: int = 2,
    predictor_cutoff: str = "density", calib_tokens: int = 1024, extrapolate_layers: int | None = None,
    log=None,
) -> dict[str, Any]:
    """Dense vs sparse decode tokens/s per (mode, sparsity); see the module docstring for the method."""

    log = log or (lambda msg: None)
    model.eval()
    rehome_weights(model)  # 2 MB pages for the weights both decoders read (dense and sparse alike)
    num_layers = len(model.model.layers)
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    rec = record_activations(model, tokenizer, calib_texts, max_length=256, max_tokens=calib_tokens)
    # warm-up (allocator, lazy init); its greedy trajectory is the one every dense run decodes
    traj = timed_decode(model, prompt_ids, tokens)["ids"]
    decode_x = [x[-tokens:] for x in mlp_inputs(model, torch.cat([prompt_ids, torch.tensor([traj[:-1]])], 1))]
    rows: list[dict[str, Any]] = []
    bws = [measure_bandwidth(torch.get_num_threads())["gb_per_s"]]
    for sparsity in sparsities:
        pcfg = PredictorConfig(enabled=needs_predictors(modes), rank=predictor_rank, epochs=predictor_epochs)
        art = calibrate(model, tokenizer, calib_texts, SparsityConfig(target_sparsity=sparsity, predictor=pcfg),
                        recording=rec)
        if needs_predictors(modes) and predictor_cutoff == "density":
            art.cutoffs = density_cutoffs(art.predictors, decode_x, sparsity)
        for mode in modes:
            extra = (4.0 * sum(p.numel() for p in art.predictors[0].parameters())
                     if facts(mode).predictor else 0.0)
            with apply_sparsity(model, art, mode, "dense", fast=True) as handle:
                ops = PatchedOps(model, extra_mlp_bytes=extra)
                paired_decode(model, ops, prompt_ids, min(tokens, 2))  # warm-up of this application
                handle.reset()
                bws.append(measure_bandwidth(torch.get_num_threads())["gb_per_s"])
                runs = [paired_decode(model, ops, prompt_ids, tokens) for _ in range(repeats)]
                stats = handle.stats()  # realized counts over all timed sparse steps
                stats["kernel"] = getattr(ops.wrappers[0]._nm, "kernel", "torch")
            keys = ("total", "ffn", "layers", "bytes", "ffn_bytes")
            d = {k: sum(r["dense"][k] for r in runs) / repeats for k in keys}
            sp = {k: sum(r["sparse"][k] for r in runs) / repeats for k in keys}
            sp.update(kl=sum(r["kl"] for r in runs) / repeats, top1=sum(r["top1"] for r in runs) / repeats)
            inloop = [b for r in runs for b in r["bandwidth_probes"]]
            row = _row(mode, sparsity, d, sp, stats, statistics.median(inloop), num_layers, extrapolate_layers)
            row["bandwidth_probe_spread"] = [min(inloop), max(inloop)]
            rows.append(row)
            log(f"{mode:>9} s={sparsity:.2f}: dense {row['dense_tokens_per_s']:7.2f} tok/s "
                f"({100 * row['dense_fraction_of_roofline']:.0f}% of roofline), sparse "
                f"{row['sparse_tokens_per_s']:7.2f} tok/s ({100 * row['sparse_fraction_of_roofline']:.0f}%), speedup "
                f"{row['speedup']:.2f}x (ideal {row['ideal_speedup']:.2f}x); KL {row['kl_mean']:.2e}")
    return {"results": rows, "tokens": tokens, "prompt_tokens": int(prompt_ids.shape[1]), "repeats": repeats,
            "threads": torch.get_num_threads(), "dtype": "float32", "batch_size": 1, "device": "cpu",
            "num_layers": num_layers, "calibration_tokens": int(rec.a[0].shape[0]),
            "bandwidth_gb_per_s": statistics.median(bws), "bandwidth_probes": bws, "decoder": "static-kv"}
