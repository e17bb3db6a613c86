"""MBPP functional correctness: generate (or take the reference solutions), run every program in the sandbox, score.

    summary, records = evaluate_mbpp(model, tokenizer, load_mbpp(split="test"), MbppEvalConfig())
    summary, records = run_reference(load_mbpp(split="test"))

One record per (problem, sample): task_id, sample, prompt, completion, solution, program, status, reason, error,
duration_s.  A problem counts as passed when any of its samples passed; pass@k uses the unbiased estimator.
A reference solution that fails its own tests is a defect of the dataset and is listed, never hidden.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sparsealign.config import StrictModel
from sparsealign.data.mbpp.prompts import FORMATS, PromptFormat, make_format
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.records import MbppTask
from sparsealign.evaluate.generation import SamplingConfig, generate
from sparsealign.evaluate.mbpp.extract import Extraction, extract
from sparsealign.evaluate.mbpp.passk import pass_at_k_interval
from sparsealign.evaluate.tables import save_table
from sparsealign.sandbox.pool import SandboxPool

log = logging.getLogger("sparsealign.evaluate")
STATUSES = ("passed", "failed", "timeout", "error")
RECORD_COLUMNS = ("task_id", "sample", "format", "prompt", "completion", "solution", "program", "status", "reason",
                  "error", "duration_s", "prompt_truncated")


class MbppEvalConfig(StrictModel):
    """What `eval mbpp` runs; the sandbox limits apply to every program."""

    format: Literal["lm-eval", "bigcode"] = "lm-eval"
    shots: int = Field(3, ge=0, le=3, description="lm-eval examples (tasks 2, 3, 4) before the query; 3 = the harness")
    extract: Extraction = Field("harness", description="harness: the program the format's harness runs; lenient: "
                                "longest parsing prefix without top-level calls")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    ks: list[int] = Field(default_factory=lambda: [1], description="pass@k values reported (k <= n)")
    timeout_s: float = Field(10.0, gt=0)
    memory_mb: int = Field(1024, ge=64)
    workers: int = Field(2, ge=1)
    ci_resamples: int = Field(1000, ge=0)
    ci_level: float = Field(0.95, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _k_within_n(self) -> MbppEvalConfig:
        too_big = [k for k in self.ks if k > self.sampling.n]
        if too_big:
            raise ValueError(f"pass@{too_big[0]} needs at least {too_big[0]} samples per problem; raise --n "
                             f"(now {self.sampling.n}) with --temperature > 0, or drop --k {too_big[0]}")
        return self


def _error_line(stderr: str) -> str:
    """The exception line of a traceback (`NameError: name 'Node' is not defined`), else the last stderr line."""
    lines = [ln.strip() for ln in (stderr or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_programs(programs: Sequence[str], cfg: MbppEvalConfig) -> list[Any]:
    """Run programs in a warm sandbox pool; results come back in order."""

    if not programs:
        return []
    with SandboxPool(workers=cfg.workers, timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb) as pool:
        return list(pool.map(list(programs)))


def _attach_results(records: list[dict[str, Any]], cfg: MbppEvalConfig) -> list[dict[str, Any]]:
    results = run_programs([r["program"] for r in records], cfg)
    for rec, res in zip(records, results, strict=True):
        rec.update(status=res.status, reason=res.reason or "", duration_s=float(res.duration_s),
                   error="" if res.status == "passed" else (_error_line(res.stderr) or res.reason or ""))
    return records


def summarize(records: Sequence[dict[str, Any]], cfg: MbppEvalConfig) -> dict[str, Any]:
    """Per-problem counts -> passed problems, pass@k with CI, failed task ids, status counts."""
    by_task: dict[int, list[str]] = {}
    for rec in records:
        by_task.setdefault(int(rec["task_id"]), []).append(rec["status"])
    task_ids = sorted(by_task)
    n = [len(by_task[t]) for t in task_ids]
    c = [sum(s == "passed" for s in by_task[t]) for t in task_ids]
    summary: dict[str, Any] = {
        "total": len(task_ids),
        "samples": len(records),
        "passed": sum(ci > 0 for ci in c),
        "failed_task_ids": [t for t, ci in zip(task_ids, c, strict=True) if ci == 0],
        "status_counts": dict(Counter(r["status"] for r in records)),
    }
    if not task_ids:
        return summary
    for k in cfg.ks:
        if k > min(n):
            log.warning("pass@%d skipped: needs at least %d samples per problem (got %d)", k, k, min(n))
            continue
        ci = pass_at_k_interval(n, c, k, n_resamples=cfg.ci_resamples, level=cfg.ci_level, seed=cfg.seed)
        summary[f"pass@{k}"] = ci.estimate
        summary[f"pass@{k}_ci"] = {"low": ci.low, "high": ci.high, "level": ci.level, "method": ci.method}
    return summary


def setup_defects(tasks: Sequence[MbppTask], cfg: MbppEvalConfig) -> list[dict[str, Any]]:
    """Tasks whose test setup code cannot run on its own (e.g. 367 builds trees with a `Node` class that only the
    reference solution defines): a candidate must then define that name too, which the task text never says."""
    with_setup = [t for t in tasks if t.test_setup_code.strip()]
    results = run_programs(["\n".join([*t.test_imports, t.test_setup_code]) + "\n" for t in with_setup], cfg)
    return [
        {"task_id": t.task_id, "kind": "setup_needs_solution", "status": res.status,
         "error": _error_line(res.stderr) or res.reason,
         "note": "the test setup code fails without the reference solution; a candidate passes only if it also "
                 "defines what the setup uses"}
        for t, res in zip(with_setup, results, strict=True) if res.status != "passed"
    ]


def run_reference(tasks: Sequence[MbppTask], cfg: MbppEvalConfig | None = None) -> tuple[dict, list[dict]]:
    """Run each task's own reference solution against its tests (a check of the dataset and of the sandbox).

    `dataset_defects` lists reference solutions that fail their own tests (`reference_fails`) and setup code
    that depends on the solution (`setup_needs_solution`): defects of the data, reported, never hidden.
    """
    cfg = cfg or MbppEvalConfig()
    records = [
        {"task_id": t.task_id, "sample": 0, "format": "reference", "prompt": "", "completion": t.code,
         "solution": t.code, "program": t.test_program(t.code), "prompt_truncated": False}
        for t in tasks
    ]
    records = _attach_results(records, cfg)
    summary = summarize(records, cfg)
    by_id = {r["task_id"]: r for r in records}
    summary["dataset_defects"] = [
        {"task_id": t, "kind": "reference_fails", "status": by_id[t]["status"], "error": by_id[t]["error"],
         "note": "the dataset's own reference solution fails its tests (a dataset defect, not a model error)"}
        for t in summary["failed_task_ids"]
    ] + setup_defects(tasks, cfg)
    return summary, records


def evaluate_mbpp(
    model,
    tokenizer,
    tasks: Sequence[MbppTask],
    cfg: MbppEvalConfig | None = None,
    *,
    shots: Sequence[MbppTask] | None = None,
    progress: bool = False,
    transform: Callable[[str], str] | None = None,
) -> tuple[dict, list[dict]]:
    """Generate `cfg.sampling.n` completions per task, extract code, run the tests; returns (summary, records).

    `shots` supplies the lm-eval few-shot examples (tasks 2, 3, 4; default: read from the MBPP file).
    `transform`, if given, post-processes each extracted solution (e.g. a chat model's wrapper).
    """
    cfg = cfg or MbppEvalConfig()
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown format {cfg.format!r}")
    if cfg.format == "lm-eval" and shots is None:

        shots = load_mbpp(split="prompt")
    fmt = make_format(cfg.format, shots)
    if fmt.shots:
        fmt = dataclasses.replace(fmt, shots=fmt.shots[: cfg.shots])
    prompts = [fmt.prompt(t) for t in tasks]
    generations = generate(model, tokenizer, prompts, cfg.sampling, stop=fmt.stop_sequences, progress=progress)
    records = [
        completion_record(task, j, gen.text, fmt, cfg, prompt=prompt, prompt_truncated=gen.prompt_truncated,
                          transform=transform)
        for task, prompt, samples in zip(tasks, prompts, generations, strict=True)
        for j, gen in enumerate(samples)
    ]
    records = _attach_results(records, cfg)
    return summarize_generations(records, cfg), records


def completion_record(task: MbppTask, sample: int, completion: str, fmt: PromptFormat, cfg: MbppEvalConfig, *,
                      prompt: str | None = None, prompt_truncated: bool = False,
                      transform: Callable[[str], str] | None = None, code: str | None = None) -> dict[str, Any]:
    """One record (before running): the completion -> code (cfg.extract) -> solution -> test program.
    `code` given = a self-contained solution (evalplus "solution"): run as is, no extraction."""
    if code is None:
        code = extract(completion, fmt.stop_sequences, cfg.extract)
        code = transform(code) if transform else code
        code = fmt.solution(task, code)
    return {"task_id": task.task_id, "sample": sample, "format": fmt.name,
            "prompt": fmt.prompt(task) if prompt is None else prompt, "completion": completion, "solution": code,
            "program": task.test_program(code), "prompt_truncated": prompt_truncated}


def run_records(records: list[dict[str, Any]], cfg: MbppEvalConfig) -> tuple[dict, list[dict]]:
    """Run prepared records' programs in the sandbox and summarize (scoring generations made elsewhere)."""
    records = _attach_results(records, cfg)
    return summarize_generations(records, cfg), records


def summarize_generations(records: Sequence[dict[str, Any]], cfg: MbppEvalConfig) -> dict[str, Any]:
    """`summarize` plus the generation settings and how many prompts had to be cut to fit the context."""
    summary = summarize(records, cfg)
    summary.update(format=cfg.format, extract=cfg.extract, n=cfg.sampling.n, temperature=cfg.sampling.temperature,
                   prompts_truncated=sum(bool(r["prompt_truncated"]) for r in records if r["sample"] == 0))
    return summary


def save_records(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the per-sample table atomically: `.parquet` (default) or `.jsonl` by suffix."""
    return save_table(records, path, RECORD_COLUMNS)
