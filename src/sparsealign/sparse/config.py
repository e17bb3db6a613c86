"""Typed settings of the sparsify stage (one `SparsityConfig`, YAML-loadable, hashed into the run directory)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sparsealign.config import StrictModel

Mode = Literal["static", "dynamic", "predictor"]
Prefill = Literal["dense", "sparse"]


class PredictorConfig(StrictModel):
    """Per-layer low-rank predictor x -> rank r -> I logits of "neuron above threshold" (PowerInfer / Deja Vu)."""

    enabled: bool = Field(False, description="train predictors during calibration (needed for mode=predictor)")
    rank: int = Field(64, ge=1, description="hidden width of the predictor (cost 2*(H*r + r*I) FLOPs per token)")
    recall_target: float = Field(0.95, gt=0, le=1, description="fraction of truly active neurons the cut-off keeps")
    epochs: int = Field(30, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(512, ge=1)
    val_fraction: float = Field(0.25, gt=0, lt=1, description="calibration tokens held out to set the cut-off")


class ControllerConfig(StrictModel):
    """Online per-layer threshold controller (log-space stochastic-approximation quantile tracker)."""

    step: float = Field(0.05, gt=0, le=1, description="eta: log-threshold change per token per unit of error")
    warmup_tokens: int = Field(32, ge=0, description="first tokens a layer sees use warmup_step instead of step")
    warmup_step: float = Field(0.2, gt=0, le=2, description="larger step while warming up, for fast initial lock-on")
    max_ratio: float = Field(16.0, gt=1, description="threshold stays within [t0/max_ratio, t0*max_ratio]")
    ema: float = Field(0.95, ge=0, lt=1, description="smoothing of the realized sparsity reported in the trace")
    frozen: bool = Field(False, description="never update: identical to mode=static (the reproducible baseline)")


class SparsityConfig(StrictModel):
    """What to calibrate: target sparsity of the FFN intermediate, data budget, allocation and predictor settings."""

    target_sparsity: float = Field(0.5, ge=0, lt=1, description="fraction of FFN neurons skipped per token")
    allocation: Literal["uniform", "greedy"] = Field(
        "uniform", description="uniform: every layer at the target; greedy: TEAL-style per-layer allocation"
    )
    greedy_step: float = Field(0.05, gt=0, lt=1, description="sparsity increment per greedy step")
    max_length: int = Field(256, ge=2, description="tokens per calibration text (longer texts are truncated)")
    max_tokens: int = Field(8192, ge=16, description="calibration tokens recorded per layer (memory: N*(H+I)*4 B)")
    hot_fraction: float = Field(0.8, gt=0, le=1, description="a neuron is hot if active on >= this fraction")
    seed: int = 0
    predictor: PredictorConfig = PredictorConfig()
    controller: ControllerConfig = ControllerConfig()
