"""`sparsealign rationales generate`: fill the `rationale` column of a pairs file from an LLM or from test runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sparsealign.clients.options import endpoint_options, make_client
from sparsealign.output import emit
from sparsealign.sparse.options import sparsity_options, sparsity_spec

SOURCES = ("openai", "hf", "execution")


@click.command("generate")
@click.option("--data", "data", required=True, help="Pairs file (JSONL/JSON/CSV/Parquet, or a dataset name under the "
              "data dir).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output pairs JSONL with the `rationale` column filled. If it exists, its rationales are kept and "
                   "only missing ones are generated (resume).")
@click.option("--source", type=click.Choice(SOURCES), required=True,
              help="openai: any OpenAI-compatible chat endpoint; hf: a local Hugging Face causal LM; execution: "
                   "test outcomes of code pairs (no LLM).")
@click.option("--model", "model", default=None, help="Model name at the endpoint (openai) or a local path / hub id (hf).")
@endpoint_options
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0), help="Sampling temperature.")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1), help="Nucleus sampling.")
@click.option("--max-new-tokens", "--max-tokens", "max_tokens", default=256, show_default=True,
              type=click.IntRange(1), help="Maximum new tokens per rationale.")
@sparsity_options(what="the --source hf model")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Generation batch (hf).")
@click.option("--device", default="auto", show_default=True, help="Device for --source hf (auto, cpu, cuda, cuda:1).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1),
              help="Sandbox workers (execution).")
@click.option("--test-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds per test program (execution).")
@click.option("--memory-mb", default=1024, show_default=True, type=click.IntRange(64),
              help="Address-space limit per test program (execution).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N pairs.")
@click.option("--seed", default=0, show_default=True, help="Seed for the A/B order of the prompt and for sampling.")
@click.option("--save-every", default=50, show_default=True, type=click.IntRange(1),
              help="Rewrite the output after this many new rationales (and every 30 s).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout.")
def generate(data: str, out: str, source: str, model: str | None, temperature: float, top_p: float, max_tokens: int,
             sparsity: str | None, mode: str, prefill: str, batch_size: int, device: str, workers: int,
             test_timeout: float, memory_mb: int, limit: int | None, seed: int, save_every: int,
             as_json: bool, **endpoint: Any) -> None:
    """Generate a rationale (why the chosen response is preferred) for every pair that lacks one.

    \b
    Examples:
      sparsealign rationales generate --data pairs.jsonl --out pairs.rat.jsonl --source openai --model gpt-4o-mini
      sparsealign rationales generate --data pairs.jsonl --out r.jsonl --source openai \\
          --base-url http://127.0.0.1:8000/v1 --model my-vllm-model --api-key-env none
      sparsealign rationales generate --data pairs.jsonl --out r.jsonl --source hf --model Qwen/Qwen2.5-0.5B-Instruct
      sparsealign rationales generate --data code_pairs.jsonl --out r.jsonl --source execution
    """
    from sparsealign.align import rationales as R
    from sparsealign.data.preference import load_pairs, write_pairs_jsonl
    from sparsealign.errors import UserError
    out_path = Path(out)
    R.output_path_check(Path(data), out_path)
    if source in ("openai", "hf") and not model:
        raise UserError(f"--source {source} needs --model", hint="pass --model NAME (endpoint model or local path)")
    if sparsity and source != "hf":
        raise UserError(f"--sparsity runs a local model: it needs --source hf, not --source {source}")
    pairs = load_pairs(data, limit=limit).pairs
    reused = R.merge_existing(pairs, load_pairs(out_path, warn=False).pairs) if out_path.exists() else 0

    def save(ps: list) -> None:
        write_pairs_jsonl(ps, out_path)

    client = None
    if source == "openai":
        client = make_client(model, **endpoint)
        params = {"temperature": temperature, "max_tokens": max_tokens}
        if temperature > 0:
            params.update(top_p=top_p, seed=seed)
        generator, label = R.openai_generator(client, seed=seed, **params), f"openai:{model}"
        counts = R.fill_rationales(pairs, generator, source=label, save=save, save_every=save_every)
        client.close()
    elif source == "hf":
        from sparsealign.models.loading import load_model_and_tokenizer

        lm, tokenizer = load_model_and_tokenizer(model, device=device)
        spec = sparsity_spec(sparsity, mode, prefill)
        if spec is not None:
            from sparsealign.sparse.apply import apply_spec
            from sparsealign.sparse.spec import SparsitySpec

            apply_spec(lm, SparsitySpec(**spec))
        generator = R.hf_generator(lm, tokenizer, batch_size=batch_size, max_new_tokens=max_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed)
        label = f"hf:{model}" + (f"+{mode}-sparse" if sparsity else "")
        counts = R.fill_rationales(pairs, generator, source=label, save=save, save_every=save_every)
    else:
        from sparsealign.align.execution_rationales import execution_generator
        from sparsealign.sandbox.pool import SandboxPool

        with SandboxPool(workers=workers, timeout_s=test_timeout, memory_mb=memory_mb) as pool:
            generator = execution_generator(pool, where=data)
            counts = R.fill_rationales(pairs, generator, source="execution", save=save, save_every=save_every)

    summary = {
        "out": str(out_path), "source": source, "pairs": len(pairs),
        "with_rationale": sum(not R.missing_rationale(p) for p in pairs), "reused": reused, **counts,
    }
    if client is not None:
        summary.update(requests=client.stats.requests, retries=client.stats.retries,
                       cache_hits=client.stats.cache_hits)
    emit(summary, as_json, [f"wrote {out_path}: {summary['with_rationale']}/{len(pairs)} pairs with a rationale "
                            f"({counts['generated']} new, {reused} kept)"], human_to_stderr=True)


def register(cli: click.Group) -> None:
    """Add `rationales generate` to the shared `rationales` group."""
    cli.commands["rationales"].add_command(generate)  # type: ignore[attr-defined]
