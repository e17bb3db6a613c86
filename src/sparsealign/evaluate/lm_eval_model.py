"""lm-evaluation-harness model `sparsealign`: lm-eval's own HF model (HFLM) run under our activation sparsity.

    sparsealign-lm-eval --model sparsealign \\
        --model_args pretrained=DIR,sparsity=DIR/sparsity,mode=dynamic --tasks mbpp

model_args: everything HFLM takes (pretrained=, peft=, dtype=, device=, batch_size=, ...) plus
    sparsity=DIR   artifacts from `sparsealign sparsify calibrate` on this model (absent = dense, i.e. plain HFLM)
    mode=M         a mode of sparse.modes: static | dynamic (default) | predictor
    prefill=P      dense (default) | sparse: multi-token calls (prompts, and the loglikelihood scoring of
                   multiple-choice tasks) dense or sparse; single-token decode steps are always sparse.

Plain `lm_eval --model sparsealign ...` works: lm-eval 0.4.13 has no plugin discovery for models (nothing scans an
entry-point group, and --include_path only indexes task YAML), so the install ships `sparsealign-lm-eval.pth`, which
registers this class as a lazy placeholder as soon as lm-eval imports its model table (src/_sparsealign_lm_eval.py).
Where .pth files are not read (`python -S`, a copied site-packages), `sparsealign-lm-eval` is lm-eval's own CLI,
unchanged, with this module imported first; in Python, `import sparsealign.evaluate.lm_eval_model` does the same.
The realized sparsity is reported in the results' `config`.
"""

from __future__ import annotations

import importlib
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from sparsealign.sparse.apply import apply_spec
from sparsealign.sparse.modes import DYNAMIC
from sparsealign.sparse.spec import SparsitySpec


class SparseAlignLM(HFLM):
    """HFLM with `sparsity=`, `mode=`, `prefill=` model_args (see the module docstring)."""

    def __init__(self, pretrained: Any = None, sparsity: str | None = None, mode: str = DYNAMIC,
                 prefill: str = "dense", **kwargs: Any) -> None:
        super().__init__(pretrained=pretrained, **kwargs)
        self.sparsity_spec = SparsitySpec(artifacts=sparsity, mode=mode, prefill=prefill) if sparsity else None
        self.sparsity_handle = None
        if self.sparsity_spec is None:
            return
        if hasattr(self._model, "merge_and_unload"):  # a PEFT adapter: sparsity patches the plain merged MLPs
            self._model = self._model.merge_and_unload()
        self.sparsity_handle = apply_spec(self._model, self.sparsity_spec)

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        if self.sparsity_handle is None:
            info["sparsity"] = None
            return info
        stats = self.sparsity_handle.stats()
        info["sparsity"] = {**self.sparsity_spec.model_dump(), "realized_sparsity": stats.get("realized_sparsity"),
                            "target_sparsity": self.sparsity_handle.info.get("target_sparsity"),
                            "layers": [{k: r.get(k) for k in ("layer", "tokens", "realized_sparsity")}
                                       for r in stats["layers"]]}
        return info


def main() -> None:
    """`sparsealign-lm-eval`: lm-eval's CLI with the `sparsealign` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":  # `python -m`: register the importable class (the one the placeholder names), not __main__'s
    importlib.import_module("sparsealign.evaluate.lm_eval_model")
    main()
else:
    register_model("sparsealign")(SparseAlignLM)
