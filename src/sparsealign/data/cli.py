"""`sparsealign data inspect` and `sparsealign data prepare` (stdlib + click at import time; no torch)."""

from __future__ import annotations

import json
from typing import Any

import click

from sparsealign.data.formats import FORMATS

ALL_FORMATS = (*FORMATS, "mbpp", "mbpp-sanitized")


def _inspect(source: str, fmt: str | None, split: str | None, strict: bool, skip_invalid: bool,
             eval_fraction: float, seed: int) -> dict[str, Any]:
    from pathlib import Path

    from sparsealign.data.mbpp.tasks import MBPP_FORMATS, is_mbpp_source, load_mbpp, mbpp_split_counts
    from sparsealign.data.preference import load_pairs, pair_example, resolve_source
    from sparsealign.data.splits import split_pairs

    where = resolve_source(source)
    if fmt in MBPP_FORMATS or (fmt is None and isinstance(where, Path) and is_mbpp_source(where)):
        if not isinstance(where, Path):
            raise click.UsageError("MBPP sources must be local files")
        tasks = load_mbpp(where)
        chosen = load_mbpp(where, split=split) if split else tasks
        return {"format": tasks[0].source, "path": str(where), "count": len(tasks), "valid": len(chosen),
                "skipped": {}, "duplicates": 0, "splits": mbpp_split_counts(tasks), "split": split,
                "example": chosen[0].to_dict() if chosen else None}
    load = load_pairs(source, format=fmt, strict=strict, skip_invalid=skip_invalid, split=split)
    splits = load.file_splits()
    splits_from = "file"
    if splits is None:
        train, evaluation = split_pairs(load.pairs, eval_fraction, seed)
        splits, splits_from = {"train": len(train), "eval": len(evaluation)}, f"split_pairs(eval_fraction={eval_fraction}, seed={seed})"
    return {"format": load.format, "path": load.path, "count": load.count, "valid": load.valid,
            "skipped": load.skipped, "duplicates": load.duplicates, "splits": splits, "splits_from": splits_from,
            "split": split, "scores": load.score_stats(), "example": pair_example(load.pairs[0])}


def _print_report(rep: dict[str, Any]) -> None:
    click.echo(f"source:     {rep['path']}")
    click.echo(f"format:     {rep['format']}")
    click.echo(f"records:    {rep['count']}")
    click.echo(f"valid:      {rep['valid']}" + (f" (split {rep['split']})" if rep.get("split") else ""))
    skipped = ", ".join(f"{k} {v}" for k, v in rep["skipped"].items()) or "none"
    click.echo(f"skipped:    {skipped}")
    click.echo(f"duplicates: {rep['duplicates']}")
    source = f"  [{rep['splits_from']}]" if rep.get("splits_from") else ""
    click.echo("splits:     " + ", ".join(f"{k} {v}" for k, v in rep["splits"].items()) + source)
    scores = rep.get("scores")
    if scores and scores["with_scores"]:
        click.echo(f"scores:     {scores['with_scores']} pairs scored, {scores['ties']} ties, "
                   f"{scores['chosen_lower']} with chosen scored lower")
    click.echo("example:")
    click.echo(json.dumps(rep["example"], indent=2, ensure_ascii=False))


def register(cli: click.Group) -> None:
    group = cli.commands["data"]
    assert isinstance(group, click.Group)

    @group.command("inspect", short_help="Report a data file's format, counts, skipped rows and one example.")
    @click.argument("source", metavar="PATH_OR_ID")
    @click.option("--format", "fmt", type=click.Choice(ALL_FORMATS), default=None,
                  help="Force the format instead of detecting it from the first record.")
    @click.option("--split", default=None,
                  help="Only this split: MBPP prompt/test/validation/train; a hub split; a value of the file's "
                       "`split` column; else train/eval of the default split.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object (format, count, valid, skipped, "
                                                          "duplicates, splits, example) on stdout.")
    @click.option("--strict", is_flag=True, help="Degenerate pairs (identical, empty, prompt mismatch) are errors.")
    @click.option("--skip-invalid", is_flag=True, help="Skip and count broken rows instead of stopping at the first.")
    @click.option("--eval-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
                  show_default=True, help="Eval share used for the per-split counts of files without splits.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of that train/eval split.")
    def inspect(source: str, fmt: str | None, split: str | None, as_json: bool, strict: bool, skip_invalid: bool,
                eval_fraction: float, seed: int) -> None:
        """Read PATH_OR_ID and report its detected format, record count, usable pairs, per-split counts,
        skipped rows and duplicates by reason, and one normalised example.

        \b
        PATH_OR_ID is a file (relative names resolve against --data-dir, e.g.
        hh-rlhf/helpful-base/test.jsonl.gz), or a Hugging Face dataset id such as Anthropic/hh-rlhf.
        Formats: hh-rlhf, ultrafeedback, orca-intel, openai-preference, trl-explicit, trl-implicit, generic
        (JSONL/JSON/CSV/Parquet with prompt, chosen, rejected[, rationale]), mbpp, mbpp-sanitized;
        optionally compressed (.gz, .bz2, .xz). A folder of such files reads each as a split.
        """
        rep = _inspect(source, fmt, split, strict, skip_invalid, eval_fraction, seed)
        if as_json:
            click.echo(json.dumps(rep, ensure_ascii=False))
        else:
            _print_report(rep)

    @group.command("prepare", short_help="Normalise and split sources into runs/<name>/data/ (resumable).")
    @click.option("--name", required=True, help="Run name: files go to runs/<name>/data/<source-slug>/.")
    @click.argument("sources", nargs=-1, metavar="SOURCE...")
    @click.option("--eval-fraction", type=float, default=None, help="Share of pairs held out for eval (default 0.1).")
    @click.option("--seed", type=int, default=None, help="Seed of the deterministic train/eval split (default 0).")
    @click.option("--format", "fmt", type=click.Choice(ALL_FORMATS), default=None,
                  help="Force the format of every source.")
    @click.option("--strict", is_flag=True, help="Degenerate pairs are errors.")
    @click.option("--skip-invalid", is_flag=True, help="Skip and count broken rows.")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="YAML file with the data config (sources, eval_fraction, seed, format, strict, skip_invalid).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
    @click.option("--restart", is_flag=True, help="Discard runs/<name> and start over.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the per-source results.")
    def prepare(name: str, sources: tuple[str, ...], eval_fraction: float | None, seed: int | None,
                fmt: str | None, strict: bool, skip_invalid: bool, config_path: str | None,
                overrides: tuple[str, ...], restart: bool, as_json: bool) -> None:
        """Normalise and split each SOURCE into runs/<name>/data/<slug>/.

        \b
        Preference sources give train.jsonl and eval.jsonl (generic format) and stats.json; MBPP files give
        prompt/test/validation/train.jsonl and stats.json.  One ledger cell per source: a re-run (also after a
        crash or kill) skips the sources already done; a changed config is refused (use a new --name or --restart).
        """
        from sparsealign.config import load_config
        from sparsealign.data.prepare import PrepareConfig, run_prepare

        base: dict[str, Any] = {"sources": list(sources), "strict": strict, "skip_invalid": skip_invalid}
        for key, value in (("eval_fraction", eval_fraction), ("seed", seed), ("format", fmt)):
            if value is not None:
                base[key] = value
        cfg = load_config(PrepareConfig, config_path, overrides, base=base)
        result = run_prepare(name, cfg, restart=restart)
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            for slug, cell in result["cells"].items():
                click.echo(f"{slug}: {cell['dir']} ({'written' if cell['ran'] else 'already done'}; "
                           f"valid {cell.get('valid')}, splits {cell.get('splits')})")
