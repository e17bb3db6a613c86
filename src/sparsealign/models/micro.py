"""Presets of the embedded model families: LLaMA-architecture ReLU models pretrained here, on local code.

`micro` is the default study's family (four sizes spanning 127x in non-embedding parameters -- four points, so a
scaling slope has a t(n-2) interval -- pretrained in about two and a half minutes on 2 idle cores); `small` is a larger family for users with an hour to spare.  ReLU (not SwiGLU) in the MLP
gate is what makes the activations exactly sparse, as in PowerInfer's ReLU-fied LLaMA models.

A recipe (`PretrainRecipe`) fixes everything that determines the weights; its hash keys the checkpoint cache.
"""

from __future__ import annotations

from pydantic import Field

from sparsealign.config import StrictModel, load_config
from sparsealign.errors import UserError


class SizeSpec(StrictModel):
    """One member of a family (a `LlamaConfig` shape; head_dim = hidden_size / num_heads)."""

    name: str
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)


def non_embedding_params(spec: SizeSpec) -> int:
    """Per layer: q,k,v,o (h*h each, as many KV heads as heads) + gate, up, down (h*i each) + 2 RMSNorms; plus
    the final norm.  Embeddings are tied to the LM head, so total = this + vocab * h."""
    h, i = spec.hidden_size, spec.intermediate_size
    return spec.num_layers * (4 * h * h + 3 * h * i + 2 * h) + h


class PretrainRecipe(StrictModel):
    """Everything that determines the pretrained weights (hashed into the cache key)."""

    preset: str
    sizes: list[SizeSpec]
    seed: int = 0
    vocab_size: int = 2048  # byte-level BPE trained on the corpus itself
    seq_len: int = 256
    batch_size: int = 8  # sequences per step
    steps: int = 400
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_position_embeddings: int = 1024
    # corpus: stdlib sources of the running interpreter (sorted paths, capped), MBPP non-test splits, generated tasks
    stdlib_bytes: int = 1_500_000
    mbpp_splits: list[str] = ["train", "validation", "prompt"]
    generated_train_tasks: int = 3000
    held_out_fraction: float = 0.02  # packed sequences kept out of training to report a held-out loss
    num_threads: int = 1  # part of the recipe (CPU reduction order); 2-thread OpenMP stalls 10-30x on busy cores


_MICRO_SIZES = [
    SizeSpec(name="micro-xxs", hidden_size=16, num_layers=2, num_heads=2, intermediate_size=64),
    SizeSpec(name="micro-xs", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=128),
    SizeSpec(name="micro-s", hidden_size=64, num_layers=3, num_heads=4, intermediate_size=256),
    SizeSpec(name="micro-m", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
]
_SMALL_SIZES = [
    SizeSpec(name="small-s", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
    SizeSpec(name="small-m", hidden_size=256, num_layers=6, num_heads=8, intermediate_size=1024),
    SizeSpec(name="small-l", hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048),
]

PRESETS: dict[str, PretrainRecipe] = {
    "micro": PretrainRecipe(preset="micro", sizes=_MICRO_SIZES),
    "small": PretrainRecipe(preset="small", sizes=_SMALL_SIZES, vocab_size=8192, seq_len=512, batch_size=16,
                            steps=4000, lr=1e-3, warmup_steps=200, stdlib_bytes=20_000_000,
                            generated_train_tasks=20000, num_threads=8),
}


def get_recipe(preset: str = "micro", *, sizes: list[str] | None = None, steps: int | None = None,
               seed: int | None = None, overrides: list[str] | None = None) -> PretrainRecipe:
    """A preset's recipe, optionally restricted to some sizes / with another step count or seed, and with
    `key=value` overrides of any other recipe field (e.g. "stdlib_bytes=200000")."""
    if preset not in PRESETS:
        raise UserError(f"unknown pretrain preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    recipe = PRESETS[preset].model_copy(deep=True)
    if overrides:

        recipe = load_config(PretrainRecipe, None, overrides=overrides, base=recipe.model_dump())
    if sizes:
        known = {s.name: s for s in recipe.sizes}
        unknown = [s for s in sizes if s not in known]
        if unknown:
            raise UserError(f"unknown size(s) {', '.join(unknown)} for preset {preset!r}; "
                            f"choose from: {', '.join(known)}")
        recipe.sizes = [known[s] for s in known if s in sizes]  # keep preset order (small -> large)
    if steps is not None:
        if steps <= 0:
            raise UserError(f"--steps must be positive, got {steps}")
        recipe.steps = steps
        recipe.warmup_steps = min(recipe.warmup_steps, max(1, steps // 10))
    if seed is not None:
        recipe.seed = seed
    return recipe
