"""`sparsealign eval preference`: reward accuracy, margins, preference divergence, flips and KL on held-out pairs."""

from __future__ import annotations

import json

import click

from sparsealign.align.config import METHODS
from sparsealign.models.options import loader_options
from sparsealign.sparse.options import sparsity_options, sparsity_spec


@click.command("preference")
@click.option("--model", "model_path", required=True, metavar="PATH", help="Aligned (or sparsified) model to evaluate.")
@click.option("--ref-model", "ref_path", default=None, metavar="PATH",
              help="Reference model: required for DPO/RDPO rewards (default: the one the model's "
                   "sparsealign_alignment.json names) and for --kl-samples.")
@click.option("--method", type=click.Choice(METHODS), required=True,
              help="Whose implicit reward to use: DPO beta*log(pi/pi_ref), SimPO beta/|y|*log pi, ORPO log-odds.")
@click.option("--data", "data", required=True, metavar="FILE",
              help="Held-out preference pairs (any format `data inspect` reads; relative to the data directory).")
@click.option("--split", default=None, help="Pick a split of the file (its own split column, or train/eval).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N records.")
@click.option("--beta", type=float, default=None,
              help="Reward scale (default: the beta in the model's sparsealign_alignment.json, written when it was "
                   "aligned here; else DPO 0.1, SimPO 2.0; ORPO uses none).")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Temperature of p_h = sigma((s_w - s_l)/tau) for pairs that carry scores.")
@sparsity_options()
@click.option("--baseline-model", "baseline_path", default=None, metavar="PATH",
              help="The dense model this (sparsified) model is compared with: adds flip rate and flip divergence "
                   "(with --sparsity it defaults to --model itself, dense).")
@click.option("--kl-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sample this many completions from --model to estimate KL(pi || pi_ref).")
@click.option("--kl-max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=512, show_default=True,
              help="Prompt + response tokens kept (the prompt is cut from the left, as in training).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the confidence intervals.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default=None, metavar="RUN",
              help="Write runs/RUN/eval/preference/{summary.json,records.parquet}; a finished rerun is skipped.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the per-pair table here (.parquet or .jsonl).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the summary) on stdout.")
@loader_options
def preference_command(model_path, ref_path, method, data, split, limit, beta, tau, sparsity, mode, prefill,
                       baseline_path, kl_samples,
                       kl_max_new_tokens, max_length, batch_size, n_resamples, seed, device, dtype, name, out_path,
                       as_json, loader) -> None:
    """Preference metrics of a model on held-out pairs, each with a bootstrap CI.

    \b
    Examples:
      sparsealign eval preference --model runs/x/align/model --ref-model base --method dpo \\
          --data hh-rlhf/helpful-base/test.jsonl.gz --limit 500 --json
      sparsealign eval preference --model M --sparsity M/sparsity --mode dynamic --method simpo --data D --json
      (flips are counted against --model run dense, or against --baseline-model)
    """
    from sparsealign.align.config import facts
    from sparsealign.align.sidecar import read_record
    from sparsealign.data.preference import load_pairs
    from sparsealign.errors import UserError

    record = read_record(model_path)  # a model aligned here names its reference and β beside it
    ref_path = ref_path or (record.reference if record is not None and record.method == method else None)
    if facts(method).needs_reference and ref_path is None:
        raise UserError(f"--method {method} needs --ref-model (its reward is beta*log(pi/pi_ref))")
    if kl_samples and ref_path is None:
        raise UserError("--kl-samples needs --ref-model (KL is measured against the reference)")
    pairs = load_pairs(data, split=split, limit=limit).pairs  # bad input fails here: before torch, before any model
    from sparsealign.evaluate.preference.run import PreferenceRunConfig, run_preference

    cfg = PreferenceRunConfig(model=model_path, ref_model=ref_path, baseline_model=baseline_path,
                              sparsity=sparsity_spec(sparsity, mode, prefill), method=method,
                              data=data, split=split, limit=limit, beta=beta, tau=tau, kl_samples=kl_samples,
                              kl_max_new_tokens=kl_max_new_tokens, max_length=max_length, batch_size=batch_size,
                              n_resamples=n_resamples, seed=seed, device=device, dtype=dtype, **loader)
    summary = run_preference(cfg, name=name, out_path=out_path, pairs=pairs)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    sp = summary.get("sparsity")
    how = f", {sp['mode']} sparsity realized {sp['realized_sparsity']:.3f}" if sp else ", dense"
    click.echo(f"{summary['method']} on {summary['n_pairs']} pairs (beta={summary['beta']}{how})")
    run = f"sparse ({sp['mode']})" if sp else "dense"
    sections = [(f"[{run}] ", summary["metrics"])]
    if summary.get("dense"):  # the dense baseline was scored too: its metrics beside the sparse ones
        sections.append((f"[dense: {summary.get('baseline_model') or model_path}] ", summary["dense"]))
    sections.append(("[flip vs dense baseline] ", summary.get("flip") or {}))
    if summary.get("kl"):
        sections.append((f"[{run}] ", {"kl": summary["kl"]}))
    for prefix, block in sections:
        for key, ci in block.items():
            if isinstance(ci, dict) and "low" in ci:
                click.echo(f"{prefix}{key:<24} {ci['estimate']:.4f}  [{ci['low']:.4f}, {ci['high']:.4f}]")


def register(cli: click.Group) -> None:
    cli.commands["eval"].add_command(preference_command)
