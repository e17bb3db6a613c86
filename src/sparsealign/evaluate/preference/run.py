"""One `eval preference` as a resumable unit: load pairs and models, evaluate, write the run directory."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from sparsealign.align.config import Method, facts
from sparsealign.align.logps import TokenizeSettings
from sparsealign.align.sidecar import read_record
from sparsealign.config import StrictModel, config_hash
from sparsealign.data.preference import load_pairs
from sparsealign.data.records import PreferencePair
from sparsealign.errors import UserError
from sparsealign.evaluate.preference.reference import reference_scores, save_reference
from sparsealign.evaluate.preference.reward import Reward
from sparsealign.evaluate.preference.score import evaluate_preference
from sparsealign.evaluate.tables import load_table, save_table
from sparsealign.io import atomic_write_json
from sparsealign.models.loading import load_model_and_tokenizer
from sparsealign.rundir import RunDir
from sparsealign.sparse.apply import apply_spec
from sparsealign.sparse.spec import SparsitySpec

STAGE = "eval-preference"


class PreferenceRunConfig(StrictModel):
    model: str
    ref_model: str | None = None
    baseline_model: str | None = None
    sparsity: SparsitySpec | None = Field(None, description="score `model` under activation sparsity; None = dense")
    method: Method
    data: str
    split: str | None = None
    limit: int | None = Field(None, ge=1)
    beta: float | None = None
    tau: float = Field(1.0, gt=0)
    kl_samples: int = Field(0, ge=0)
    kl_max_new_tokens: int = Field(128, ge=1)
    max_length: int = Field(512, ge=8)
    max_prompt_length: int | None = Field(None, ge=1, description="prompt tokens kept (default max_length // 2)")
    batch_size: int = Field(8, ge=1)
    n_resamples: int = Field(1000, ge=0)
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None  # hub ids: branch, tag or commit (of --model; ref/baseline use their default)
    trust_remote_code: bool = False
    device_map: str | None = None  # "auto": accelerate spreads a model too big for one device
    also: Reward | None = Field(None, description="a second reward read from the same log-probs (summary['also'])")
    save_reference: bool = Field(False, description="keep this (dense) model's log-probs as the reference its "
                                                    "aligned models' implicit rewards read (reference cache)")


def with_alignment_record(cfg: PreferenceRunConfig) -> PreferenceRunConfig:
    """β and the reference the model was trained with, from the record its alignment wrote beside it
    (`sparsealign_alignment.json`), where the config leaves them unset and the method is the one trained."""
    record = read_record(cfg.model)
    if record is None or record.method != cfg.method:
        return cfg
    return cfg.model_copy(update={"beta": record.beta if cfg.beta is None else cfg.beta,
                                  "ref_model": cfg.ref_model or record.reference})


def baseline_of(cfg: PreferenceRunConfig) -> str | None:
    """The dense model flips are counted against: --baseline-model, else (under --sparsity) the model itself."""
    if cfg.baseline_model:
        return cfg.baseline_model
    return cfg.model if cfg.sparsity is not None else None


def evaluate_loaded(cfg: PreferenceRunConfig, model, tok, pairs: Sequence[PreferencePair], *, ref=None,
                    baseline=None, baseline_margins: Sequence[float] | None = None,
                    handle=None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The verb's scoring of already loaded models (the study passes its own, possibly sparsified, model);
    `handle` is the sparsity patch on `model`, if any (its realized sparsity goes into the summary).  Flips are
    counted against `baseline` (a model) or `baseline_margins` (its margins from an earlier run).  Without a
    loaded `ref`, a reference the rewards need is read from the reference cache (scored once if missing)."""
    settings = TokenizeSettings(max_length=cfg.max_length,
                                max_prompt_length=cfg.max_prompt_length or cfg.max_length // 2)
    needs_ref = any(facts(r.method).needs_reference for r in (Reward(method=cfg.method), cfg.also) if r is not None)
    ref_scores = None
    if ref is None and cfg.ref_model and needs_ref:
        ref_scores = reference_scores(cfg.ref_model, tok, pairs, settings, dtype=cfg.dtype, batch_size=cfg.batch_size,
                                      device="cpu" if cfg.device == "auto" else cfg.device)
    try:
        # teacher-forced scoring is one multi-position call per batch: every position runs sparse (as in the study)
        with handle.dense_prefix(0) if handle is not None else contextlib.nullcontext():
            summary, records = evaluate_preference(
                model, tok, pairs, cfg.method, ref, beta=cfg.beta, tau=cfg.tau, baseline_model=baseline,
                baseline_margins=baseline_margins, ref_scores=ref_scores, also=cfg.also,
                kl_samples=cfg.kl_samples, kl_max_new_tokens=cfg.kl_max_new_tokens, settings=settings,
                batch_size=cfg.batch_size, n_resamples=cfg.n_resamples, seed=cfg.seed,
            )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg.save_reference and handle is None:
        save_reference(cfg.model, tok, pairs, settings, cfg.dtype, [r["logp_chosen"] for r in records],
                       [r["logp_rejected"] for r in records])
    summary.update(model=cfg.model, ref_model=cfg.ref_model, baseline_model=baseline_of(cfg), data=cfg.data,
                   sparsity=None)
    if handle is not None and cfg.sparsity is not None:
        stats = handle.stats()
        summary["sparsity"] = {**cfg.sparsity.model_dump(), "realized_sparsity": stats.get("realized_sparsity"),
                               "target_sparsity": handle.info.get("target_sparsity"), "scoring": "all positions sparse"}
    return summary, records


def _evaluate(cfg: PreferenceRunConfig, pairs: Sequence[PreferencePair] | None = None,
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = with_alignment_record(cfg)
    pairs = load_pairs(cfg.data, split=cfg.split, limit=cfg.limit).pairs if pairs is None else pairs
    opts = cfg.model_dump(include={"device", "dtype", "trust_remote_code", "device_map"})
    model, tok = load_model_and_tokenizer(cfg.model, revision=cfg.revision, **opts)
    ref = load_model_and_tokenizer(cfg.ref_model, **opts)[0] if cfg.ref_model else None
    baseline_path = baseline_of(cfg)
    baseline = load_model_and_tokenizer(baseline_path, **opts)[0] if baseline_path else None
    handle = apply_spec(model, cfg.sparsity) if cfg.sparsity is not None else None
    try:
        summary, records = evaluate_loaded(cfg, model, tok, pairs, ref=ref, baseline=baseline, handle=handle)
    finally:
        if handle is not None:
            handle.remove()
    if handle is not None and baseline is not None:  # the dense baseline's own metrics, for the side-by-side
        dense_cfg = cfg.model_copy(update={"sparsity": None, "kl_samples": 0})
        summary["dense"] = evaluate_loaded(dense_cfg, baseline, tok, pairs, ref=ref)[0]["metrics"]
    return summary, records


def run_preference(cfg: PreferenceRunConfig, *, name: str | None = None, out_path: str | None = None,
                   pairs: Sequence[PreferencePair] | None = None) -> dict[str, Any]:
    """`pairs`: `cfg.data` already loaded (the CLI reads it before any model loads, so bad input fails fast)."""
    if name is None:
        summary, records = _evaluate(cfg, pairs)
    else:
        run = RunDir.open(name, STAGE, cfg)
        out_dir = run.path("eval", "preference", "summary.json").parent
        records = []

        def cell() -> tuple[dict, dict]:
            summary, recs = _evaluate(cfg, pairs)
            records.extend(recs)
            summary["records"] = str(save_table(recs, out_dir / "records.parquet"))
            atomic_write_json(out_dir / "summary.json", summary)
            return {"summary": summary}, {"records": summary["records"], "summary": out_dir / "summary.json"}

        try:
            label = Path(cfg.model).name + (f"+{cfg.sparsity.mode}" if cfg.sparsity else "")
            row, _ = run.ledger.run_cell(STAGE, label, config_hash(cfg), cell)
        finally:
            run.close()
        summary = row.metrics["summary"]
        if out_path and not records:
            records = load_table(out_dir / "records.parquet")
    if out_path:
        summary["records"] = str(save_table(records, out_path))
    return summary
