"""Quality and speed of a sparse model against its own dense self.

    evaluate_sparsity(model, tokenizer, texts, artifacts, mode, prefill) -> dict

Each text is one batch-1 forward, dense then sparse (teacher forcing).  The first `prompt_tokens` positions are the
prompt: with prefill="dense" they run dense (as `generate` would prefill them) and the rest runs as sparse decode;
because the dynamic controller scans positions causally, this equals prefilling and decoding token by token.
Metrics are over the sparse (non-prompt) positions: KL(dense || sparse) per token, top-1 agreement, per-layer and
overall realized sparsity, FFN FLOPs skipped, predictor recall/precision; optionally decode tokens/s.
The dynamic controller keeps its state from text to text (as in deployment); call with a fresh application to reset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparsealign.sparse.artifacts import SparsityArtifacts
from sparsealign.sparse.calibration.calibrate import tokenize
from sparsealign.sparse.config import ControllerConfig, Prefill
from sparsealign.sparse.metrics import kl_per_token
from sparsealign.sparse.modes import STATIC, Mode
from sparsealign.sparse.runtime.patch import apply_sparsity


@torch.no_grad()
def decode_tokens_per_s(model: nn.Module, tokenizer, prompt: str, new_tokens: int = 32) -> float:
    """Greedy batch-1 decode speed (prefill excluded by timing a 1-token generate and subtracting it)."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    kw = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": None}

    def run(n: int) -> float:
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        return time.perf_counter() - start

    run(2)  # warm-up
    return (new_tokens - 1) / max(run(new_tokens) - run(1), 1e-9)


@torch.no_grad()
def dense_logits(model: nn.Module, ids_list: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The unpatched model's logits [T, V] per tokenized text (computed once, reused for every sparse setting)."""
    return [model(input_ids=ids.to(model.device)).logits[0].float() for ids in ids_list]


@torch.no_grad()
def evaluate_sparsity(
    model: nn.Module, tokenizer, texts: Sequence[str], artifacts: SparsityArtifacts, mode: Mode = STATIC,
    prefill: Prefill = "sparse", *, prompt_tokens: int = 0, max_length: int = 256,
    controller: ControllerConfig | None = None, per_token: bool = False, measure_speed: bool = False,
    speed_tokens: int = 32, dense: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """`dense`: the dense model's logits per text ([T, V], from `dense_logits`), when already computed."""
    model.eval()
    ids_list = tokenize(tokenizer, texts, max_length)
    dense = dense if dense is not None else dense_logits(model, ids_list)
    kls, agree = [], []
    handle = apply_sparsity(model, artifacts, mode, prefill, controller=controller)
    try:
        with handle.dense_prefix(prompt_tokens):
            for ids, d in zip(ids_list, dense, strict=True):
                s = model(input_ids=ids.to(model.device)).logits[0].float()
                start = min(prompt_tokens, ids.shape[1] - 1) if prefill == "dense" else 0
                kls.append(kl_per_token(d[start:], s[start:]).float())
                agree.append((d[start:].argmax(-1) == s[start:].argmax(-1)).float())
        stats, trace = handle.stats(), handle.trace()
        controller_state = handle.controller.state() if handle.controller else None
        if measure_speed:
            text = texts[0]
            sparse_tps = decode_tokens_per_s(model, tokenizer, text, speed_tokens)
    finally:
        handle.remove()
    kl = torch.cat(kls)
    out: dict[str, Any] = {
        **stats, "target_sparsity": artifacts.config.target_sparsity, "texts": len(ids_list), "tokens": kl.numel(),
        "kl_mean": float(kl.mean()), "kl_p95": float(kl.quantile(0.95)), "kl_max": float(kl.max()),
        "top1_agreement": float(torch.cat(agree).mean()), "top1_matches": int(torch.cat(agree).sum()),
        "kl_text_sums": [float(k.double().sum()) for k in kls], "text_tokens": [k.numel() for k in kls],
        "controller_state": controller_state,
        "apply_info": handle.info,
    }
    if per_token:
        out["kl_per_token"] = kl.tolist()
        out["trace"] = trace
    if measure_speed:
        dense_tps = decode_tokens_per_s(model, tokenizer, texts[0], speed_tokens)
        out.update(dense_tokens_per_s=dense_tps, sparse_tokens_per_s=sparse_tps, speedup=sparse_tps / dense_tps)
    return out
