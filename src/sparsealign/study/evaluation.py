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

Rewards.  Every model — base and aligned, dense and sparse — is compared on one shared reward
(`evaluate.preference.reward.SHARED_REWARD`: the mean per-token log-likelihood of the response, reference-free), so
aligned − base subtracts like quantities (`<set>_reward_accuracy`, `<set>_margin` / `<set>_correct` items).  Dense
cells of aligned models also report their method's own implicit reward as `<set>_implicit_*`: the preference runner
reads it from the same log-probs (`also`), with the β and reference their `sparsealign_alignment.json` records; the
reference's log-probs are the ones the base model's dense cell (a parent) left in the reference cache.  Every cell
also records per pair the summed log-prob of chosen minus rejected (`<set>_logratio`): the results stage pairs an
aligned cell's with the base cell's at the same setting into the implicit reward with policy and reference both under
that setting (`study.results.relative_to_base`), the scale of the real preset's interaction.

Code likelihood (`likelihood_step`): NLL of the 500 MBPP reference solutions, with natural ReLU sparsity and
KL(aligned || base) in dense cells, and KL(dense || sparse) in sparse cells.  `dialogue_kl_step`: KL(aligned || base)
on held-out HH chosen responses (dense aligned cells; the manipulation check on the alignment's own domain).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsealign.align.config import facts
from sparsealign.align.logps import TokenizeSettings, encode_pairs
from sparsealign.align.sidecar import read_record
from sparsealign.data.mbpp.generated import generated_split
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.preference import load_pairs
from sparsealign.data.records import MbppTask, PreferencePair
from sparsealign.evaluate.generation import SamplingConfig
from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig, save_records
from sparsealign.evaluate.mbpp.likelihood import CachedModel, code_likelihood, score_parts
from sparsealign.evaluate.mbpp.run import MbppRunConfig
from sparsealign.evaluate.mbpp.run import evaluate_loaded as mbpp_on_model
from sparsealign.evaluate.preference.metrics import calibrated_divergence, margin_correlation
from sparsealign.evaluate.preference.reward import SHARED_REWARD, Reward
from sparsealign.evaluate.preference.run import PreferenceRunConfig
from sparsealign.evaluate.preference.run import evaluate_loaded as preference_on_model
from sparsealign.evaluate.preference.score import human_probs
from sparsealign.io import atomic_path, atomic_write_json
from sparsealign.models.loading import load_model
from sparsealign.sparse.apply import apply_spec
from sparsealign.sparse.artifacts import target_dir
from sparsealign.sparse.bench.quality import decode_tokens_per_s
from sparsealign.sparse.runtime.patch import SparsityHandle
from sparsealign.sparse.spec import SparsitySpec
from sparsealign.stats.intervals import bootstrap_ci
from sparsealign.study.cells import BASE, EvalCell, model_seed
from sparsealign.study.layout import Study

# preference divergence is not read at the reward's raw scale (a near-constant there): `_divergence` below
SUMMARY_METRICS = ("reward_accuracy", "ranking_accuracy", "bt_cross_entropy", "mean_margin")
LENGTH_METRICS = ("length_baseline_accuracy", "length_controlled_accuracy", "length_agreement")


@dataclass
class EvalContext:
    study: Study
    cell: EvalCell
    model: Any
    tok: Any
    scoring: PreferenceRunConfig  # the shared reward, and (dense aligned cells) the model's own beside it
    model_path: str = ""
    handle: SparsityHandle | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    items: dict[str, list[float]] = field(default_factory=dict)
    domains: list[tuple[str, int]] = field(default_factory=list)  # (dataset, trace position where its pass starts)

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


@contextlib.contextmanager
def domain(ctx: EvalContext, name: str) -> Iterator[None]:
    """Sparse cells: the realized sparsity of one dataset's pass alone, as `<name>_realized_sparsity` (thresholds
    realize their target per domain, not only over the whole sequence)."""
    if ctx.handle is None:
        yield
        return
    ctx.domains.append((name, len(ctx.handle.trace()["prefill"])))  # the trace figure's domain boundaries
    with ctx.handle.window() as realized:
        yield
    if "realized_sparsity" in realized:
        ctx.metrics[f"{name}_realized_sparsity"] = realized["realized_sparsity"]


def _mbpp(ctx: EvalContext, tasks: list[MbppTask], name: str, prefix: tuple[str, int] | None = None) -> None:
    """pass@1 of `tasks` as dataset `name`; `prefix` = (dataset, k): the first k tasks also reported as their own
    dataset, from the same generations (one run, two datasets)."""
    ev, seed = ctx.cell.evaluation, ctx.study.cfg.seed
    cfg = MbppRunConfig(
        split=ev.mbpp_split, limit=len(tasks), chunk_size=max(1, len(tasks)),  # one chunk: one generation order
        eval=MbppEvalConfig(format=ev.prompt_format, shots=ev.shots, workers=ev.sandbox_workers,
                            ci_resamples=ev.bootstrap, seed=seed,
                            sampling=SamplingConfig(max_new_tokens=ev.max_new_tokens,
                                                     batch_size=ev.generation_batch_size, seed=seed)))
    with domain(ctx, name):
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
    """MBPP (reported as "mbpp"; base models with `mbpp_base_tasks` also as "mbppfull", e.g. the whole split, at the
    settings `EvalCell.mbpp_full` names) and
    generated tasks (reported apart, as "generated"); full-data models only -- subset models answer the
    annotation-efficiency question (preferences)."""
    ev = ctx.cell.evaluation
    if not ctx.cell.generates_mbpp:
        return
    split = load_mbpp(split=ev.mbpp_split)
    if ctx.cell.mbpp_full:
        _mbpp(ctx, split[: ev.mbpp_base_tasks], "mbppfull", prefix=("mbpp", len(split[: ev.mbpp_limit])))
    else:
        _mbpp(ctx, split[: ev.mbpp_limit], "mbpp")
    if ev.generated_tasks:
        _mbpp(ctx, generated_split("test", ev.generated_tasks), "generated")


def likelihood_step(ctx: EvalContext) -> None:
    """Continuous code metrics on the MBPP reference solutions (`evaluate.mbpp.likelihood`), one pass: NLL; dense
    cells also the natural (threshold-free) ReLU sparsity and, for aligned models, KL(aligned || base); sparse
    cells KL(dense || sparse) against the same model dense.  The model a KL compares against is the one its dense
    cell (a parent) already ran: that cell keeps its vocabulary-projection inputs (`hidden_path`), so the KL costs
    one projection, not a second forward pass; without the file (`--only`) the other model runs here."""
    ev, cell = ctx.study.cfg.evaluation, ctx.cell
    if cell.subset != 1.0 or ev.likelihood_tasks == 0:
        return
    tasks = load_mbpp(split=ev.mbpp_split)[: ev.likelihood_tasks]
    dense = cell.calibrate is None
    against = cell.reference if dense else cell.dense
    other = None if dense and cell.method == BASE else _kl_model(ctx, against, len(tasks), dense)
    kl = {"alignment_kl": other} if dense and other is not None else {}
    hidden: list | None = [] if dense and _compared_against(ctx.study, cell) else None
    with (ctx.handle.dense_prefix(0) if ctx.handle is not None else contextlib.nullcontext(),  # every token sparse
          domain(ctx, "mbpp_reference")):
        scores = code_likelihood(ctx.model, ctx.tok, tasks, kl_to=kl, kl_from={} if dense else {"sparse_kl": other},
                                 zeros=dense, n_resamples=ev.bootstrap, seed=ctx.study.cfg.seed, hidden=hidden)
    if hidden is not None:
        with atomic_path(hidden_path(ctx.study, cell, len(tasks))) as tmp:
            torch.save(hidden, tmp)
    for name, metric in scores.items():
        ctx.metrics[f"mbpp_{name}"] = metric.summary["estimate"]
        ctx.metrics[f"mbpp_{name}_ci_low"], ctx.metrics[f"mbpp_{name}_ci_high"] = (metric.summary["low"],
                                                                                   metric.summary["high"])
        ctx.items[f"mbpp_{name}"] = metric.values.tolist()


def dialogue_kl_step(ctx: EvalContext) -> None:
    """KL(aligned || base) per token on the chosen responses of the first `dialogue_kl_pairs` held-out HH pairs
    (dense aligned cells): how far the alignment moved the model on held-out text of its own domain, the
    manipulation check's first part (`mbpp_alignment_kl` is the same on code, the cost side)."""
    study, cell, n = ctx.study, ctx.cell, ctx.cell.evaluation.dialogue_kl_pairs
    path = study.pairs_dir(cell.size) / "heldout_hh.jsonl"
    if not n or cell.calibrate is not None or cell.method == BASE or not path.exists() or path.stat().st_size == 0:
        return
    ev = cell.evaluation
    pairs = load_pairs(path, warn=False).pairs[:n]
    feats, _ = encode_pairs(ctx.tok, pairs, TokenizeSettings(max_length=ev.max_length,
                                                             max_prompt_length=ev.max_prompt_length))
    base = load_model(study.base_model_path(cell.size), study.cfg.load)[0]
    sums, counts = score_parts(ctx.model, [(f["prompt_ids"], f["chosen_ids"]) for f in feats],
                               ctx.tok.pad_token_id or 0, kl_to={"kl": base})["kl"]
    values = sums / counts
    ci = bootstrap_ci(values, n_resamples=ev.bootstrap, seed=study.cfg.seed)
    ctx.metrics.update({"hh_alignment_kl": ci.estimate, "hh_alignment_kl_ci_low": ci.low,
                        "hh_alignment_kl_ci_high": ci.high})
    ctx.items["hh_alignment_kl"] = values.tolist()


def _compared_against(study: Study, cell: EvalCell) -> bool:
    """Dense cells whose projection inputs another cell reads: the base model's (KL(aligned || base)) and those of
    models in the sparse grid (KL(dense || sparse)); the others keep no file."""
    methods = study.cfg.sparsity.methods
    return cell.method == BASE or methods is None or cell.method in methods


def hidden_path(study: Study, cell: EvalCell, n_tasks: int) -> Path:
    return study.eval_dir(cell) / f"mbpp_hidden_{n_tasks}.pt"


def _kl_model(ctx: EvalContext, against: EvalCell | None, n_tasks: int, dense: bool) -> Any:
    """The other side of this cell's KL: the base model (dense aligned cells) or this model dense (sparse cells),
    from its dense cell's saved projection inputs when they exist, else the model itself."""
    path = ctx.study.base_model_path(ctx.cell.size) if dense else ctx.model_path
    saved = hidden_path(ctx.study, against, n_tasks) if against is not None else None
    if saved is None or not saved.exists():
        return load_model(path, ctx.study.cfg.load)[0]
    head = ctx.model if not dense else load_model(path, ctx.study.cfg.load)[0]  # a sparse cell's: its own
    weights = head.get_output_embeddings()
    return CachedModel(weights.weight.detach(), None if weights.bias is None else weights.bias.detach(),
                       torch.load(saved))


def preference_step(ctx: EvalContext) -> None:
    """Held-out pairs (dialogue, then code) through the preference runner: the shared reward, the model's own
    implicit reward beside it (dense aligned cells), and flips against the dense cell's margins (sparse cells)."""
    study, cell = ctx.study, ctx.cell
    dense_items, dense_metrics = None, {}
    if cell.dense is not None:
        dense_items = json.loads((study.eval_dir(cell.dense) / "items.json").read_text())
        dense_metrics = json.loads((study.eval_dir(cell.dense) / "metrics.json").read_text())
    for name in cell.preference_sets:
        path = study.pairs_dir(cell.size) / f"heldout_{name}.jsonl"
        if not path.exists() or path.stat().st_size == 0:
            continue
        pairs = load_pairs(path, warn=False).pairs
        baseline = dense_items.get(f"{name}_margin") if dense_items is not None else None
        with domain(ctx, name):
            summary, records = preference_on_model(ctx.scoring.model_copy(update={"data": str(path)}), ctx.model,
                                                   ctx.tok, pairs, baseline_margins=baseline, handle=ctx.handle)
        ctx.metrics.update(_flat(f"{name}_", summary["metrics"], SUMMARY_METRICS))
        ctx.metrics.update(_flat(f"{name}_", summary["length"], LENGTH_METRICS))
        ctx.metrics["scoring"] = {"method": summary["method"], "beta": summary["beta"],
                                  "shared_reward": "mean token log-prob"}
        ctx.items[f"{name}_margin"] = [r["margin"] for r in records]
        ctx.items[f"{name}_correct"] = [r["correct"] for r in records]
        # summed log-prob of chosen minus rejected: with the base model's at the same setting, any reference
        # method's implicit reward under this setting (`study.results.relative_to_base`)
        ctx.items[f"{name}_logratio"] = [r["logp_chosen"] - r["logp_rejected"] for r in records]
        ctx.items[f"{name}_longer_wins"] = longer_wins(ctx.tok, pairs).tolist()
        _divergence(ctx, name, pairs, summary["tau"], dense_metrics.get(f"{name}_margin_scale"))
        if "also" in summary:
            ctx.metrics.update(_flat(f"{name}_implicit_", summary["also"]["metrics"], SUMMARY_METRICS))
            ctx.metrics["implicit_beta"] = summary["also"]["beta"]
            ctx.items[f"{name}_implicit_margin"] = [r["also_margin"] for r in records]
        if "flip" in summary:
            ctx.metrics.update(_flat(f"{name}_", summary["flip"], ("flip_rate", "flip_divergence", "margin_shift")))
            corr = margin_correlation(baseline, ctx.items[f"{name}_margin"])
            if math.isfinite(corr["estimate"]):  # constant margins have no correlation to report
                ctx.metrics.update(_flat(f"{name}_", {"margin_correlation": corr}, ("margin_correlation",)))


def response_tokens(tok: Any, pairs: Sequence[PreferencePair]) -> tuple[np.ndarray, np.ndarray]:
    """Token counts of each pair's whole chosen and rejected responses (not truncated to the scoring budget)."""
    return (np.array([len(tok(p.chosen)["input_ids"]) for p in pairs], dtype=float),
            np.array([len(tok(p.rejected)["input_ids"]) for p in pairs], dtype=float))


def longer_wins(tok: Any, pairs: Sequence[PreferencePair]) -> np.ndarray:
    """Per pair, "the longer response wins" against the label (1, 0; ties 1/2), on the whole responses: the
    trivial baseline an accuracy is read against, with all the length information a rule could use."""
    n_w, n_l = response_tokens(tok, pairs)
    return (np.sign(n_w - n_l) + 1) / 2


def _divergence(ctx: EvalContext, name: str, pairs: list, tau: float, scale: float | None) -> None:
    """Preference divergence at a margin scale fitted on a separate split (`calibrated_divergence`): a dense cell
    fits its own scale (`scale` None), a sparse cell passes its dense self's, so what sparsity does to the margins
    shows."""
    m, js, scale = calibrated_divergence(ctx.items[f"{name}_margin"], human_probs(pairs, tau), scale,
                                         n_resamples=ctx.cell.evaluation.bootstrap, seed=ctx.study.cfg.seed)
    ctx.metrics.update(_flat(f"{name}_", {"preference_divergence": m}, ("preference_divergence",)))
    ctx.metrics[f"{name}_margin_scale"] = scale
    ctx.items[f"{name}_divergence"] = js.tolist()


def sparsity_step(ctx: EvalContext) -> None:
    """Sparsity actually realized over the whole sequence above (and its trace)."""
    if ctx.handle is None:  # no threshold: what ReLU itself zeroes (measured on the MBPP references, where run)
        if "mbpp_natural_sparsity" in ctx.metrics:
            ctx.metrics["realized_sparsity"] = float(ctx.metrics["mbpp_natural_sparsity"])
        return
    stats = ctx.handle.stats()
    ctx.metrics["realized_sparsity"] = float(stats.get("realized_sparsity", 0.0))
    ctx.metrics["flops_skipped"] = float(stats.get("flops_skipped", 0.0))
    if "predictor_recall" in stats:
        ctx.metrics["predictor_recall"] = float(stats["predictor_recall"])
    atomic_write_json(ctx.out_dir / "trace.json", _thin_trace(ctx.handle.trace(), ctx.domains))
    ctx.handle.reset()
    ctx.domains.clear()


def speed_step(ctx: EvalContext) -> None:
    ctx.metrics["tokens_per_s"] = decode_tokens_per_s(ctx.model, ctx.tok, "def add(a, b):\n",
                                                      ctx.cell.evaluation.speed_tokens)


EVAL_STEPS: list[Callable[[EvalContext], None]] = [code_step, likelihood_step, preference_step, dialogue_kl_step,
                                                   sparsity_step, speed_step]


def scoring_config(study: Study, cell: EvalCell, model_path: str) -> PreferenceRunConfig:
    """Every cell scores with the shared reward; dense aligned cells also with their method's own implicit reward
    (β and reference from their alignment record); the base model's dense cell keeps its log-probs as the reference
    its aligned models read."""
    ev, load = cell.evaluation, study.cfg.load
    dense_aligned = cell.calibrate is None and cell.method != BASE
    record = read_record(model_path) if dense_aligned else None
    own = Reward(method=cell.method, beta=record and record.beta) if dense_aligned else None
    return PreferenceRunConfig(
        model=model_path, method=SHARED_REWARD.method, beta=SHARED_REWARD.beta, data="-", also=own,
        ref_model=record.reference if record is not None else None,
        save_reference=cell.method == BASE and cell.calibrate is None and facts_need_reference(study),
        max_length=ev.max_length, max_prompt_length=ev.max_prompt_length, n_resamples=ev.bootstrap,
        seed=study.cfg.seed, device=load.device, dtype=load.dtype, device_map=load.device_map)


def facts_need_reference(study: Study) -> bool:
    """Whether any aligned model of the study reads the base model's log-probs as its reference."""
    return any(facts(m).needs_reference for m in study.cfg.alignment.methods)


def run_eval_cell(study: Study, cell: EvalCell) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = study.cfg
    torch.manual_seed(cfg.seed)
    model_path = study.model_path(cell.size, cell.model)
    model, tok = load_model(model_path, cfg.load)
    ctx = EvalContext(study, cell, model, tok, scoring_config(study, cell, model_path), model_path=model_path)
    if cell.calibrate is not None:
        arts = target_dir(study.artifacts_root(cell.size, cell.method, model_seed(cell.model)), cell.sparsity)
        ctx.handle = apply_spec(model, SparsitySpec(artifacts=str(arts), mode=cell.mode, prefill=cell.prefill))
    ctx.metrics.update({"size": cell.size, "method": cell.method, "subset": cell.subset, "mode": cell.mode,
                        "target_sparsity": cell.sparsity,
                        "seed": None if cell.method == BASE else model_seed(cell.model)})
    if cell.method != BASE and facts(cell.method).needs_reference:  # every setting: its implicit reward's beta
        ctx.metrics["implicit_beta"] = read_record(model_path).beta
    for step in EVAL_STEPS:
        step(ctx)
    if ctx.handle is not None:
        ctx.handle.remove()
    atomic_write_json(ctx.out_dir / "items.json", ctx.items)
    atomic_write_json(ctx.out_dir / "metrics.json", ctx.metrics)
    return ctx.metrics, {"items": ctx.out_dir / "items.json", "metrics": ctx.out_dir / "metrics.json"}


def _thin_trace(trace: dict[str, Any], domains: Sequence[tuple[str, int]] = (), max_points: int = 2000
                ) -> dict[str, Any]:
    """Sparse positions only (dense-prefill positions carry no threshold decision), at most `max_points` evenly
    spaced positions per layer so the trace stays plottable.  `domains`: (dataset, trace position where its pass
    starts), stored as `domains` = [[dataset, its first sparse position]] (the x of `realized_sparsity[l][i]` is
    `i * step`)."""
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
            "step": step, "positions": "sparse positions only (dense prefill excluded)",
            "domains": [[name, bisect.bisect_left(keep, start) if prefill else start] for name, start in domains]}
