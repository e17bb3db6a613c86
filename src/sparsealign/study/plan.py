"""`sparsealign study plan`: the cells, a memory estimate per cell and the launch commands — downloading nothing.

Parameter counts come from the config (`family.params`), a table of well-known checkpoints, or the micro-family
recipe; memory is estimated from them and the study's `load` settings — the ones every cell loads with — by the
usual rules of thumb (documented in docs/study.md): weights at `load.dtype` (`models.loading.weight_bytes`: 4 B/param
fp32, 2 B bf16/fp16); full fine-tuning with AdamW: 16 B/param (weights, grads, fp32 master + 2 moments), / n_gpus
under ZeRO-3; LoRA: frozen weights + ~1% trainable at 16 B; an aligned model's eval cell may also load its base
model (KL, reference log-probs when the base cell's are missing); + 20% activations/fragmentation headroom.
"""

from __future__ import annotations

from typing import Any

from sparsealign.align.config import facts
from sparsealign.models.loading import weight_bytes
from sparsealign.models.micro import get_recipe, non_embedding_params
from sparsealign.study.cells import BASE, Cell, expand, sizes_of
from sparsealign.study.config import StudyConfig

KNOWN_PARAMS = {  # published parameter counts, so planning a cluster run needs no download
    "meta-llama/Llama-2-7b-hf": 6.74e9,
    "meta-llama/Llama-2-13b-hf": 13.02e9,
    "meta-llama/Llama-2-70b-hf": 68.98e9,
    "SparseLLM/ReluLLaMA-7B": 6.74e9,
    "SparseLLM/ReluLLaMA-13B": 13.02e9,
    "SparseLLM/ReluLLaMA-70B": 68.98e9,
}
GiB = 1024**3


def micro_params(preset: str) -> dict[str, float]:
    """Exact parameter counts of the micro family from its recipe (tied embeddings, no biases)."""
    recipe = get_recipe(preset)
    return {s.name: float(non_embedding_params(s) + recipe.vocab_size * s.hidden_size) for s in recipe.sizes}


def param_counts(cfg: StudyConfig) -> dict[str, float | None]:
    if cfg.family.kind == "micro":
        return dict(micro_params(cfg.family.preset))
    return {size: cfg.family.params.get(size) or KNOWN_PARAMS.get(path) for size, path in cfg.family.models.items()}


def memory_gib(cell: Cell, params: float | None, cfg: StudyConfig) -> float | None:
    if cell.stage == "pretrain" and cfg.family.kind != "micro":
        return 0.0  # hf/pretrained families are only named by path here; nothing is loaded
    if params is None:
        return None
    weights = weight_bytes(params, cfg.load)
    if cell.stage == "align" and cfg.alignment.lora:
        need = weights + params * 0.01 * 16
    elif cell.stage in ("pretrain", "align"):
        need = params * 16
    elif cell.stage == "eval" and cell.method != BASE and facts(cell.method).needs_reference:
        need = weights * 2
    else:  # pairs, calibrate, eval: the model at its load dtype
        need = weights
    return float(f"{need * 1.2 / GiB:.3g}")  # significant digits: micro cells are well under 1 MiB


def launch_commands(source: str, cfg: StudyConfig) -> list[str]:
    """`source` is how the study was named on the command line: `--config PATH` or `--preset NAME`."""
    cmds = [f"sparsealign study {source}"]
    if cfg.executor.kind == "ray":
        cmds.insert(0, "ray start --head   # on the head node; `ray start --address=<head>:6379` on workers")
        cmds.append(f"sparsealign study {source} --set executor.address=auto   # on the head node")
    if cfg.family.kind == "hf":
        size, model = next(iter(cfg.family.models.items()))
        lora = " --set lora=true" if cfg.alignment.lora else ""
        cmds.append(  # a literal, runnable line (checked with --dry-run in tests/test_cli_conventions.py)
            "accelerate launch --config_file configs/accelerate/zero3.yaml -m sparsealign.cli align "
            f"--method dpo --model {model} --data {cfg.alignment.preference_data} --name {cfg.name}-{size}"
            f"{lora}   # one align cell by hand"
        )
    return cmds


def plan(cfg: StudyConfig, cells: list[Cell] | None = None) -> dict[str, Any]:
    cells = cells if cells is not None else expand(cfg)
    params = param_counts(cfg)
    known = [p for p in params.values() if p]
    params_of = {**params, "*": max(known) if cfg.family.kind == "micro" and known else None}  # pretrain: largest
    rows = [
        {
            "cell": c.id,
            "stage": c.stage,
            "size": c.size,
            "params": params_of.get(c.size),
            "memory_gib": memory_gib(c, params_of.get(c.size), cfg),
            "deps": list(c.deps),
        }
        for c in cells
    ]
    by_stage: dict[str, int] = {}
    for c in cells:
        by_stage[c.stage] = by_stage.get(c.stage, 0) + 1
    return {"name": cfg.name, "sizes": sizes_of(cfg), "params": params, "cells": rows, "count": len(rows),
            "by_stage": by_stage}
