"""Deterministic train/eval splits and nested annotation-budget subsets.

Both rank items by a keyed hash (sha256 of seed and key), so the result depends only on the seed and the items'
content, not on the order of the input or on Python's hash randomisation.  `split_pairs` keys on the prompt, so
pairs that share a prompt land on the same side (no prompt leaks from train into eval).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from sparsealign.data.records import PreferencePair

T = TypeVar("T")


def _rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def split_pairs(
    pairs: Sequence[PreferencePair], eval_fraction: float = 0.1, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, eval), each in input order. Eval gets whole prompt groups in hash order until it holds
    round(eval_fraction * n) pairs (a little more if the last group is large); 0 < eval_fraction < 1."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(pair.prompt, []).append(i)
    target = round(eval_fraction * len(pairs))
    in_eval: set[int] = set()
    for prompt in sorted(groups, key=lambda p: _rank(p, seed)):
        if len(in_eval) >= target:
            break
        in_eval.update(groups[prompt])
    train = [p for i, p in enumerate(pairs) if i not in in_eval]
    evaluation = [p for i, p in enumerate(pairs) if i in in_eval]
    return train, evaluation


def nested_subsets(items: Sequence[T], fractions: Sequence[float], seed: int = 0) -> list[list[T]]:
    """One subset per fraction (e.g. 1/9, 1/3, 1), each of size round(f * n) (at least 1), nested: every smaller
    subset is contained in every larger one.  Items are ranked by their `id` (or repr) with the seed; each subset is
    returned in input order."""
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {list(fractions)}")
    keys = [str(getattr(item, "id", repr(item))) for item in items]
    order = sorted(range(len(items)), key=lambda i: (_rank(keys[i], seed), i))
    out = []
    for frac in fractions:
        size = min(len(items), max(1, round(frac * len(items)))) if items else 0
        chosen = set(order[:size])
        out.append([item for i, item in enumerate(items) if i in chosen])
    return out
