"""Stage 3 — sparsify: PowerInfer-style activation sparsity with static, predictor and dynamic thresholds.

Public API (see docs/sparse.md):
    calibrate(model, tokenizer, texts, SparsityConfig) -> SparsityArtifacts
    apply_sparsity(model, artifacts, mode="static"|"dynamic"|"predictor", prefill="dense"|"sparse") -> handle
        handle.remove(), handle.trace(), handle.stats(), handle.reset(), handle.info
    save_artifacts(artifacts, dir) / load_artifacts(dir)
    evaluate_sparsity(model, tokenizer, texts, artifacts, mode, prefill) -> dict
    record_activations / build_profile / save_profile (hot/cold profile), plot_trace(handle.trace(), png)
    load_texts("mbpp" | "hh" | path, n, skip)
Heavy imports (torch) happen on first attribute access, so `import sparsealign.sparse` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SparsityConfig": "config", "PredictorConfig": "config", "ControllerConfig": "config",
    "SparsityArtifacts": "artifacts", "save_artifacts": "artifacts", "load_artifacts": "artifacts",
    "calibrate": "calibration", "record_activations": "calibration", "greedy_allocation": "calibration",
    "apply_sparsity": "patch", "find_mlps": "patch", "SparsityHandle": "patch",
    "ThresholdController": "controller", "evaluate_sparsity": "quality", "decode_tokens_per_s": "quality",
    "build_profile": "profile", "save_profile": "profile", "plot_trace": "profile", "load_texts": "texts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"sparsealign.sparse.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
