"""Reference log-probs: computed once, before training, and cached on disk so training holds only the policy.

The cache key covers the reference model (a local directory's config and weight-file sizes/mtimes, or a hub id),
its load dtype/precision, and the exact token ids of every pair (so data, tokenizer, chat template and truncation
settings are all in it).  Files live in `<cache dir>/ref_logps/<key>.safetensors` (`$SPARSEALIGN_CACHE_DIR`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from sparsealign.io import atomic_path
from sparsealign.settings import cache_dir

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json")


def model_fingerprint(model_id: str) -> str:
    path = Path(model_id).expanduser()
    if not path.is_dir():
        return f"hub:{model_id}"
    files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def reference_key(model_id: str, features: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(model_fingerprint(model_id).encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for f in features:
        h.update(json.dumps([f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]]).encode())
    return h.hexdigest()[:24]


def cache_path(key: str) -> Path:
    return cache_dir() / "ref_logps" / f"{key}.safetensors"


def cached_reference_logps(trainer: Any, features: list[dict[str, Any]], key: str,
                           packed: bool = False) -> tuple[torch.Tensor, bool]:
    """[N, 2] (chosen, rejected) reference log-probs from the cache, or from `trainer.reference_pass` (then cached).

    Every process takes the same branch (rank 0 decides), because the pass itself is collective.
    """
    from accelerate.utils import broadcast_object_list
    from safetensors.torch import load_file, save_file

    path = cache_path(key)
    decision = [path.exists()]
    if trainer.accelerator.num_processes > 1:
        broadcast_object_list(decision, from_process=0)
    if decision[0]:
        logps = load_file(path)["logps"]
        if logps.shape == (len(features), 2):
            return logps, True
    logps = trainer.reference_pass(features, packed=packed)
    if trainer.is_world_process_zero():
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({"logps": logps.contiguous()}, str(tmp))
    return logps, False


def attach(features: list[dict[str, Any]], logps: torch.Tensor) -> list[dict[str, Any]]:
    return [{**f, "ref_chosen_logps": float(c), "ref_rejected_logps": float(r)}
            for f, (c, r) in zip(features, logps.tolist(), strict=True)]
