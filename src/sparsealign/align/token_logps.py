"""Log-probs of chosen tokens without the full-vocabulary logits of every position.

A causal LM's forward returns logits [N, T, V]; scoring needs one number per scored token, log p(target).  Here the
output layer sees only the last position (a pre-hook on it keeps the final hidden states [N, T, H]), and the scored
positions' logits are made `CHUNK_ELEMENTS` at a time: gather the target's logit, subtract the logsumexp.  In
training each chunk is checkpointed, so its logits are recomputed in backward instead of kept: for SmolLM2-135M
(V = 49,152) at batch 4 x 256 tokens that is ~1.2 GB of float32 logits, their copy and their gradient never held
whole (docs/align.md has the measured RSS).

Models whose logits are not `output layer(hidden)` (final soft-capping, a logit scale) or whose output layer is
sharded (FSDP, ZeRO-3: the weight is empty outside forward) take the plain path: the model's own logits.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 25  # logits held at once: 32M floats (128 MB in fp32), 682 tokens of a 49,152-token vocabulary


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # DDP / FSDP / DeepSpeed wrappers
        model = model.module
    return model


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    inner = _unwrap(model)
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def output_layer(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's output projection when it is a plain, unsharded Linear; else None."""
    get = getattr(_unwrap(model), "get_output_embeddings", None)  # PEFT forwards it to the base model
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Linear) or head.weight.ndim != 2 or head.weight.numel() == 0:
        return None
    return head


def _chunk_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _from_hidden(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    step = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    parts = []
    for s in range(0, hidden.shape[0], step):
        args = (hidden[s:s + step], head.weight, head.bias, targets[s:s + step])
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if grad else _chunk_logps(*args))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def token_logps(model: torch.nn.Module, rows: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor,
                **inputs: Any) -> torch.Tensor:
    """log p(targets[i]) predicted at position sources[i] of batch row rows[i], float32 [M], from one forward of
    `model(**inputs)` (`inputs` on the model's device; rows/sources/targets are moved there)."""
    head = output_layer(model)
    if head is not None:
        kept: dict[str, torch.Tensor] = {}

        def keep_hidden(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3:
                return None  # an unexpected call: the plain path below handles it
            kept["hidden"] = args[0]
            return (args[0][:, -1:], *args[1:])

        handle = head.register_forward_pre_hook(keep_hidden)
        try:
            last = model(**inputs, use_cache=False).logits
        finally:
            handle.remove()
        hidden = kept.get("hidden")
        n, t = inputs["input_ids"].shape
        if hidden is not None and hidden.shape[:2] == (n, t) and last.shape[1] == 1:
            with torch.no_grad():  # the model's logits are head(hidden) and nothing more (no soft-capping, no scale)
                plain = torch.allclose(head(hidden[:, -1:]).float(), last.float(), rtol=1e-4, atol=1e-4)
            if plain:
                dev = hidden.device
                return _from_hidden(head, hidden[rows.to(dev), sources.to(dev)], targets.to(dev))
    # plain path: the model's logits, from the first scored position on
    first = int(sources.min()) if sources.numel() and accepts_logits_to_keep(model) else 0
    keep = {"logits_to_keep": inputs["input_ids"].shape[1] - first} if first else {}
    logits = model(**inputs, use_cache=False, **keep).logits
    picked = logits[rows.to(logits.device), sources.to(logits.device) - first].float()  # [M, V]
    return picked.gather(-1, targets.to(logits.device).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, dim=-1)
