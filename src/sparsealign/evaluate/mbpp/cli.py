"""`sparsealign eval mbpp`: MBPP pass@k of a model's generations, or of the dataset's reference solutions."""

from __future__ import annotations

import json
import sys

import click

from sparsealign.models.options import loader_options
from sparsealign.sparse.options import sparsity_options, sparsity_spec

EXTRACT_CHOICES = ("harness", "lenient")
FORMAT_CHOICES = ("lm-eval", "bigcode")
SPLIT_CHOICES = ("test", "validation", "train", "prompt")
# SamplingConfig's defaults (not imported: it brings torch, and --help stays light); a test holds them equal
MAX_NEW_TOKENS, BATCH_SIZE = 256, 32


@click.command("mbpp")
@click.option("--solutions", type=click.Choice(["reference"]), default=None,
              help="Run the dataset's own reference solutions instead of a model (checks the data and the sandbox).")
@click.option("--model", "model_path", default=None, metavar="PATH",
              help="Model whose generations are evaluated: a save_pretrained directory, hub id, PEFT adapter folder, "
                   ".gguf file or smollm2-135m-instruct.")
@click.option("--samples", "samples_path", default=None, metavar="FILE",
              help="Score generations made elsewhere: lm-eval --log_samples JSONL (mbpp task) or evalplus samples "
                   "JSONL ({task_id: Mbpp/N, solution|completion}); run here against the MBPP file's tests.")
@sparsity_options()
@click.option("--compare-dense", is_flag=True,
              help="With --sparsity: also run --model dense on the same tasks; report both and sparse - dense "
                   "(paired bootstrap CI over tasks, exact McNemar p).")
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default="test", show_default=True,
              help="Standard MBPP split by task id (test = tasks 11-510).")
@click.option("--data", "data_path", default=None, metavar="FILE",
              help="MBPP file (default mbpp/mbpp.jsonl in the data directory; sanitized-mbpp.json also works).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N tasks of the split.")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default="lm-eval", show_default=True,
              help="Prompt format: lm-evaluation-harness 3-shot [BEGIN]/[DONE], or bigcode zero-shot docstring.")
@click.option("--shots", type=click.IntRange(0, 3), default=3, show_default=True,
              help="lm-eval examples (tasks 2, 3, 4) before the query; 0 for models trained on the bare query "
                   "(the embedded micro family).")
@click.option("--extract", "extraction", type=click.Choice(EXTRACT_CHOICES), default="harness", show_default=True,
              help="harness: run exactly what lm-eval (or bigcode, per --format) runs; lenient: the longest prefix "
                   "that parses, without top-level calls (more forgiving, not comparable to published numbers).")
@click.option("--n", type=click.IntRange(min=1), default=1, show_default=True, help="Samples per problem.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Sampling temperature; 0 = greedy (then --n must be 1).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Nucleus sampling mass.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=MAX_NEW_TOKENS, show_default=True,
              help="Tokens per completion at most (lm-eval's max_gen_toks).")
@click.option("--batch-size", type=click.IntRange(min=1), default=BATCH_SIZE, show_default=True,
              help="Greedy: rows decoded at once (a finished row is replaced by a waiting prompt); sampling: prompts "
                   "per generate call.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling and bootstrap seed.")
@click.option("--k", "ks", type=click.IntRange(min=1), multiple=True, default=(1,), show_default=True,
              help="pass@k to report (repeatable; k <= n).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Wall-clock seconds per test program.")
@click.option("--memory-mb", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Address-space limit per test program.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Sandbox worker processes.")
@click.option("--name", default=None, metavar="RUN",
              help="Record results in runs/RUN/eval/mbpp/ (summary.json, records.parquet, ledger); reruns resume.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the per-sample records table here (.parquet or .jsonl).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the summary) on stdout.")
@loader_options
def mbpp_command(solutions, model_path, samples_path, sparsity, mode, prefill, compare_dense, split, data_path, limit,
                 fmt, shots,
                 extraction, n, temperature, top_p, max_new_tokens,
                 batch_size, seed, ks, timeout_s, memory_mb, workers, device, dtype, name, out_path, as_json, loader) -> None:
    """MBPP pass@k: generate with --model (or take --solutions reference), run every program in the sandbox.

    \b
    Examples:
      sparsealign eval mbpp --solutions reference --split test --json
      sparsealign eval mbpp --model runs/x/align/model --split test --limit 50 --json
      sparsealign eval mbpp --model PATH --format bigcode --n 10 --temperature 0.8 --k 1 --k 10 --name run1
      sparsealign eval mbpp --model PATH --sparsity PATH/sparsity --mode dynamic --limit 50 --json
      sparsealign eval mbpp --samples lm_eval_out/samples_mbpp.jsonl --json
    """
    from sparsealign.errors import UserError
    from sparsealign.settings import resolve_data_path

    if sum(x is not None for x in (solutions, model_path, samples_path)) != 1:
        raise UserError("pass exactly one of --model PATH, --samples FILE or --solutions reference")
    if compare_dense and not sparsity:
        raise UserError("--compare-dense compares against a sparse run: add --sparsity DIR")
    if sparsity and model_path is None:
        raise UserError("--sparsity runs a model: add --model PATH (the model the artifacts were calibrated on)")
    for path in (samples_path, data_path):  # a missing input fails here, before torch is imported or a model loads
        if path is not None:
            resolve_data_path(path)
    from sparsealign.evaluate.mbpp.run import MbppRunConfig, run_mbpp

    try:
        cfg = MbppRunConfig.model_validate({
            "solutions": solutions, "model": model_path, "samples": samples_path,
            "sparsity": sparsity_spec(sparsity, mode, prefill), "compare_dense": compare_dense, "split": split,
            "data": data_path, "limit": limit, "device": device, "dtype": dtype, **loader,
            "eval": {"format": fmt, "shots": shots, "extract": extraction, "ks": sorted(set(ks)), "timeout_s": timeout_s, "memory_mb": memory_mb,
                     "workers": workers, "seed": seed,
                     "sampling": {"n": n, "temperature": temperature, "top_p": top_p,
                                  "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed}},
        })
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        msg = errors()[0]["msg"] if callable(errors) else str(exc)
        raise UserError(msg.removeprefix("Value error, ")) from None
    summary = run_mbpp(cfg, name=name, out_path=out_path, progress=not as_json)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        _print_human(summary)


def _print_human(summary: dict) -> None:
    total, passed = summary.get("total", 0), summary.get("passed", 0)
    how = f" (extract {summary['extract']})" if summary.get("extract") else ""
    sp = summary.get("sparsity")
    run = f"sparse ({sp['mode']}): " if sp else ""  # under sparsity every line names its run (dense is the other)
    click.echo(f"{run}passed {passed}/{total} problems{how}")
    if summary.get("sparse_minus_dense"):
        d, diff = summary["dense"], summary["sparse_minus_dense"]
        click.echo(f"dense: passed {d['passed']}/{d['total']}")
        click.echo(f"sparse - dense: {diff['estimate']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] "
                   f"({diff['test']} p={diff['p']:.3g})")
    if sp:
        click.echo(f"sparsity: {sp['mode']} (prefill {sp['prefill']}), realized {sp['realized_sparsity']:.3f} "
                   f"(target {sp['target_sparsity']})")
    for key, value in sorted(summary.items()):
        if key.startswith("pass@") and not key.endswith("_ci"):
            ci = summary.get(f"{key}_ci", {})
            click.echo(f"{run}{key} = {value:.4f}  [{ci.get('low', value):.4f}, {ci.get('high', value):.4f}] "
                       f"({ci.get('method', '')})")
    if summary.get("failed_task_ids") is not None and len(summary["failed_task_ids"]) <= 20:
        click.echo(f"failed task ids: {summary['failed_task_ids']}")
    for defect in summary.get("dataset_defects", []):
        print(f"dataset defect: task {defect['task_id']}: {defect['error']}", file=sys.stderr)
    if summary.get("records"):
        click.echo(f"records: {summary['records']}")


@click.command("lm-eval-tasks")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (path, tasks) on stdout.")
def lm_eval_tasks_command(as_json: bool) -> None:
    """Print the lm-eval task directory shipped with sparsealign, for `lm_eval --include_path`.

    Its `mbpp` is lm-eval's mbpp offline: MBPP from the data directory, programs run in our sandbox (no hub, no
    HF_ALLOW_CODE_EVAL, no --confirm_run_unsafe_code); it takes the place of the built-in `mbpp`.

    \b
    Example:
      lm_eval --model sparsealign --model_args pretrained=smollm2-135m-instruct \\
              --include_path "$(sparsealign eval lm-eval-tasks)" --tasks mbpp
    """
    from sparsealign.evaluate.lm_eval_tasks import TASKS_DIR, task_names
    from sparsealign.output import emit

    emit({"path": str(TASKS_DIR), "tasks": task_names()}, as_json, [str(TASKS_DIR)])


def register(cli: click.Group) -> None:
    cli.commands["eval"].add_command(mbpp_command)
    cli.commands["eval"].add_command(lm_eval_tasks_command)
