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
from sparsealign.data.mbpp.prompts import make_format
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.records import MbppTask
from sparsealign.evaluate.mbpp.evaluator import (
    MbppEvalConfig,
    completion_record,
    evaluate_mbpp,
    run_records,
    run_reference,
    save_records,
    summarize_generations,
)
from sparsealign.evaluate.mbpp.samples import read_samples
from sparsealign.evaluate.tables import load_table
from sparsealign.io import atomic_write_json
from sparsealign.models.loading import load_model_and_tokenizer
from sparsealign.rundir import RunDir
from sparsealign.settings import resolve_data_path
from sparsealign.sparse.apply import apply_spec
from sparsealign.sparse.spec import SparsitySpec
from sparsealign.stats.paired import paired_difference

log = logging.getLogger("sparsealign.evaluate")
STAGE = "eval-mbpp"
LOAD_FIELDS = {"device", "dtype", "revision", "trust_remote_code", "device_map"}  # passed to the model loader


class MbppRunConfig(StrictModel):
    solutions: Literal["reference"] | None = None
    model: str | None = None
    samples: str | None = Field(None, description="score generations made elsewhere (lm-eval / evalplus JSONL)")
    sparsity: SparsitySpec | None = Field(None, description="run the model under activation sparsity; None = dense")
    compare_dense: bool = Field(False, description="with sparsity: also run the model dense on the same tasks and "
                                "report sparse - dense (paired CI, exact McNemar)")
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
    if cfg.solutions:
        return "reference"
    if cfg.samples:
        return f"samples:{Path(cfg.samples).name}"
    label = Path(cfg.model or "model").name
    return f"{label}+{cfg.sparsity.mode}" if cfg.sparsity else label


def _score_samples(cfg: MbppRunConfig) -> tuple[dict, list[dict]]:
    all_tasks = load_mbpp(cfg.data)
    fmt_name, samples = read_samples(resolve_data_path(cfg.samples or ""), all_tasks)
    fmt = make_format("lm-eval" if fmt_name == "lm-eval" else "bigcode", all_tasks)
    ecfg = cfg.eval.model_copy(update={"format": fmt.name})
    records = [completion_record(s["task"], s["sample"], s["completion"], fmt, ecfg, code=s["code"])
               for s in samples]
    summary, records = run_records(records, ecfg)
    summary.update(samples_format=fmt_name, n=max(r["sample"] for r in records) + 1)
    return summary, records


def _sparsity_summary(handle, spec: SparsitySpec) -> dict[str, Any]:
    stats = handle.stats()
    return {**spec.model_dump(), "realized_sparsity": stats.get("realized_sparsity"),
            "target_sparsity": handle.info.get("target_sparsity")}


def _evaluate(cfg: MbppRunConfig, parts_dir: Path | None, progress: bool) -> tuple[dict, list[dict]]:
    if cfg.samples:
        return _score_samples(cfg)
    tasks = load_mbpp(cfg.data, split=cfg.split)[: cfg.limit]
    if cfg.solutions == "reference":
        return run_reference(tasks, cfg.eval)

    shots = load_mbpp(cfg.data, split="prompt") if cfg.eval.format == "lm-eval" else None
    model, tok = load_model_and_tokenizer(cfg.model or "", **cfg.model_dump(include=LOAD_FIELDS))
    dense = None
    if cfg.sparsity is not None and cfg.compare_dense:  # dense first: the same model object, before patching
        dense = evaluate_loaded(cfg, model, tok, tasks, parts_dir=parts_dir / "dense" if parts_dir else None,
                                shots=shots, progress=progress)
    handle = apply_spec(model, cfg.sparsity) if cfg.sparsity is not None else None
    summary, records = evaluate_loaded(cfg, model, tok, tasks, parts_dir=parts_dir, shots=shots, progress=progress)
    if handle is not None:
        summary["sparsity"] = _sparsity_summary(handle, cfg.sparsity)
        handle.remove()
    if dense is not None:
        summary.update(dense_vs_sparse(dense[0], dense[1], records, cfg))
    return summary, records


def _task_passed(records: Sequence[dict[str, Any]]) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in records:
        out[int(r["task_id"])] = max(out.get(int(r["task_id"]), 0.0), float(r["status"] == "passed"))
    return out


def dense_vs_sparse(dense_summary: dict[str, Any], dense_records: Sequence[dict[str, Any]],
                    sparse_records: Sequence[dict[str, Any]], cfg: MbppRunConfig) -> dict[str, Any]:
    """The dense run's pass@k and the paired difference sparse - dense over tasks (bootstrap CI, exact McNemar)."""
    d, s = _task_passed(dense_records), _task_passed(sparse_records)
    ids = sorted(d)
    diff = paired_difference([s[t] for t in ids], [d[t] for t in ids], n_resamples=cfg.eval.ci_resamples,
                             level=cfg.eval.ci_level, seed=cfg.eval.seed)
    keep = ("total", "passed", "failed_task_ids", *(k for k in dense_summary if k.startswith("pass@")))
    return {"dense": {k: dense_summary[k] for k in keep if k in dense_summary},
            "sparse_minus_dense": {"metric": "problem solved (any sample passed)", **diff.to_dict()}}


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
            summary.update(records=str(table), source=label, split=cfg.split)
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
    if cfg.solutions is None and cfg.samples is None:
        summary.setdefault("sparsity", None)  # dense, said explicitly
    return summary
