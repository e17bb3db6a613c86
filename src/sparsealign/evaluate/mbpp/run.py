"""One MBPP evaluation as a resumable unit: load tasks (and the model), evaluate in chunks, write the run directory.

With a run name, results go to runs/<name>/eval/mbpp/: every finished chunk of tasks is written atomically to
parts/ as soon as it is done, so an interrupted run resumes at the first missing chunk; at the end records.parquet
and summary.json are written and the ledger cell `eval-mbpp/<source>` is marked done (a rerun returns it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sparsealign.config import StrictModel, config_hash
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.records import MbppTask
from sparsealign.evaluate.mbpp.evaluator import (
    MbppEvalConfig,
    evaluate_mbpp,
    run_reference,
    save_records,
    summarize_generations,
)
from sparsealign.evaluate.tables import load_table
from sparsealign.io import atomic_write_json
from sparsealign.models.loading import load_model_and_tokenizer
from sparsealign.rundir import RunDir

log = logging.getLogger("sparsealign.evaluate")
STAGE = "eval-mbpp"
LOAD_FIELDS = {"device", "dtype", "revision", "trust_remote_code", "device_map"}  # passed to the model loader


class MbppRunConfig(StrictModel):
    solutions: Literal["reference"] | None = None
    model: str | None = None
    split: Literal["test", "validation", "train", "prompt"] = "test"
    data: str | None = None
    limit: int | None = Field(None, ge=1)
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None  # hub ids: branch, tag or commit
    trust_remote_code: bool = False
    device_map: str | None = None  # "auto": accelerate spreads a model too big for one device
    chunk_size: int = Field(50, ge=1, description="tasks per resumable chunk")
    eval: MbppEvalConfig = Field(default_factory=MbppEvalConfig)


def _source_label(cfg: MbppRunConfig) -> str:
    return "reference" if cfg.solutions else Path(cfg.model or "model").name


def _evaluate(cfg: MbppRunConfig, parts_dir: Path | None, progress: bool) -> tuple[dict, list[dict]]:
    tasks = load_mbpp(cfg.data, split=cfg.split)[: cfg.limit]
    if cfg.solutions == "reference":
        return run_reference(tasks, cfg.eval)

    shots = load_mbpp(cfg.data, split="prompt") if cfg.eval.format == "lm-eval" else None
    model, tok = load_model_and_tokenizer(cfg.model or "", **cfg.model_dump(include=LOAD_FIELDS))
    return evaluate_loaded(cfg, model, tok, tasks, parts_dir=parts_dir, shots=shots, progress=progress)


def evaluate_loaded(cfg: MbppRunConfig, model, tok, tasks: Sequence[MbppTask], *, parts_dir: Path | None = None,
                    shots: Sequence[MbppTask] | None = None, progress: bool = False) -> tuple[dict, list[dict]]:
    """The verb's evaluation of an already loaded (possibly sparsified) model: `cfg.chunk_size` tasks at a time,
    each finished chunk kept in `parts_dir` when given.  The study calls this with its own model and tasks."""
    records: list[dict[str, Any]] = []
    chunks = [tasks[i: i + cfg.chunk_size] for i in range(0, len(tasks), cfg.chunk_size)]
    for idx, chunk in enumerate(chunks):
        part = parts_dir / f"part-{idx:04d}.jsonl" if parts_dir is not None else None
        if part is not None and part.exists():
            records += load_table(part)
            continue
        _, chunk_records = evaluate_mbpp(model, tok, chunk, cfg.eval, shots=shots, progress=progress)
        if part is not None:
            save_records(chunk_records, part)
        records += chunk_records
        log.info("mbpp chunk %d/%d done", idx + 1, len(chunks))
    return summarize_generations(records, cfg.eval), records


def run_mbpp(cfg: MbppRunConfig, *, name: str | None = None, out_path: str | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate and return the summary (with `records` naming the table when one was written)."""
    label = _source_label(cfg)
    if name is None:
        summary, records = _evaluate(cfg, None, progress)
    else:
        run = RunDir.open(name, STAGE, cfg)
        out_dir = run.path("eval", "mbpp", "summary.json").parent
        holder: dict[str, Any] = {}

        def cell() -> tuple[dict, dict]:
            summary, records = _evaluate(cfg, out_dir / "parts", progress)
            table = save_records(records, out_dir / "records.parquet")
            summary["records"] = str(table)
            atomic_write_json(out_dir / "summary.json", summary)
            holder["records"] = records
            return summary, {"records": table, "summary": out_dir / "summary.json"}

        try:
            row, _ = run.ledger.run_cell(STAGE, label, config_hash(cfg), cell)
        finally:
            run.close()
        summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8")) if not holder else row.metrics
        records = holder.get("records")
        if records is None and out_path:
            records = load_table(out_dir / "records.parquet")
    if out_path:
        summary["records"] = str(save_records(records, out_path))
    summary.update(source=label, split=cfg.split)
    return summary
