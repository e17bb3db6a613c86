"""Continuous MBPP metrics: teacher-forced scores of the reference solutions, informative for any model size.

pass@1 sits at 0 for models too small to write a passing program; the per-token negative log-likelihood of the
reference solution under the lm-eval prompt still moves with size, alignment and sparsity.  Three metrics, each
one item per MBPP task (mean over the task's reference tokens), summarised by the mean over tasks with a seeded
bootstrap CI over tasks:

    reference_nll(model, tok, tasks)             -> NLL of the reference tokens (nats/token)
    reference_kl(p_model, q_model, tok, tasks)   -> KL(p || q) of the next-token distributions at the same
                                                    reference positions (nats/token)
    code_likelihood(model, tok, tasks, ...)      -> all of them for one model in one pass (what the study runs):
        kl_to={"alignment_kl": base}                 KL(model || base), the cost of alignment, on code neither
                                                     model trained on
        kl_from={"sparse_kl": dense}                 KL(dense || model) of a sparsified model, the cost of sparsity
        zeros=True -> "natural_sparsity"             fraction of exactly-zero MLP activations (ReLU gate) over
                                                     every real token of prompt + reference (no threshold)

Encoding follows lm-eval's `loglikelihood` (`_encode_pair`): the context's trailing whitespace moves to the
continuation, the whole string is tokenised once and the continuation is what follows the context's tokens, so the
scored tokens are the ones the model sees when the text is written in one go.  The continuation is the reference
code (CRLF -> LF, stripped) followed by "\\n[DONE]", the harness's end-of-solution marker.

Batch-invariant: rows are right-padded (real tokens never attend to padding, positions are unchanged) and padding
is masked out of every sum, so batch 1 and batch 16 give the same values up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sparsealign.align.token_logps import accepts_logits_to_keep
from sparsealign.data.mbpp.prompts import PromptFormat
from sparsealign.data.records import MbppTask
from sparsealign.sparse.runtime.patch import find_mlps
from sparsealign.stats.intervals import DEFAULT_LEVEL, DEFAULT_RESAMPLES, bootstrap_ci

DONE = "\n[DONE]"
Parts = list[tuple[list[int], list[int]]]


@dataclass
class ItemMetric:
    """Per-item values (aligned with `item_ids`) and their summary (mean over items, CI over items)."""

    name: str
    item_ids: list[Any]
    values: np.ndarray  # per item: mean over its scored tokens
    tokens: np.ndarray  # per item: number of scored tokens
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "item_ids": list(self.item_ids), "values": self.values.tolist(),
                "tokens": self.tokens.tolist(), "summary": self.summary}


def reference_text(task: MbppTask) -> str:
    return task.code.replace("\r\n", "\n").strip() + DONE


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of one string into (context ids, continuation ids)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok(context + continuation)["input_ids"]
    ctx = tok(context)["input_ids"]
    return whole[: len(ctx)], whole[len(ctx):]


def reference_parts(tok: Any, tasks: Sequence[MbppTask], fmt: PromptFormat | None = None,
                    max_length: int = 1024) -> tuple[Parts, int]:
    """(context, continuation) ids per task, and how many contexts were cut from the left to fit `max_length`."""
    fmt = fmt or PromptFormat("lm-eval")
    parts, cut = [], 0
    for task in tasks:
        ctx, tgt = encode_pair(tok, fmt.prompt(task), reference_text(task))
        tgt = tgt[: max_length - 1]
        if len(ctx) + len(tgt) > max_length:
            ctx, cut = ctx[len(ctx) + len(tgt) - max_length:], cut + 1
        parts.append((ctx, tgt))
    return parts, cut


def _batches(parts: Parts, batch_size: int,
             pad_id: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(item indices, input_ids, attention_mask, target_mask) per right-padded batch; items are batched in
    length order (less padding), which changes no item's value."""
    order = sorted(range(len(parts)), key=lambda i: (len(parts[i][0]) + len(parts[i][1]), i))
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        chunk = [parts[i] for i in idx]
        width = max(len(c) + len(t) for c, t in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for row, (ctx, tgt) in enumerate(chunk):
            n = len(ctx) + len(tgt)
            ids[row, :n] = torch.tensor(ctx + tgt, dtype=torch.long)
            attn[row, :n] = 1
            target[row, len(ctx):n] = True
        yield idx, ids, attn, target


def _log_probs(model: Any, ids: torch.Tensor, attn: torch.Tensor, target: torch.Tensor,
               keep_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-softmax (float32) at the positions that predict a target token: [M, V], rows in (row, position) order;
    with `keep_hidden` also the vocabulary projection's inputs there ([M, H], see `CachedModel`)."""
    device = next(model.parameters()).device
    # logits only from the first position that predicts a target on (the vocabulary projection of the prompt
    # positions is ~1/5 of a forward's FLOPs and all of its [B, T, V] memory)
    start = int(target.any(0).nonzero()[0]) - 1 if accepts_logits_to_keep(model) else 0
    kwargs = {"logits_to_keep": ids.shape[1] - start} if start > 0 else {}
    seen: list[torch.Tensor] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0])) if keep_hidden else None
    try:
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False, **kwargs).logits
    finally:
        if hook is not None:
            hook.remove()
    predicts = target[:, start + 1:].to(device)  # position t predicts token t + 1
    hidden = seen[-1][:, :-1][predicts].detach() if keep_hidden else None
    return torch.log_softmax(logits[:, :-1][predicts].float(), dim=-1), hidden


@dataclass
class CachedModel:
    """A model's side of a KL without running it again: its vocabulary projection (weight, bias) and, per item, the
    projection's inputs at the scored positions (`score_parts(hidden=...)` of the same parts).  Its log-probs equal
    the model's own up to float rounding: a sparse cell's dense reference or an aligned cell's base model, computed
    once by their dense cell instead of once per cell that compares against them."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    hidden: list[torch.Tensor]  # per item [scored tokens, H]

    def log_probs(self, idx: list[int]) -> torch.Tensor:
        h = torch.cat([self.hidden[i] for i in idx]).to(self.weight.device, self.weight.dtype)
        return torch.log_softmax(torch.nn.functional.linear(h, self.weight, self.bias).float(), dim=-1)


def _per_item(sums: torch.Tensor, rows: torch.Tensor, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    total = torch.zeros(n_rows, dtype=torch.float64).index_add(0, rows, sums.double().cpu())
    count = torch.zeros(n_rows, dtype=torch.float64).index_add(0, rows, torch.ones_like(sums, dtype=torch.float64))
    return total.numpy(), count.numpy()


def _summarise(name: str, ids: list[Any], totals: np.ndarray, counts: np.ndarray, extra: dict[str, Any],
               n_resamples: int, level: float, seed: int) -> ItemMetric:
    if (counts == 0).any():
        raise ValueError(f"{name}: {int((counts == 0).sum())} items have no scored token")
    values = totals / counts
    ci = bootstrap_ci(values, n_resamples=n_resamples, level=level, seed=seed).to_dict()
    summary = {**ci, "token_weighted": float(totals.sum() / counts.sum()), "tokens": int(counts.sum()), **extra}
    return ItemMetric(name, list(ids), values, counts.astype(np.int64), summary)


def _kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) of log-distributions [M, V]; rounding can give -1e-9, clamped to 0."""
    return (lp.exp() * (lp - lq.to(lp.device))).sum(-1).clamp_min(0.0)


@torch.no_grad()
def score_parts(model: Any, parts: Parts, pad_id: int, batch_size: int = 16, *,
                kl_to: Mapping[str, Any] | None = None, kl_from: Mapping[str, Any] | None = None,
                zeros: bool = False, hidden: list | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One pass over the items: per item (sum, count) of "nll" (continuation tokens), of "<name>" for each
    KL(model || kl_to[name]) and KL(kl_from[name] || model) at the same positions (a model or a `CachedModel`),
    and with `zeros` of "natural_sparsity" (exact-zero MLP activations over all layers and real tokens, out of
    all counted).  A `hidden` list is filled with each item's vocabulary-projection inputs (a `CachedModel`'s)."""
    kl_to, kl_from = dict(kl_to or {}), dict(kl_from or {})
    names = ["nll", *kl_to, *kl_from] + (["natural_sparsity"] if zeros else [])
    out = {name: (np.zeros(len(parts)), np.zeros(len(parts))) for name in names}
    state: dict[str, torch.Tensor] = {}
    if hidden is not None:
        hidden[:] = [None] * len(parts)

    def hook(_module: Any, _inputs: Any, act: torch.Tensor) -> None:  # act: [B, T, I]
        real = state["attn"].to(act.device).unsqueeze(-1).bool()
        state["zeros"] += ((act == 0) & real).sum(dim=(1, 2)).double().cpu()
        state["seen"] += (real.sum(dim=(1, 2)) * act.shape[-1]).double().cpu()

    def other(m: Any, idx: list[int], ids: torch.Tensor, attn: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(m, CachedModel):
            return _log_probs(m, ids, attn, target)[0]
        if len(m.hidden) != len(parts) or any(len(m.hidden[i]) != len(parts[i][1]) for i in idx):
            raise ValueError("cached projection inputs were saved for other items: score the model itself")
        return m.log_probs(idx)

    handles = [mlp.act_fn.register_forward_hook(hook) for _, mlp in find_mlps(model)] if zeros else []
    try:
        for idx, ids, attn, target in _batches(parts, batch_size, pad_id):
            state.update(attn=attn, zeros=torch.zeros(len(idx), dtype=torch.float64),
                         seen=torch.zeros(len(idx), dtype=torch.float64))
            logp, h = _log_probs(model, ids, attn, target, keep_hidden=hidden is not None)
            rows = target[:, 1:].nonzero()[:, 0]
            if hidden is not None:
                for r, piece in zip(idx, h.cpu().split(target[:, 1:].sum(1).tolist()), strict=True):
                    hidden[r] = piece.clone()
            tokens = ids[:, 1:][target[:, 1:]].to(logp.device)
            sums = {"nll": -logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)}
            sums.update({name: _kl(logp, other(m, idx, ids, attn, target)) for name, m in kl_to.items()})
            sums.update({name: _kl(other(m, idx, ids, attn, target), logp) for name, m in kl_from.items()})
            for name, values in sums.items():
                out[name][0][idx], out[name][1][idx] = _per_item(values, rows, len(idx))
            if zeros:
                out["natural_sparsity"][0][idx] = state["zeros"].numpy()
                out["natural_sparsity"][1][idx] = state["seen"].numpy()
    finally:
        for h in handles:
            h.remove()
    return out


def _pad_id(tok: Any) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def code_likelihood(model: Any, tok: Any, tasks: Sequence[MbppTask], *, kl_to: Mapping[str, Any] | None = None,
                    kl_from: Mapping[str, Any] | None = None, zeros: bool = False, fmt: PromptFormat | None = None,
                    batch_size: int = 16, max_length: int = 1024, n_resamples: int = DEFAULT_RESAMPLES,
                    level: float = DEFAULT_LEVEL, seed: int = 0,
                    hidden: list | None = None) -> dict[str, ItemMetric]:
    """Every metric of this module for one model in one pass over the tasks (see `score_parts` for the names):
    "reference_nll", each named KL, and with `zeros` "natural_sparsity"."""
    parts, cut = reference_parts(tok, tasks, fmt, max_length)
    scores = score_parts(model, parts, _pad_id(tok), batch_size, kl_to=kl_to, kl_from=kl_from, zeros=zeros,
                         hidden=hidden)
    ids = [t.task_id for t in tasks]
    return {("reference_nll" if name == "nll" else name):
            _summarise("reference_nll" if name == "nll" else name, ids, totals, counts, {"prompts_truncated": cut},
                       n_resamples, level, seed)
            for name, (totals, counts) in scores.items()}


def reference_nll(model: Any, tok: Any, tasks: Sequence[MbppTask], **kw: Any) -> ItemMetric:
    """Per-token NLL of each task's reference solution under the prompt `fmt` (default: lm-eval, 0-shot)."""
    return code_likelihood(model, tok, tasks, **kw)["reference_nll"]


def reference_kl(p_model: Any, q_model: Any, tok: Any, tasks: Sequence[MbppTask], *, name: str = "reference_kl",
                 **kw: Any) -> ItemMetric:
    """Per-token KL(p || q) at the reference-solution positions (p, q: two models with the same tokenizer)."""
    return code_likelihood(p_model, tok, tasks, kl_to={name: q_model}, **kw)[name]
