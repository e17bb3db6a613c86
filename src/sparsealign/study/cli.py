"""`sparsealign study` (run the whole grid), `study plan` (cells, memory, launch lines) and `study report`."""

from __future__ import annotations

import json
import sys

import click

PRESET_HELP = ("packaged study preset: default (micro family; measured 18.6 min on 2 idle cores, README), small, real "
               "(SmolLM2-135M-Instruct; 2.3-2.7 h on 2 idle cores, docs/study.md), paper (cluster)")


def _load(config: str | None, preset: str, overrides: tuple[str, ...]):
    from sparsealign.study.config import load_study_config

    return load_study_config(config, preset, list(overrides))


@click.group("study", invoke_without_command=True, context_settings={"max_content_width": 110})
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Study YAML: the fields it sets, over --preset's (see src/sparsealign/configs/study-*.yaml).")
@click.option("--preset", default="default", show_default=True, help=PRESET_HELP)
@click.option("--name", default=None, help="Run directory name under runs/ (default: the config's `name`).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set sparsity.targets=[0.5,0.9] (repeatable).")
@click.option("--only", multiple=True, metavar="CELL|STAGE", help="Run only these stages (pretrain, pairs, align, calibrate, eval) or cell ids from `study plan`, e.g. "
                   "eval:micro-xs/dpo/f1.000/dense/0.00 (repeatable); their dependencies must be done.")
@click.option("--restart", is_flag=True, help="Discard runs/<name> (every finished cell and output) and start again.")
@click.option("--dry-run", is_flag=True, help="Validate the config, expand the cells and exit (runs nothing).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout.")
@click.pass_context
def study(ctx: click.Context, config, preset, name, overrides, only, restart, dry_run, as_json) -> None:
    """Run the study: base models -> align (each method, nested data subsets) -> sparsify (static / dynamic /
    predictor thresholds at each target) -> evaluate (MBPP pass@1, preference accuracy and divergence, flips,
    realized sparsity, decode speed) -> scaling fits -> runs/<name>/report.{md,html} + results.parquet.

    With no options it runs the embedded default (micro family, no downloads). Re-running the same command
    resumes: finished cells are skipped; a changed config is refused (use --name or --restart). Cells run one
    after another by default; --set executor.kind=ray runs them as Ray tasks (a local Ray, or
    executor.address=auto on a started cluster).

    \b
    Examples:
      sparsealign study                                   # the embedded default
      sparsealign study --config my.yaml --set seed=1 --name seed1
      sparsealign study --preset paper plan               # cells, memory, launch lines; downloads nothing
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"config": config, "preset": preset, "overrides": overrides, "name": name}
        return
    from sparsealign.rundir import check_run_name
    from sparsealign.study.cells import expand, select_cells

    cfg = _load(config, preset, overrides)  # config, --only and --name errors before the heavy imports below
    select_cells(expand(cfg), list(only) or None)
    check_run_name(name or cfg.name)
    from sparsealign.report.outputs import write_outputs
    from sparsealign.study.runner import run_study

    if dry_run:
        from sparsealign.study.cells import expand

        count = len(expand(cfg))
        click.echo(json.dumps({"valid": True, "name": cfg.name, "cells": count}) if as_json else
                   f"config valid: study {cfg.name}, {count} cells (dry run: nothing run)")
        return
    summary = run_study(cfg, name=name, restart=restart, only=list(only) or None, progress=not as_json,
                        write=write_outputs)
    if as_json:
        from sparsealign.study.results import findings_of

        click.echo(json.dumps({**summary, "findings": findings_of(summary["run"])}))
    else:
        click.echo(f"study {summary['run']}: {summary['done']} cells run, {summary['skipped']} skipped (done "
                   f"before), {summary['failed']} failed")
        for key in ("results", "markdown", "html", "figures"):
            if key in summary:
                click.echo(f"  {key}: {summary[key]}")
    if summary["failed"]:
        sys.exit(1)


@study.command("plan")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", "plan_preset", default=None, help=f"{PRESET_HELP} (overrides the group's --preset)")
@click.option("--set", "plan_overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
@click.pass_context
def plan_cmd(ctx: click.Context, config_path, plan_preset, plan_overrides, as_json) -> None:
    """Print the cells, a memory estimate per cell and the launch commands (downloads nothing).

    CONFIG_PATH defaults to the group's --config / --preset, e.g. `sparsealign study plan --preset paper` or
    `sparsealign study --preset paper plan`.
    Memory uses rules of thumb (full fine-tune 16 B/param, LoRA, bf16 inference, +20% headroom).
    """
    from sparsealign.study.plan import launch_commands, plan

    opts = ctx.obj or {}
    if plan_preset:
        opts = {**opts, "preset": plan_preset}
    overrides = (*opts.get("overrides", ()), *plan_overrides)
    cfg = _load(config_path or opts.get("config"), opts.get("preset", "default"), overrides)
    result = plan(cfg)
    path = config_path or opts.get("config")
    source = f"--config {path}" if path else f"--preset {opts.get('preset', 'default')}"
    result["launch"] = launch_commands(source, cfg)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"study {result['name']}: {result['count']} cells {result['by_stage']}")
    for size, params in result["params"].items():
        click.echo(f"  {size}: {params:,.0f} params" if params else f"  {size}: params unknown")
    for row in result["cells"]:
        mem = _fmt_memory(row["memory_gib"])
        click.echo(f"  {row['cell']:<60} {mem}")
    click.echo("launch:")
    for cmd in result["launch"]:
        click.echo(f"  {cmd}")


def _fmt_memory(gib: float | None) -> str:
    if gib is None:
        return "? (unknown parameter count: set family.params)"
    return f"{gib:.1f} GiB" if gib >= 1 else f"{gib * 1024:.2f} MiB"


@study.command("report")
@click.option("--name", required=True, help="Run directory name under runs/.")
@click.option("--json", "as_json", is_flag=True, help="Print the output paths as one JSON object.")
def report_cmd(name: str, as_json: bool) -> None:
    """Rebuild results.parquet and report.{md,html} from a run's ledger (e.g. after a partial study)."""
    import yaml

    from sparsealign.errors import UserError
    from sparsealign.report.outputs import write_outputs
    from sparsealign.settings import runs_dir
    from sparsealign.study.config import ReportConfig, StudyConfig
    from sparsealign.study.layout import REPORT_SETTINGS, Study

    root = runs_dir() / name
    cfg_path = root / "config" / "study.yaml"
    if not cfg_path.exists():
        raise UserError(f"{cfg_path}: no study run named {name!r}", hint="run `sparsealign study --name NAME` first")
    cfg = StudyConfig.model_validate(yaml.safe_load(cfg_path.read_text()))
    report_path = root / REPORT_SETTINGS  # the primary contrasts etc. the run was started with
    if report_path.exists():
        cfg = cfg.model_copy(update={"report": ReportConfig.model_validate(json.loads(report_path.read_text()))})
    outputs = {k: str(v) for k, v in write_outputs(Study(cfg, root)).items()}
    click.echo(json.dumps(outputs) if as_json else "\n".join(f"{k}: {v}" for k, v in outputs.items()))


def register(cli: click.Group) -> None:
    cli.add_command(study)
