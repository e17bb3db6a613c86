"""`sparsealign align`: preference-align a causal LM with DPO, ORPO, SimPO or a rationale variant."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from sparsealign.align.config import METHODS, RATIONALE_METHODS


@click.command("align", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--method", type=click.Choice(METHODS), default=None,
              help=f"Loss: {', '.join(m for m in METHODS if m not in RATIONALE_METHODS)}, or the rationale variants "
                   f"{'/'.join(RATIONALE_METHODS)} (need a `rationale` per pair).")
@click.option("--model", "model", default=None, help="Local directory or hub id of a causal LM (AutoModelForCausalLM).")
@click.option("--data", default=None, help="Preference pairs: a file (relative names resolve in the data dir) or hub id.")
@click.option("--eval-data", default=None, help="Held-out pairs evaluated at start and end (reward accuracy, margins).")
@click.option("--name", default="align", show_default=True, help="Run directory name under the runs dir.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file with AlignConfig fields (see docs/align.md).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set beta=0.2 --set lora.r=8 (repeatable).")
@click.option("--restart", is_flag=True, help="Discard runs/<name> before starting.")
@click.option("--dry-run", is_flag=True, help="Validate the config and the pairs files, print the resolved config "
              "(YAML; with --json one JSON object) and exit without loading a model.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as one JSON object on stdout.")
def align(method, model, data, eval_data, name, config_path, overrides, restart, dry_run, as_json) -> None:
    """Align --model on --data with --method; writes runs/<name>/align/<cell>/{model,metrics.json}.

    \b
    Reference log-probs (dpo/rdpo) are computed once and cached; orpo/simpo/rorpo/rsimpo never load a reference.
    Re-running a finished cell prints its metrics; an interrupted one resumes from its last checkpoint.
    Multi-GPU: accelerate launch --config_file configs/accelerate/ddp.yaml -m sparsealign.cli align ...
    """
    from sparsealign.align.config import AlignConfig
    from sparsealign.config import load_config

    base = {k: v for k, v in {"method": method, "model": model, "data": data, "eval_data": eval_data}.items() if v}
    cfg = load_config(AlignConfig, config_path, overrides, base=base)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    from sparsealign.align.inputs import checked_pairs

    if dry_run:
        _dry_run(cfg, as_json)
        return
    pairs, eval_pairs = checked_pairs(cfg)  # bad data fails here, before torch is imported
    from sparsealign.align.engine import run_align
    from sparsealign.ledger import Ledger
    from sparsealign.rundir import RunDir
    from sparsealign.settings import runs_dir

    with redirect:  # the Trainer prints its logs on stdout; --json keeps stdout for the result
        if main_rank:
            run = RunDir.open(name, "align", cfg, restart=restart)
        else:  # other ranks never touch the run dir's config or ledger (rank 0 may be deleting it for --restart)
            run = RunDir(root=runs_dir() / name, ledger=Ledger(":memory:"))
        try:
            metrics = run_align(cfg, run, pairs=pairs, eval_pairs=eval_pairs, bar=True)
        finally:
            run.close()
    if not main_rank:
        return
    out_dir = run.root / "align" / cfg.cell_name
    result = {**metrics, "run_dir": str(run.root), "model_dir": str(out_dir / "model")}
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
        return
    click.echo(f"aligned {cfg.model} with {cfg.method} -> {out_dir / 'model'}")
    for key in ("train_loss", "eval_start_rewards/accuracies", "eval_rewards/accuracies", "eval_rewards/margins",
                "n_truncated", "train_samples_per_second"):
        if key in metrics:
            click.echo(f"  {key}: {metrics[key]}")


def _dry_run(cfg, as_json: bool) -> None:
    """Validate the config, and the pairs when they are local files (a hub dataset is not fetched)."""
    from pathlib import Path

    from sparsealign.align.inputs import check_report_to, checked_pairs
    from sparsealign.settings import data_dir

    local = all(not f or Path(f).exists() or (data_dir() / f).exists() for f in (cfg.data, cfg.eval_data))
    pairs = checked_pairs(cfg)[0] if local else None
    check_report_to(cfg)
    what = f"{len(pairs)} pairs" if pairs is not None else "data not fetched (hub dataset)"
    result = {"valid": True, "pairs": len(pairs) if pairs is not None else None,
              "config": cfg.model_dump(mode="json", by_alias=True)}
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
        return
    import yaml

    click.echo(yaml.safe_dump(result["config"], sort_keys=False).rstrip())
    click.echo(f"config valid: {cfg.method} on {cfg.model}, {what} (dry run: nothing trained)")


def register(cli: click.Group) -> None:
    cli.add_command(align)
