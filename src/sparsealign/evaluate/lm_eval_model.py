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

`pretrained=` takes every `--model` spec of the project (a folder, a PEFT adapter folder, a .gguf file, a short name
such as smollm2-135m-instruct, a hub id): it is resolved by `models.loading.resolve_model`, so offline a short name
loads its converted copy and a spec that cannot load is one line (`error: ...`), not transformers' OSError
traceback.  Greedy `generate_until` requests decode through `evaluate.generation.generate_from_ids` (our KV-cache
loop, evaluate/greedy.py), the path `eval mbpp` takes, so under dynamic sparsity both give the same programs (HF
`generate` handed the controller other calls); sampling requests stay with HFLM.  Rows decoded at once:
`batch_size` (an integer; `auto` = `eval mbpp`'s default), with continuous batching.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from sparsealign.errors import UserError
from sparsealign.evaluate.generation import SamplingConfig, generate_from_ids
from sparsealign.models.loading import resolve_model
from sparsealign.sparse.apply import apply_spec
from sparsealign.sparse.modes import DYNAMIC
from sparsealign.sparse.spec import SparsitySpec


class SparseAlignLM(HFLM):
    """HFLM with `sparsity=`, `mode=`, `prefill=` model_args (see the module docstring)."""

    def __init__(self, pretrained: Any = None, sparsity: str | None = None, mode: str = DYNAMIC,
                 prefill: str = "dense", **kwargs: Any) -> None:
        if isinstance(pretrained, str):
            pretrained = _resolve(pretrained, kwargs)
        super().__init__(pretrained=pretrained, **kwargs)
        self.sparsity_spec = SparsitySpec(artifacts=sparsity, mode=mode, prefill=prefill) if sparsity else None
        self.sparsity_handle = None
        # a PEFT adapter is merged, as the project's loader merges it: the weights `eval mbpp` decodes with, a plain
        # model for our decode loop, and plain MLPs for the sparsity patch
        if hasattr(self._model, "merge_and_unload"):
            self._model = self._model.merge_and_unload()
        if self.sparsity_spec is not None:
            self.sparsity_handle = apply_spec(self._model, self.sparsity_spec)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy requests through `generate_from_ids` (what `eval mbpp` runs), one call per generation setting;
        the others through HFLM.  Results in request order, each cut at its stop strings as HFLM cuts them."""
        out: list[str] = [""] * len(requests)
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        rest: list[int] = []
        for i, req in enumerate(requests):
            key = self._greedy_settings(req.args[1])
            (rest if key is None else groups.setdefault(key, [])).append(i)
        rows = self.batch_size if isinstance(self.batch_size, int) else SamplingConfig().batch_size
        for (until, max_gen_toks), idx in groups.items():
            encoded = [self.tok_encode(requests[i].args[0], left_truncate_len=self.max_length - max_gen_toks)
                       for i in idx]
            gens = generate_from_ids(self.model, self.tokenizer, encoded,
                                     SamplingConfig(max_new_tokens=max_gen_toks, batch_size=rows), stop=until,
                                     progress=not disable_tqdm)
            for i, samples in zip(idx, gens, strict=True):
                out[i] = postprocess_generated_text(self.tok_decode(samples[0].completion_ids), list(until), None)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        if rest:
            for i, text in zip(rest, super().generate_until([requests[i] for i in rest], disable_tqdm), strict=True):
                out[i] = text
        return out

    def _greedy_settings(self, gen_kwargs: dict[str, Any]) -> tuple[tuple[str, ...], int] | None:
        """(stop strings with EOS, max new tokens) of a request our loop decodes as HFLM would; None for sampling,
        extra generation arguments (they are HF logits processors) and what HFLM handles around generate."""
        kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        if (kw.get("do_sample") or set(kw) - {"do_sample", "temperature", "top_p", "top_k", "until", "max_gen_toks"}
                or self.backend != "causal" or self.think_end_token is not None
                or self.mixed_precision_dtype is not None):
            return None
        until = handle_stop_sequences(kw.get("until"), eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False))
        return tuple(until), int(kw["max_gen_toks"])

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


def _resolve(spec: str, kwargs: dict[str, Any]) -> str:
    """What HFLM should load for a `--model` spec: a local folder (a converted GGUF, a short name's copy), or a hub
    id that can load; an adapter folder becomes its base plus `peft=` (and its own tokenizer when it has one)."""
    res = resolve_model(spec, revision=kwargs.get("revision"))
    if res.adapter:
        kwargs.setdefault("peft", res.adapter)
        if (Path(res.adapter) / "tokenizer_config.json").exists():
            kwargs.setdefault("tokenizer", res.adapter)
    return res.path


def _one_line_user_errors(hook: Any = sys.excepthook) -> None:
    """lm-eval's CLI lets exceptions escape: print ours as the one line `sparsealign` prints (a library caller still
    gets the exception; only an uncaught one reaches the hook)."""

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if issubclass(kind, UserError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            hook(kind, exc, tb)

    sys.excepthook = excepthook


def main() -> None:
    """`sparsealign-lm-eval`: lm-eval's CLI with the `sparsealign` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":  # `python -m`: register the importable class (the one the placeholder names), not __main__'s
    importlib.import_module("sparsealign.evaluate.lm_eval_model")
    main()
else:
    register_model("sparsealign")(SparseAlignLM)
    _one_line_user_errors()
