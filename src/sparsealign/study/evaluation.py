"""One eval cell: a model (base or aligned) under one sparsity setting, measured on everything the study reports.

The measurements are the eval verbs' own runners (`evaluate.mbpp.run`, `evaluate.preference.run`), called on the
model this cell loaded and sparsified once, because the dynamic controller's state must carry through the whole
sequence.  `EVAL_STEPS` is that sequence; a new metric is one more step (a function of `EvalContext` that adds to
`metrics` / `items`), appended where its position in the controller's sequence belongs.

Order matters for the dynamic controller, and is fixed: code first (MBPP, then generated tasks — the calibration
domain), then dialogue (held-out HH and UltraFeedback pairs — the shifted domain), then held-out code pairs, then
decode speed.  The realized-sparsity trace over that whole sequence is what the "static vs dynamic" figure shows.

Generation follows the configured prefill policy (dense prompt by default, sparse decode).  Teacher-forced
preference scoring has no decode phase, so it runs with every position sparse — the stricter reading.

Implicit reward per method: the one its loss defines (`align.losses`), with the β it was trained with, read from the
`sparsealign_alignment.json` its alignment wrote beside the model; the base model is scored with the
length-normalised log-likelihood (SimPO's reward with β = 1), the natural reference-free reward of an unaligned model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsealign.data.mbpp.generated import generated_split
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.preference import load_pairs
from sparsealign.data.records import MbppTask
from sparsealign.evaluate.generation import SamplingConfig
from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig, save_records
from sparsealign.evaluate.mbpp.run import MbppRunConfig
from sparsealign.evaluate.mbpp.run import evaluate_loaded as mbpp_on_model
from sparsealign.evaluate.preference.metrics import flip_metrics
from sparsealign.evaluate.preference.run import PreferenceRunConfig, with_alignment_record
from sparsealign.evaluate.preference.run import evaluate_loaded as preference_on_model
from sparsealign.io import atomic_write_json
from sparsealign.models.pretrain import load_member
from sparsealign.sparse.artifacts import load_artifacts
from sparsealign.sparse.patch import SparsityHandle, apply_sparsity
from sparsealign.sparse.quality import decode_tokens_per_s
from sparsealign.study.cells import BASE, EvalCell
from sparsealign.study.layout import Study

PREFERENCE_SETS = ("hh", "uf", "code")
SUMMARY_METRICS = ("reward_accuracy", "ranking_accuracy", "preference_divergence", "bt_cross_entropy", "mean_margin")
BASE_REWARD = ("simpo", 1.0)  # how an unaligned model is scored: length-normalised log-likelihood


@dataclass
class EvalContext:
    study: Study
    cell: EvalCell
    model: Any
    tok: Any
    scoring: PreferenceRunConfig  # method, β and reference of the implicit reward (from the model's record)
    ref: Any = None
    handle: SparsityHandle | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    items: dict[str, list[float]] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return self.study.eval_dir(self.cell)


def _flat(prefix: str, metrics: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        m = metrics.get(name)
        if isinstance(m, dict) and "estimate" in m:
            out[f"{prefix}{name}"] = float(m["estimate"])
            if "low" in m:
                out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = float(m["low"]), float(m["high"])
    return out


def _mbpp(ctx: EvalContext, tasks: list[MbppTask], name: str, prefix: tuple[str, int] | None = None) -> None:
    """pass@1 of `tasks` as dataset `name`; `prefix` = (dataset, k): the first k tasks also reported as their own
    dataset, from the same generations (one run, two datasets)."""
    ev, seed = ctx.cell.evaluation, ctx.study.cfg.seed
    cfg = MbppRunConfig(
        split=ev.mbpp_split, limit=len(tasks), chunk_size=max(1, len(tasks)),  # one chunk: one generation order
        eval=MbppEvalConfig(format=ev.prompt_format, shots=ev.shots, workers=ev.sandbox_workers,
                            ci_resamples=ev.bootstrap, seed=seed,
                            sampling=SamplingConfig(max_new_tokens=ev.max_new_tokens, batch_size=16, seed=seed)))
    summary, records = mbpp_on_model(cfg, ctx.model, ctx.tok, tasks)
    save_records(records, ctx.out_dir / f"{name}.parquet")
    passed = {r["task_id"] for r in records if r["status"] == "passed"}
    p1 = summary.get("pass@1", {})
    ctx.metrics[f"{name}_pass@1"] = float(p1["estimate"] if isinstance(p1, dict) else p1)
    if isinstance(p1, dict) and "low" in p1:
        ctx.metrics[f"{name}_pass@1_ci_low"], ctx.metrics[f"{name}_pass@1_ci_high"] = float(p1["low"]), float(p1["high"])
    ctx.items[f"{name}_passed"] = [int(t.task_id in passed) for t in tasks]
    if prefix is not None:
        sub, k = prefix
        ctx.items[f"{sub}_passed"] = ctx.items[f"{name}_passed"][:k]
        ctx.metrics[f"{sub}_pass@1"] = sum(ctx.items[f"{sub}_passed"]) / max(k, 1)  # Wilson CI: study.results


def code_step(ctx: EvalContext) -> None:
    """MBPP (reported as "mbpp"; base models with `mbpp_base_tasks` also as "mbppfull", e.g. the whole split) and
    generated tasks (reported apart, as "generated"); full-data models only -- subset models answer the
    annotation-efficiency question (preferences)."""
    ev = ctx.cell.evaluation
    if ctx.cell.subset != 1.0:
        return
    split = load_mbpp(split=ev.mbpp_split)
    if ev.mbpp_base_tasks and ctx.cell.method == BASE:
        _mbpp(ctx, split[: ev.mbpp_base_tasks], "mbppfull", prefix=("mbpp", len(split[: ev.mbpp_limit])))
    else:
        _mbpp(ctx, split[: ev.mbpp_limit], "mbpp")
    if ev.generated_tasks:
        _mbpp(ctx, generated_split("test", ev.generated_tasks), "generated")


def preference_step(ctx: EvalContext) -> None:
    """Held-out pairs (dialogue, then code): the method's implicit reward, and flips against the dense model."""
    study, cell, ev = ctx.study, ctx.cell, ctx.cell.evaluation
    dense_items = None
    if cell.dense is not None:
        dense_items = json.loads((study.eval_dir(cell.dense) / "items.json").read_text())
    for name in PREFERENCE_SETS:
        path = study.pairs_dir(cell.size) / f"heldout_{name}.jsonl"
        if not path.exists() or path.stat().st_size == 0:
            continue
        pairs = load_pairs(path, warn=False).pairs
        with ctx.handle.dense_prefix(0) if ctx.handle is not None else contextlib.nullcontext():
            summary, records = preference_on_model(ctx.scoring.model_copy(update={"data": str(path)}), ctx.model,
                                                   ctx.tok, pairs, ref=ctx.ref)
        ctx.metrics.update(_flat(f"{name}_", summary["metrics"], SUMMARY_METRICS))
        ctx.metrics["scoring"] = {"method": summary["method"], "beta": summary["beta"],
                                  "reference": ctx.scoring.ref_model}
        margins = [r["margin"] for r in records]
        ctx.items[f"{name}_margin"] = margins
        ctx.items[f"{name}_correct"] = [float(x > 0) for x in margins]
        if dense_items is not None and f"{name}_margin" in dense_items:
            flips = flip_metrics(dense_items[f"{name}_margin"], margins, n_resamples=ev.bootstrap,
                                 seed=study.cfg.seed)
            ctx.metrics.update(_flat(f"{name}_", flips, ("flip_rate", "flip_divergence", "margin_shift")))


def sparsity_step(ctx: EvalContext) -> None:
    """Sparsity actually realized over the whole sequence above (and its trace)."""
    if ctx.handle is None:
        ctx.metrics["realized_sparsity"] = 0.0
        return
    stats = ctx.handle.stats()
    ctx.metrics["realized_sparsity"] = float(stats.get("realized_sparsity", 0.0))
    ctx.metrics["flops_skipped"] = float(stats.get("flops_skipped", 0.0))
    if "predictor_recall" in stats:
        ctx.metrics["predictor_recall"] = float(stats["predictor_recall"])
    atomic_write_json(ctx.out_dir / "trace.json", _thin_trace(ctx.handle.trace()))
    ctx.handle.reset()


def speed_step(ctx: EvalContext) -> None:
    ctx.metrics["tokens_per_s"] = decode_tokens_per_s(ctx.model, ctx.tok, "def add(a, b):\n",
                                                      ctx.cell.evaluation.speed_tokens)


EVAL_STEPS: list[Callable[[EvalContext], None]] = [code_step, preference_step, sparsity_step, speed_step]


def scoring_config(study: Study, cell: EvalCell, model_path: str) -> PreferenceRunConfig:
    ev = cell.evaluation
    method, beta = BASE_REWARD if cell.method == BASE else (cell.method, None)
    cfg = PreferenceRunConfig(model=model_path, method=method, beta=beta, data="-", max_length=ev.max_length,
                              max_prompt_length=ev.max_prompt_length, n_resamples=ev.bootstrap, seed=study.cfg.seed)
    return with_alignment_record(cfg)


def run_eval_cell(study: Study, cell: EvalCell) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = study.cfg
    torch.manual_seed(cfg.seed)
    model_path = study.model_path(cell.size, cell.model)
    model, tok = load_member(model_path)
    scoring = scoring_config(study, cell, model_path)
    ctx = EvalContext(study, cell, model, tok, scoring,
                      ref=load_member(scoring.ref_model)[0] if scoring.ref_model else None)
    if cell.calibrate is not None:
        art = load_artifacts(study.artifacts_root(cell.size, cell.method) / f"t{cell.sparsity:.2f}")
        ctx.handle = apply_sparsity(model, art, cell.mode, cell.prefill)
    ctx.metrics.update({"size": cell.size, "method": cell.method, "subset": cell.subset, "mode": cell.mode,
                        "target_sparsity": cell.sparsity})
    for step in EVAL_STEPS:
        step(ctx)
    if ctx.handle is not None:
        ctx.handle.remove()
    atomic_write_json(ctx.out_dir / "items.json", ctx.items)
    atomic_write_json(ctx.out_dir / "metrics.json", ctx.metrics)
    return ctx.metrics, {"items": ctx.out_dir / "items.json", "metrics": ctx.out_dir / "metrics.json"}


def _thin_trace(trace: dict[str, Any], max_points: int = 2000) -> dict[str, Any]:
    """Sparse positions only (dense-prefill positions carry no threshold decision), at most `max_points` evenly
    spaced positions per layer so the trace stays plottable."""
    prefill = trace.get("prefill", [])
    keep = [i for i, dense in enumerate(prefill) if not dense]

    def pick(series: list[float]) -> list[float]:
        return [series[i] for i in keep if i < len(series)] if prefill else series

    series = [pick(s) for s in trace.get("realized_sparsity", [])]
    n = max((len(s) for s in series), default=0)
    step = max(1, n // max_points)
    return {"layers": trace.get("layers", []),
            "realized_sparsity": [s[::step] for s in series],
            "threshold": [pick(s)[::step] for s in trace.get("threshold", [])],
            "step": step, "positions": "sparse positions only (dense prefill excluded)"}
