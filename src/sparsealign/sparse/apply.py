"""`apply_spec`: patch a loaded model with the artifacts a `SparsitySpec` names, after checking they belong to it.

Apart from `spec` (light: pydantic only, so CLI option parsing never imports torch) because it needs the patch.
"""

from __future__ import annotations

from sparsealign.sparse.artifacts import load_artifacts
from sparsealign.sparse.runtime.patch import SparsityHandle, apply_sparsity
from sparsealign.sparse.spec import SparsitySpec, check_artifacts_model


def apply_spec(model, spec: SparsitySpec) -> SparsityHandle:
    """Load the artifacts, check they belong to `model`, patch it; returns the SparsityHandle."""
    art = load_artifacts(spec.artifacts)
    check_artifacts_model(art, model, spec.artifacts)
    return apply_sparsity(model, art, spec.mode, spec.prefill)
