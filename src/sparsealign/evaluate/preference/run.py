"""One `eval preference` as a resumable unit: load pairs and models, evaluate, write the run directory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sparsealign.config import StrictModel, config_hash
from sparsealign.errors import UserError
from sparsealign.io import atomic_write_json
from sparsealign.sparse.spec import SparsitySpec

STAGE = "eval-preference"


class PreferenceRunConfig(StrictModel):
    model: str
    ref_model: str | None = None
    baseline_model: str | None = None
    sparsity: SparsitySpec | None = Field(None, description="score `model` under activation sparsity; None = dense")
    method: Literal["dpo", "orpo", "simpo", "rdpo", "rorpo", "rsimpo"]
    data: str
    split: str | None = None
    limit: int | None = Field(None, ge=1)
    beta: float | None = None
    tau: float = Field(1.0, gt=0)
    kl_samples: int = Field(0, ge=0)
    kl_max_new_tokens: int = Field(128, ge=1)
    max_length: int = Field(512, ge=8)
    batch_size: int = Field(8, ge=1)
    n_resamples: int = Field(1000, ge=0)
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"


def _evaluate(cfg: PreferenceRunConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from sparsealign.align.logps import TokenizeSettings
    from sparsealign.data.preference import load_pairs
    from sparsealign.evaluate.preference.score import evaluate_preference
    from sparsealign.models.loading import load_model_and_tokenizer

    pairs = load_pairs(cfg.data, split=cfg.split, limit=cfg.limit).pairs
    model, tok = load_model_and_tokenizer(cfg.model, device=cfg.device, dtype=cfg.dtype)
    ref = load_model_and_tokenizer(cfg.ref_model, device=cfg.device, dtype=cfg.dtype)[0] if cfg.ref_model else None
    baseline_path = baseline_of(cfg)
    baseline = (load_model_and_tokenizer(baseline_path, device=cfg.device, dtype=cfg.dtype)[0]
                if baseline_path else None)
    settings = TokenizeSettings(max_length=cfg.max_length, max_prompt_length=cfg.max_length // 2)
    handle = None
    if cfg.sparsity is not None:
        from sparsealign.sparse.spec import apply_spec

        handle = apply_spec(model, cfg.sparsity)
    try:
        # teacher-forced scoring is one multi-position call per batch: every position runs sparse (as in the study)
        with handle.dense_prefix(0) if handle is not None else contextlib.nullcontext():
            summary, records = evaluate_preference(
                model, tok, pairs, cfg.method, ref, beta=cfg.beta, tau=cfg.tau, baseline_model=baseline,
                kl_samples=cfg.kl_samples, kl_max_new_tokens=cfg.kl_max_new_tokens, settings=settings,
                batch_size=cfg.batch_size, n_resamples=cfg.n_resamples, seed=cfg.seed,
            )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    summary.update(model=cfg.model, ref_model=cfg.ref_model, baseline_model=baseline_path, data=cfg.data,
                   sparsity=None)
    if handle is not None:
        stats = handle.stats()
        summary["sparsity"] = {**cfg.sparsity.model_dump(), "realized_sparsity": stats.get("realized_sparsity"),
                               "target_sparsity": handle.info.get("target_sparsity"), "scoring": "all positions sparse"}
        handle.remove()
    return summary, records


def baseline_of(cfg: PreferenceRunConfig) -> str | None:
    """The dense model flips are counted against: --baseline-model, else (under --sparsity) the model itself."""
    if cfg.baseline_model:
        return cfg.baseline_model
    return cfg.model if cfg.sparsity is not None else None


def run_preference(cfg: PreferenceRunConfig, *, name: str | None = None,
                   out_path: str | None = None) -> dict[str, Any]:
    from sparsealign.evaluate.tables import load_table, save_table

    if name is None:
        summary, records = _evaluate(cfg)
    else:
        from sparsealign.rundir import RunDir

        run = RunDir.open(name, STAGE, cfg)
        out_dir = run.path("eval", "preference", "summary.json").parent
        records = []

        def cell() -> tuple[dict, dict]:
            summary, recs = _evaluate(cfg)
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
