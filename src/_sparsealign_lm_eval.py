"""Makes plain `lm_eval --model sparsealign ...` work: lm-eval 0.4 never scans an entry-point group for models, so the
wheel installs `sparsealign-lm-eval.pth`, which imports this module at interpreter start.  It only adds a finder that
waits for `lm_eval.models` to be imported and then registers `sparsealign` as a lazy placeholder, exactly as lm-eval
registers its own models; nothing of sparsealign, torch or lm-eval is imported until lm-eval asks for the model.
(Kept outside the `sparsealign` package and import-free so that every Python start stays as fast as before.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any

WATCHED = "lm_eval.models"
MODEL_NAME = "sparsealign"
MODEL_PATH = "sparsealign.evaluate.lm_eval_model:SparseAlignLM"


def register(registry: Any) -> None:
    """Adds the placeholder unless the class (or the placeholder) is already there."""
    if MODEL_NAME not in registry:
        registry.register(MODEL_NAME, target=MODEL_PATH)


class _RegisterAfterImport(MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != WATCHED:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            try:
                from lm_eval.api.registry import model_registry
                register(model_registry)
            except Exception as exc:  # never break lm-eval itself; say why the model is missing
                print(f"sparsealign: could not register the lm-eval model: {exc}", file=sys.stderr)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    if not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
