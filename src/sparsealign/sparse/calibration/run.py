"""`run_calibrate`: the calibrate stage as one runner, called by `sparsify calibrate` and by the study's cells.

    texts -> record activations once -> per target: thresholds (+ greedy allocation, predictors) -> artifacts dir

One target writes its artifacts (and, optionally, the activation profile) to `out_dir`; several targets share one
recording and write `out_dir/t<target:.2f>/` each (the study's layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from sparsealign.config import StrictModel
from sparsealign.models.loading import LoadSettings, load_model
from sparsealign.sparse.artifacts import SparsityArtifacts, save_artifacts, target_dir
from sparsealign.sparse.calibration.calibrate import calibrate, record_activations
from sparsealign.sparse.calibration.profile import build_profile, save_profile
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.spec import describe_artifacts
from sparsealign.sparse.texts import load_texts


class CalibrateRunConfig(StrictModel):
    model: str = Field(..., description="model directory or hub id")
    texts: str = Field("mbpp", description="text source (see sparsealign.sparse.texts), unless texts are passed")
    n: int = Field(64, ge=1)
    skip: int = Field(0, ge=0)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    targets: list[float] | None = Field(None, description="several targets from one recording (out_dir/t<target>)")
    profile: bool = Field(True, description="also write the activation profile (single target: out_dir/profile)")
    load: LoadSettings = Field(default_factory=LoadSettings, description="how the model is loaded")


def run_calibrate(cfg: CalibrateRunConfig, out_dir: str | Path, *, texts: Sequence[str] | None = None,
                  loaded: tuple[Any, Any] | None = None) -> dict[float, SparsityArtifacts]:
    """Calibrate and save; returns the artifacts per target.  `texts` / `loaded` (model, tokenizer) override the
    config's text source and model loading (the study passes its own calibration texts and model)."""
    if texts is None:
        texts = load_texts(cfg.texts, cfg.n, cfg.skip)
        source = {"source": cfg.texts, "n": len(texts), "skip": cfg.skip}
    else:
        source = {"source": "given", "n": len(texts)}
    model, tok = loaded if loaded is not None else load_model(cfg.model, cfg.load)
    base = cfg.sparsity
    rec = record_activations(model, tok, texts, max_length=base.max_length, max_tokens=base.max_tokens,
                             sites=base.sites)
    several = cfg.targets is not None
    out: dict[float, SparsityArtifacts] = {}
    for target in cfg.targets if several else [base.target_sparsity]:
        sp = base.model_copy(update={"target_sparsity": target}) if several else base
        art = calibrate(model, tok, texts, sp, recording=rec)
        where = target_dir(out_dir, target) if several else Path(out_dir)
        if not several:
            art.calibration["texts"] = source
        art.model_info.update(describe_artifacts(art, model, cfg.model))  # self-describing: refused on another model
        save_artifacts(art, where)
        if cfg.profile:
            save_profile(build_profile(rec, art.thresholds, sp.hot_fraction), where / "profile")
        out[target] = art
    return out
