"""Reference log-probs of held-out pairs for implicit rewards (DPO's β·log π/π_ref): scored once per reference
model and pair set, then read from the cache that training's reference pass uses (`align.reference`), keyed by the
reference model, its load dtype and the exact token ids. A study's base-model dense cell writes them as it scores
(`save_reference`); its aligned models' cells read them instead of loading the base model a second time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sparsealign.align.logps import TokenizeSettings, encode_pairs, score_pairs
from sparsealign.align.reference import cache_path, reference_key
from sparsealign.data.records import PreferencePair
from sparsealign.io import atomic_path
from sparsealign.models.loading import load_model_and_tokenizer


def reference_path(ref_model: str, tok: Any, pairs: Sequence[PreferencePair], settings: TokenizeSettings, dtype: str):
    feats, _ = encode_pairs(tok, pairs, settings)
    return cache_path(reference_key(ref_model, feats, {"dtype": dtype, "pass": "eval"}))


def save_reference(ref_model: str, tok: Any, pairs: Sequence[PreferencePair], settings: TokenizeSettings,
                   dtype: str, chosen_logps: Sequence[float], rejected_logps: Sequence[float]) -> None:
    """Keep `ref_model`'s own summed log-probs of `pairs` (its dense evaluation) as the reference its aligned
    models read."""
    from safetensors.torch import save_file

    logps = torch.stack([torch.as_tensor(chosen_logps), torch.as_tensor(rejected_logps)], dim=1).float().contiguous()
    with atomic_path(reference_path(ref_model, tok, pairs, settings, dtype), suffix=".safetensors") as tmp:
        save_file({"logps": logps}, str(tmp))


def reference_scores(ref_model: str, tok: Any, pairs: Sequence[PreferencePair], settings: TokenizeSettings, *,
                     dtype: str, device: str = "cpu", batch_size: int = 8) -> dict[str, torch.Tensor]:
    """`chosen_logps` / `rejected_logps` of `ref_model` on `pairs`: from the cache, else scored (then cached)."""
    from safetensors.torch import load_file

    path = reference_path(ref_model, tok, pairs, settings, dtype)
    if path.exists() and (logps := load_file(path)["logps"]).shape == (len(pairs), 2):
        return {"chosen_logps": logps[:, 0], "rejected_logps": logps[:, 1]}
    model, _ = load_model_and_tokenizer(ref_model, device=device, dtype=dtype)
    scores = score_pairs(model, tok, pairs, settings, batch_size=batch_size)
    save_reference(ref_model, tok, pairs, settings, dtype, scores["chosen_logps"], scores["rejected_logps"])
    return scores
