"""Tokenising preference pairs and scoring sequences: the shared entry point for training and evaluation.

Layout of one pair: `prompt_ids` then a response (`chosen_ids` / `rejected_ids`), tokenised separately so the
response tokens are exactly what the model would generate after the prompt (no merge across the boundary).
With a chat template the prompt is the rendered conversation up to the generation prompt and the response is the rest
of the rendered assistant turn; without one it is `<bos> prompt` and `response <eos>`.

Truncation (explicit, counted): when prompt + longest response exceeds `max_length`, the prompt keeps its *last*
`max_prompt_length` tokens (the question sits at the end of a dialogue) and responses keep their *first* tokens.

Rationale methods score a third sequence: a prompt that shows the question, both responses and which one is
preferred, followed by the rationale.  The order of the two responses is randomised per pair (seeded by
`rationale_seed` and the pair id): the authors' code always shows the chosen one first, a position bias.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparsealign.align.packed import pack_pairs, packed_logps, packed_width
from sparsealign.align.token_logps import token_logps

RATIONALE_TEMPLATE = (
    "Question:\n{question}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
    "Response {better} is better. Explain why.\nRationale:"
)


@dataclass(frozen=True)
class TokenizeSettings:
    max_length: int = 512  # prompt + response
    max_prompt_length: int = 256  # prompt tokens kept (from the end) when a pair is too long
    max_rationale_tokens: int = 128  # rationale tokens kept (from the start)
    rationale_max_length: int = 1024  # whole third sequence: question + both responses + rationale
    chat_template: bool = True  # use the tokenizer's chat template when it has one
    randomize_rationale_order: bool = True
    rationale_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError("max_prompt_length must be positive and smaller than max_length")


def _uses_template(tok: Any, settings: TokenizeSettings) -> bool:
    return bool(settings.chat_template and getattr(tok, "chat_template", None))


def _messages(prompt: str, messages: list[dict[str, str]] | None) -> list[dict[str, str]]:
    return list(messages) if messages else [{"role": "user", "content": prompt}]


def encode_prompt(tok: Any, prompt: str, settings: TokenizeSettings, messages: list | None = None) -> list[int]:
    if _uses_template(tok, settings):
        text = tok.apply_chat_template(_messages(prompt, messages), add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids


def encode_response(
    tok: Any, prompt: str, response: str, settings: TokenizeSettings, messages: list | None = None
) -> list[int]:
    if _uses_template(tok, settings):
        msgs = _messages(prompt, messages)
        head = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template([*msgs, {"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(head):  # the rest of the rendered assistant turn, end-of-turn tokens included
            return tok(full[len(head):], add_special_tokens=False)["input_ids"]
    ids = tok(response, add_special_tokens=False)["input_ids"]
    return ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])


def truncate_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], settings: TokenizeSettings
) -> tuple[list[int], list[int], list[int], bool]:
    """Apply the truncation policy; the flag says whether anything was cut."""
    if len(prompt) + max(len(chosen), len(rejected)) <= settings.max_length:
        return prompt, chosen, rejected, False
    prompt = prompt[-settings.max_prompt_length:]
    budget = settings.max_length - len(prompt)
    return prompt, chosen[:budget], rejected[:budget], True


def _clip_text(tok: Any, text: str, n: int, keep_end: bool = False) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n:
        return text
    return tok.decode(ids[-n:] if keep_end else ids[:n])


def rationale_order(pair_id: str, settings: TokenizeSettings) -> bool:
    """True when the chosen response is shown first (as 'Response A')."""
    if not settings.randomize_rationale_order:
        return True
    return random.Random(f"{settings.rationale_seed}:{pair_id}").random() < 0.5


def encode_rationale(tok: Any, pair: Any, settings: TokenizeSettings) -> tuple[list[int], list[int]]:
    """(context_ids, rationale_ids) of the third sequence; context shows question, both responses, the winner.

    A pair without a rationale (allowed with `missing_rationales=skip`) gets an empty target: its rationale term
    is 0 and costs one token of compute."""
    if not (pair.rationale or "").strip():
        return [tok.eos_token_id if tok.eos_token_id is not None else 0], []
    rationale = tok(" " + pair.rationale.strip(), add_special_tokens=False)["input_ids"][: settings.max_rationale_tokens]
    rationale = rationale + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    budget = settings.rationale_max_length - len(rationale) - 48  # 48: template words and chat markup
    question = _clip_text(tok, pair.prompt, min(settings.max_prompt_length, budget // 3), keep_end=True)
    share = max(1, (budget - len(tok(question, add_special_tokens=False)["input_ids"])) // 2)
    chosen, rejected = _clip_text(tok, pair.chosen, share), _clip_text(tok, pair.rejected, share)
    chosen_first = rationale_order(pair.id, settings)
    a, b = (chosen, rejected) if chosen_first else (rejected, chosen)
    text = RATIONALE_TEMPLATE.format(question=question.strip(), a=a.strip(), b=b.strip(),
                                     better="A" if chosen_first else "B")
    context = encode_prompt(tok, text, settings)
    limit = settings.rationale_max_length - len(rationale)
    return context[-limit:], rationale


def encode_pairs(
    tok: Any, pairs: Sequence[Any], settings: TokenizeSettings, *, rationale: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """Tokenise `PreferencePair`s into features for `PairCollator`; returns (features, number truncated)."""
    feats, n_truncated = [], 0
    for pair in pairs:
        prompt = encode_prompt(tok, pair.prompt, settings, pair.messages)
        chosen = encode_response(tok, pair.prompt, pair.chosen, settings, pair.messages)
        rejected = encode_response(tok, pair.prompt, pair.rejected, settings, pair.messages)
        prompt, chosen, rejected, cut = truncate_pair(prompt, chosen, rejected, settings)
        n_truncated += cut
        feat: dict[str, Any] = {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
        if rationale:
            feat["rationale_context_ids"], feat["rationale_ids"] = encode_rationale(tok, pair, settings)
        feats.append(feat)
    return feats, n_truncated


def pad_sequences(
    parts: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad (context, target) pairs -> input_ids, attention_mask, target_mask, each [N, T].

    Right padding keeps position ids equal to token positions, so scores match unpadded single-sequence scoring.
    """
    width = max(len(c) + len(t) for c, t in parts)
    ids = torch.full((len(parts), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(parts), width), dtype=torch.long)
    target = torch.zeros((len(parts), width), dtype=torch.long)
    for i, (ctx, tgt) in enumerate(parts):
        n = len(ctx) + len(tgt)
        ids[i, :n] = torch.tensor(ctx + tgt, dtype=torch.long)
        attn[i, :n] = 1
        target[i, len(ctx):n] = 1
    return ids, attn, target


@dataclass
class PairCollator:
    """Batch of B pairs -> one right-padded `input_ids` [k·B, T]: B chosen rows, B rejected rows and, for rationale
    methods, B rationale rows (k = 3), so the policy runs a single forward per step (what DDP/FSDP expect);
    `completion_mask` marks the scored tokens.  Cached reference log-probs ride along as `ref_*_logps` [B]."""

    pad_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        parts = [(f["prompt_ids"], f["chosen_ids"]) for f in features]
        parts += [(f["prompt_ids"], f["rejected_ids"]) for f in features]
        if "rationale_ids" in features[0]:
            parts += [(f["rationale_context_ids"], f["rationale_ids"]) for f in features]
        batch: dict[str, torch.Tensor] = dict(zip(("input_ids", "attention_mask", "completion_mask"),
                                                  pad_sequences(parts, self.pad_id), strict=True))
        if "ref_chosen_logps" in features[0]:
            for key in ("ref_chosen_logps", "ref_rejected_logps"):
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
        return batch


def sequence_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the tokens where `labels_mask` is 1, and how many there are: ([N] float32, [N] long).

    Logits are made only at scored positions, a chunk at a time, in float32 (`align.token_logps`).
    """
    input_ids, attention_mask, labels_mask = (t.to(model.device) if hasattr(model, "device") else t
                                              for t in (input_ids, attention_mask, labels_mask))
    mask = labels_mask[:, 1:].bool()  # [N, T-1]: token t+1 is predicted from position t
    rows, sources = mask.nonzero(as_tuple=True)
    token_logp = token_logps(model, rows, sources, input_ids[:, 1:][mask], input_ids=input_ids,
                             attention_mask=attention_mask)
    total = torch.zeros(input_ids.size(0), dtype=torch.float32, device=token_logp.device)
    return total.index_add(0, rows.to(token_logp.device), token_logp), mask.sum(1)


@torch.no_grad()
def score_features(
    model: torch.nn.Module, features: list[dict[str, Any]], pad_id: int, batch_size: int = 8
) -> dict[str, torch.Tensor]:
    """No-grad scores of encoded pairs: chosen/rejected summed log-probs and token counts, each [len(features)], in
    the order given.  Each pair is one packed row (`align.packed`: the prompt runs once for both responses, ~30%
    fewer tokens); pairs are batched longest first, so rows of like length share a batch and less compute goes to
    padding.  Each row is scored under its own mask, so neither packing nor the order changes the scores."""
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("chosen_logps", "chosen_n", "rejected_logps", "rejected_n")}
    order = sorted(range(len(features)), key=lambda i: -packed_width(features[i]))
    for start in range(0, len(order), batch_size):
        scores = packed_logps(model, pack_pairs([features[i] for i in order[start:start + batch_size]], pad_id))
        for key in cols:
            cols[key].append(scores[key].cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {k: torch.cat(v)[inverse] for k, v in cols.items()}


def score_pairs(
    model: torch.nn.Module, tok: Any, pairs: Sequence[Any], settings: TokenizeSettings | None = None,
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """Score `PreferencePair`s with `model` (eval mode, no grad); adds `n_truncated` (0-dim tensor)."""
    settings = settings or TokenizeSettings()
    feats, n_truncated = encode_pairs(tok, pairs, settings)
    was_training = model.training
    model.eval()
    try:
        out = score_features(model, feats, tok.pad_token_id or 0, batch_size)
    finally:
        model.train(was_training)
    out["n_truncated"] = torch.tensor(n_truncated)
    return out
