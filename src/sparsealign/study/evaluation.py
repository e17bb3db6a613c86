"""One eval cell: a model (base or aligned) under one sparsity setting, measured on everything the study reports.

Generation (MBPP, generated tasks, decode speed) follows the configured prefill policy (dense prompt by default,
sparse decode).  Teacher-forced preference scoring has no decode phase, so it runs with every position sparse —
the stricter reading; a per-row dense prompt prefix would credit the model with dense compute for the prompt.

Order matters for the dynamic controller, and is fixed: code first (MBPP, then generated tasks — the calibration
domain), then dialogue (held-out HH and UltraFeedback pairs — the shifted domain), then held-out code pairs, then
decode speed.  The realized-sparsity trace over that whole sequence is what the "static vs dynamic" figure shows.

Implicit reward per method (the method's own, as in its loss): DPO/RDPO β·log π/π_ref (reference = the base model),
SimPO/RSimPO β/|y|·log π, ORPO/RORPO log-odds; the base model is scored with the length-normalised log-likelihood
(SimPO's reward with β = 1), the natural reference-free reward of an unaligned model.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsealign.io import atomic_write_json
from sparsealign.study.cells import BASE, Cell

if TYPE_CHECKING:
    from sparsealign.study.pipeline import Study

PREFERENCE_SETS = ("hh", "uf", "code")
SUMMARY_METRICS = ("reward_accuracy", "ranking_accuracy", "preference_divergence", "bt_cross_entropy", "mean_margin")


def reward_method(method: str) -> tuple[str, float | None]:
    return ("simpo", 1.0) if method == BASE else (method, None)


def _flat(prefix: str, metrics: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        m = metrics.get(name)
        if isinstance(m, dict) and "estimate" in m:
            out[f"{prefix}{name}"] = float(m["estimate"])
            if "low" in m:
                out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = float(m["low"]), float(m["high"])
    return out


def _mbpp(study: Study, model, tok, tasks, name: str, eval_dir: Path) -> tuple[dict[str, float], list[int]]:
    from sparsealign.evaluate.generation import SamplingConfig
    from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig, evaluate_mbpp, save_records

    ev = study.cfg.evaluation
    cfg = MbppEvalConfig(format=ev.prompt_format, shots=ev.shots, workers=ev.sandbox_workers,
                         ci_resamples=ev.bootstrap, seed=study.cfg.seed,
                         sampling=SamplingConfig(max_new_tokens=ev.max_new_tokens, batch_size=16, seed=study.cfg.seed))
    summary, records = evaluate_mbpp(model, tok, tasks, cfg)
    save_records(records, eval_dir / f"{name}.parquet")
    passed = {r["task_id"] for r in records if r["status"] == "passed"}
    p1 = summary.get("pass@1", {})
    out = {f"{name}_pass@1": float(p1["estimate"] if isinstance(p1, dict) else p1)}
    if isinstance(p1, dict) and "low" in p1:
        out[f"{name}_pass@1_ci_low"], out[f"{name}_pass@1_ci_high"] = float(p1["low"]), float(p1["high"])
    return out, [int(t.task_id in passed) for t in tasks]


def evaluate_cell(study: Study, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    from sparsealign.align.logps import TokenizeSettings
    from sparsealign.data.mbpp.generated import generated_split
    from sparsealign.data.mbpp.tasks import load_mbpp
    from sparsealign.data.preference import load_pairs
    from sparsealign.evaluate.preference.metrics import flip_metrics
    from sparsealign.evaluate.preference.score import evaluate_preference
    from sparsealign.models.pretrain import load_member
    from sparsealign.sparse import decode_tokens_per_s
    from sparsealign.study.pipeline import REFERENCE_METHODS

    cfg, ev = study.cfg, study.cfg.evaluation
    torch.manual_seed(cfg.seed)
    out_dir = study.eval_dir(cell)
    model, tok = load_member(study.model_path(cell.size, cell.method, cell.subset))
    ref = load_member(study.model_path(cell.size, BASE, 1.0))[0] if cell.method in REFERENCE_METHODS else None
    handle = None
    if cell.mode != "dense":
        from sparsealign.sparse import apply_sparsity, load_artifacts

        art = load_artifacts(study.artifacts_dir(cell.size, cell.method, cell.sparsity))
        handle = apply_sparsity(model, art, cell.mode, cfg.sparsity.prefill)

    metrics: dict[str, Any] = {"size": cell.size, "method": cell.method, "subset": cell.subset, "mode": cell.mode,
                               "target_sparsity": cell.sparsity}
    items: dict[str, list[float]] = {}
    # 1) code: MBPP (reported as "mbpp") and generated tasks (reported apart, as "generated")
    full_data = cell.subset == 1.0  # subset models only answer the annotation-efficiency question (preferences)
    if full_data:
        mbpp_tasks = load_mbpp(split=ev.mbpp_split)[: ev.mbpp_limit]
        m, items["mbpp_passed"] = _mbpp(study, model, tok, mbpp_tasks, "mbpp", out_dir)
        metrics.update(m)
    if full_data and ev.generated_tasks:
        m, items["generated_passed"] = _mbpp(study, model, tok, generated_split("test", ev.generated_tasks),
                                             "generated", out_dir)
        metrics.update(m)
    # 2) preferences on held-out pairs (dialogue, then code)
    method, beta = reward_method(cell.method)
    settings = TokenizeSettings(max_length=ev.max_length, max_prompt_length=ev.max_prompt_length)
    dense_items = None
    if cell.mode != "dense":
        dense_key = f"{cell.size}/{cell.method}/{cell.key.split('/')[2]}/dense/0.00"
        dense_items = json.loads((study.root / "eval" / dense_key / "items.json").read_text())
    for name in PREFERENCE_SETS:
        path = study.pairs_dir(cell.size) / f"heldout_{name}.jsonl"
        if not path.exists() or path.stat().st_size == 0:
            continue
        pairs = load_pairs(path, warn=False).pairs
        with handle.dense_prefix(0) if handle is not None else contextlib.nullcontext():
            summary, records = evaluate_preference(model, tok, pairs, method, ref_model=ref, beta=beta,
                                                   settings=settings, n_resamples=ev.bootstrap, seed=cfg.seed)
        metrics.update(_flat(f"{name}_", summary["metrics"], SUMMARY_METRICS))
        margins = [r["margin"] for r in records]
        items[f"{name}_margin"] = margins
        items[f"{name}_correct"] = [float(x > 0) for x in margins]
        if dense_items is not None and f"{name}_margin" in dense_items:
            flips = flip_metrics(dense_items[f"{name}_margin"], margins, n_resamples=ev.bootstrap, seed=cfg.seed)
            metrics.update(_flat(f"{name}_", flips, ("flip_rate", "flip_divergence", "margin_shift")))
    # 3) sparsity actually realized over the whole sequence above, and decode speed
    if handle is not None:
        stats = handle.stats()
        metrics["realized_sparsity"] = float(stats.get("realized_sparsity", 0.0))
        metrics["flops_skipped"] = float(stats.get("flops_skipped", 0.0))
        if "predictor_recall" in stats:
            metrics["predictor_recall"] = float(stats["predictor_recall"])
        atomic_write_json(out_dir / "trace.json", _thin_trace(handle.trace()))
        handle.reset()
    else:
        metrics["realized_sparsity"] = 0.0
    metrics["tokens_per_s"] = decode_tokens_per_s(model, tok, "def add(a, b):\n", ev.speed_tokens)
    if handle is not None:
        handle.remove()
    atomic_write_json(out_dir / "items.json", items)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics, {"items": out_dir / "items.json", "metrics": out_dir / "metrics.json"}


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
