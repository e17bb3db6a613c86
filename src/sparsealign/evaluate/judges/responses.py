"""Judge items from a model instead of response files: `eval winrate --pairs P --responses-model M --sparsity S`.

The candidate answers are M's greedy completions of each pair's prompt under sparsity, the baseline answers M's own
dense completions of the same prompts (the same model object, before it is patched): the win rate then says what
sparsity costs in the judge's eyes.  Prompts are used as the pair stores them (HH's "Human: ... Assistant:" text);
generation stops at the next "Human:" turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparsealign.evaluate.generation import SamplingConfig, generate
from sparsealign.evaluate.judges.winrate import JudgeItem
from sparsealign.models.loading import load_model_and_tokenizer
from sparsealign.sparse.apply import apply_spec
from sparsealign.sparse.spec import SparsitySpec

TURN_STOPS = ("\n\nHuman:", "\nHuman:", "\nUser:")


def dense_vs_sparse_items(model_path: str, pairs: Sequence[Any], spec: SparsitySpec, *, max_new_tokens: int,
                          device: str = "auto", batch_size: int = 8) -> tuple[list[JudgeItem], dict[str, Any]]:
    """(items with candidate = sparse answer, baseline = dense answer; the realized-sparsity summary)."""
    model, tok = load_model_and_tokenizer(model_path, device=device)
    prompts = [p.prompt for p in pairs]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)

    def answers() -> list[str]:
        return [gens[0].text.strip() for gens in generate(model, tok, prompts, sampling, stop=TURN_STOPS)]

    dense = answers()
    handle = apply_spec(model, spec)
    try:
        sparse = answers()
        stats = handle.stats()
    finally:
        handle.remove()
    items = [JudgeItem(p.id, p.prompt, s, d) for p, s, d in zip(pairs, sparse, dense, strict=True)]
    info = {**spec.model_dump(), "responses_model": model_path, "realized_sparsity": stats.get("realized_sparsity"),
            "target_sparsity": handle.info.get("target_sparsity"), "identical_answers": sum(s == d for s, d in
                                                                                         zip(sparse, dense, strict=True))}
    return items, info
