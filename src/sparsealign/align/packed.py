"""Scoring a preference pair in one row: prompt, chosen, rejected -- the rejected tokens never see the chosen ones.

Two rows per pair (prompt + chosen, prompt + rejected) run the prompt twice.  Here one row holds
`[prompt | chosen | rejected | padding]`; the rejected tokens' positions restart at len(prompt), and a 4D boolean
attention mask lets each of them attend to the prompt and the rejected tokens before it, never to the chosen ones.
Every scored token therefore sees exactly the context it has in its own row: the log-probs are those of two-row
scoring up to float rounding (tests/align/test_packed.py), for ~30% fewer tokens (held-out HH 37%, UltraFeedback
25%, code pairs 33% on the micro family).

Padding positions attend to position 0 only, not to themselves: a position is real iff it attends to itself, and
a real position's *parent* (the latest earlier position it attends to) is the one before it except at the first
rejected token, whose parent is the prompt's last token.  `sparse.runtime.state` reads both from the mask, so activation
sparsity's padding statistics and the dynamic controller's per-row state (which continues from the parent) are the
same as in two-row scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparsealign.align.token_logps import token_logps


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, 1, T, T] bool, True = attend
    position_ids: torch.Tensor  # [B, T]
    rows: torch.Tensor  # [M] batch row of each scored token
    sources: torch.Tensor  # [M] position whose logits predict it
    targets: torch.Tensor  # [M] its token id
    rejected: torch.Tensor  # [M] bool: the token belongs to the rejected response


def packed_width(feature: dict[str, Any]) -> int:
    return len(feature["prompt_ids"]) + len(feature["chosen_ids"]) + len(feature["rejected_ids"])


def pack_pairs(features: Sequence[dict[str, Any]], pad_id: int) -> PackedBatch:
    """Features from `logps.encode_pairs` (each needs a non-empty prompt) -> one packed, right-padded batch."""
    B, T = len(features), max(packed_width(f) for f in features)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = torch.zeros(B, 1, T, T, dtype=torch.bool)
    mask[:, 0, :, 0] = True  # padding rows attend to position 0 only (no fully masked row)
    rows, sources, targets, rejected = [], [], [], []
    for b, f in enumerate(features):
        p, c, r = f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]
        P, C, R = len(p), len(c), len(r)
        if P == 0:
            raise ValueError("packed scoring needs a non-empty prompt (encode_prompt adds <bos>)")
        n = P + C + R
        ids[b, :n] = torch.tensor(p + c + r, dtype=torch.long)
        pos[b, :P + C] = torch.arange(P + C)
        pos[b, P + C:n] = torch.arange(P, P + R)
        mask[b, 0, :n, :n] = causal[:n, :n]
        mask[b, 0, P + C:n, P:P + C] = False  # rejected tokens are blind to the chosen response
        # token at j is predicted by j - 1, except the first rejected token: by the prompt's last position
        src = list(range(P - 1, P + C - 1)) + [P - 1] + list(range(P + C, n - 1))
        rows += [b] * (C + R)
        sources += src[:C + R]
        targets += c + r
        rejected += [False] * C + [True] * R
    as_long = {"dtype": torch.long}
    return PackedBatch(ids, mask, pos, torch.tensor(rows, **as_long), torch.tensor(sources, **as_long),
                       torch.tensor(targets, **as_long), torch.tensor(rejected, dtype=torch.bool))


def packed_logps(model: torch.nn.Module, batch: PackedBatch) -> dict[str, torch.Tensor]:
    """Summed log-probs and token counts of each row's chosen and rejected response, each [B] (float32 / long).

    Logits are made only at source positions, a chunk at a time, in float32 (`align.token_logps`)."""
    device = model.device if hasattr(model, "device") else batch.input_ids.device
    B = batch.input_ids.shape[0]
    token_logp = token_logps(model, batch.rows, batch.sources, batch.targets,
                             input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                             position_ids=batch.position_ids.to(device))
    dev = token_logp.device
    rows = batch.rows.to(dev)
    out: dict[str, torch.Tensor] = {}
    for side, selected in (("chosen", ~batch.rejected), ("rejected", batch.rejected)):
        sel = selected.to(dev)
        out[f"{side}_logps"] = torch.zeros(B, dtype=torch.float32, device=dev).index_add(
            0, rows[sel], token_logp[sel])
        out[f"{side}_n"] = torch.zeros(B, dtype=torch.long).index_add(
            0, batch.rows[selected], torch.ones(int(selected.sum()), dtype=torch.long))
    return out
