"""`sparsealign pretrain`: build (or reuse) the embedded ReLU-LLaMA model family from local code."""

from __future__ import annotations

import json
import sys

import click

PRESET_NAMES = ["micro", "small"]  # keep in sync with sparsealign.models.micro.PRESETS (not imported: no pydantic here)


def register(cli: click.Group) -> None:
    cli.add_command(pretrain)


@click.command("pretrain")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="micro", show_default=True,
              help="Model family: 'micro' (4 sizes, ~2-3 min on 2 cores) or 'small' (3 larger sizes, hours on CPU).")
@click.option("--sizes", default=None, metavar="NAME[,NAME...]",
              help="Only these sizes of the preset (e.g. micro-xs,micro-s); default: all.")
@click.option("--steps", type=int, default=None, help="Override the number of optimizer steps per size.")
@click.option("--seed", type=int, default=None, help="Override the recipe seed (another seed = another family).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write the family here instead of the cache (<cache>/micro/<preset>-<recipe hash>/).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set stdlib_bytes=200000 --set lr=1e-3 (see docs/micro_family.md).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Train sizes in this many parallel processes (same weights as 1). Default: min(2, CPUs).")
@click.option("--force", is_flag=True, help="Retrain sizes even when a finished checkpoint exists.")
@click.option("--no-eval", is_flag=True, help="Skip the greedy pass@1 sanity check on held-out generated tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the family on stdout.")
def pretrain(preset: str, sizes: str | None, steps: int | None, seed: int | None, out_dir: str | None,
             overrides: tuple[str, ...], workers: int | None, force: bool, no_eval: bool, as_json: bool) -> None:
    """Pretrain the embedded LLaMA-architecture ReLU model family on local code (stdlib sources, MBPP
    train/validation/prompt solutions, generated MBPP-format tasks) and cache the checkpoints.

    \b
    Finished sizes are reused (the cache is keyed by the recipe and corpus hash); each checkpoint directory is a
    Hugging Face model + tokenizer with pretrain.json (parameters, losses, wall time).  See MODEL_CARD.md.
    Example:  sparsealign pretrain --preset micro --json
    """
    from transformers.utils import logging as hf_logging

    from sparsealign.models.micro import get_recipe
    from sparsealign.models.pretrain import ensure_family

    hf_logging.disable_progress_bar()  # per-shard save bars would bury the per-size progress lines

    size_list = [s.strip() for s in sizes.split(",") if s.strip()] if sizes else None
    recipe = get_recipe(preset, sizes=size_list, steps=steps, seed=seed, overrides=list(overrides))
    family = ensure_family(recipe, root=out_dir, force=force, eval_generated=not no_eval,
                           workers=workers)
    if as_json:
        out = family.to_dict()
        for m in out["members"]:
            m["metrics"] = {k: v for k, v in m["metrics"].items() if k not in ("loss_curve", "size")}
        print(json.dumps(out, indent=2))
        return
    for m in family.members:
        met = m.metrics
        gen = met.get("generated_pass@1")
        gen_text = "" if gen is None else f"generated pass@1 {gen:.2f}  "
        how = "cached" if m.cached else "trained in {:.0f}s".format(met["train_wall_s"])
        click.echo(f"{m.name:10s} {m.params:>10,} params ({m.non_embedding_params:,} non-embedding)  "
                   f"loss {met['train_loss_final']:.3f} held-out {met['heldout_loss']:.3f}  {gen_text}{how}  {m.path}")
    sys.stdout.flush()
