"""`data prepare`: read each source once, split it, and write the normalised files into the run directory.

    runs/<name>/data/<slug>/train.jsonl, eval.jsonl, stats.json        (preference sources)
    runs/<name>/data/<slug>/{prompt,test,validation,train}.jsonl, ...  (MBPP sources)

One ledger cell per source (stage `data`, cell = slug).  Each source directory is written as a whole (temp dir +
rename), so a crash or SIGKILL leaves finished sources intact and no half-written one; a re-run skips done cells.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field

from sparsealign.config import StrictModel, config_hash
from sparsealign.data.formats import FORMATS
from sparsealign.data.mbpp.tasks import MBPP_FORMATS, is_mbpp_source, load_mbpp, mbpp_split_counts
from sparsealign.data.preference import load_pairs, resolve_source, write_pairs_jsonl
from sparsealign.data.records import mbpp_split_of
from sparsealign.data.splits import split_pairs
from sparsealign.errors import UserError
from sparsealign.io import atomic_dir, atomic_write_json, atomic_write_text
from sparsealign.rundir import RunDir
from sparsealign.settings import data_dir

STAGE = "data"
_STRIP = re.compile(r"(\.gz|\.bz2|\.xz|\.lzma)?$")
_EXT = re.compile(r"\.(jsonl|json|csv|parquet|pq|ndjson)$")


FormatName = Literal["hh-rlhf", "ultrafeedback", "orca-intel", "openai-preference", "generic", "trl-explicit",
                     "trl-implicit", "mbpp", "mbpp-sanitized"]
assert set(get_args(FormatName)) == set(FORMATS + MBPP_FORMATS)


class PrepareConfig(StrictModel):
    sources: list[str] = Field(default_factory=list, description="data files (relative to the data dir) or hub ids")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of preference pairs held out for eval")
    seed: int = Field(0, description="seed of the deterministic train/eval split")
    format: FormatName | None = Field(None, description="force a format instead of detecting it")
    strict: bool = Field(False, description="degenerate pairs are errors instead of skipped")
    skip_invalid: bool = Field(False, description="skip and count broken rows instead of stopping")
    data_dir: str | None = Field(None, description="data directory (--data-dir and $SPARSEALIGN_DATA_DIR win)")

    def data_root(self) -> Path:
        return data_dir(config_value=self.data_dir)


def slug_of(source: str) -> str:
    """`hh-rlhf/helpful-base/test.jsonl.gz` -> `hh-rlhf-helpful-base-test`."""
    name = _EXT.sub("", _STRIP.sub("", source.strip("/")))
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.") or "source"


def slugs_for(sources: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for src in sources:
        if src in out:
            raise UserError(f"source {src!r} is given twice", hint="list each source once")
        slug = base = slug_of(src)
        n = 2
        while slug in out.values():
            slug, n = f"{base}-{n}", n + 1
        out[src] = slug
    return out


def _prepare_preference(source: str, cfg: PrepareConfig, tmp: Path) -> dict[str, Any]:
    load = load_pairs(source, format=cfg.format, strict=cfg.strict, skip_invalid=cfg.skip_invalid,
                      data_root=cfg.data_root())
    train, evaluation = split_pairs(load.pairs, cfg.eval_fraction, cfg.seed)
    write_pairs_jsonl(train, tmp / "train.jsonl")
    write_pairs_jsonl(evaluation, tmp / "eval.jsonl")
    return {"kind": "preference", "source": source, "path": load.path, "format": load.format, "count": load.count,
            "valid": load.valid, "skipped": load.skipped, "duplicates": load.duplicates,
            "splits": {"train": len(train), "eval": len(evaluation)}, "scores": load.score_stats(),
            "eval_fraction": cfg.eval_fraction, "seed": cfg.seed}


def _prepare_mbpp(source: str, path: Path, tmp: Path) -> dict[str, Any]:
    tasks = load_mbpp(path)
    counts = mbpp_split_counts(tasks)
    for split in counts:
        lines = [json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in tasks if mbpp_split_of(t.task_id) == split]
        atomic_write_text(tmp / f"{split}.jsonl", "".join(lines))
    fmt = tasks[0].source if tasks else "mbpp"
    return {"kind": "mbpp", "source": source, "path": str(path), "format": fmt, "count": len(tasks),
            "valid": len(tasks), "skipped": {}, "duplicates": 0, "splits": counts}


def prepare_source(source: str, cfg: PrepareConfig, out_dir: Path) -> dict[str, Any]:
    """Read one source and write its directory atomically; returns the stats (also written as stats.json)."""
    where = resolve_source(source, cfg.data_root())
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(out_dir) as tmp:
        is_mbpp = cfg.format in MBPP_FORMATS or (
            cfg.format is None and isinstance(where, Path) and is_mbpp_source(where))
        if is_mbpp:
            assert isinstance(where, Path)
            stats = _prepare_mbpp(source, where, tmp)
        else:
            stats = _prepare_preference(source, cfg, tmp)
        atomic_write_json(tmp / "stats.json", stats)
    return stats


def run_prepare(name: str, cfg: PrepareConfig, *, restart: bool = False,
                echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prepare every source of `cfg` into runs/<name>/data/, one resumable ledger cell per source."""
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    if not cfg.sources:
        raise UserError("no source given", hint="e.g. sparsealign data prepare --name r hh-rlhf/helpful-base/test.jsonl.gz")
    slugs = slugs_for(cfg.sources)
    for src in cfg.sources:  # a missing file is reported before anything is written
        resolve_source(src, cfg.data_root())
    run = RunDir.open(name, STAGE, cfg, restart=restart)
    cells: dict[str, Any] = {}
    try:
        for src, slug in slugs.items():
            out_dir = run.root / STAGE / slug
            cell_cfg = {"source": src, **cfg.model_dump(exclude={"sources"})}

            def work(src: str = src, out_dir: Path = out_dir) -> tuple[dict[str, Any], dict[str, Any]]:
                return prepare_source(src, cfg, out_dir), {"dir": out_dir}

            row, ran = run.ledger.run_cell(STAGE, slug, config_hash(cell_cfg), work)
            echo(f"data prepare: {slug}: {'done' if ran else 'already done, skipped'} "
                 f"(valid {row.metrics.get('valid')}, splits {row.metrics.get('splits')})")
            cells[slug] = {"source": src, "ran": ran, "dir": str(out_dir), **row.metrics}
    finally:
        run.close()
    return {"run": name, "root": str(run.root), "cells": cells}
