"""Typed settings of the sparsify stage (one `SparsityConfig`, YAML-loadable, hashed into the run directory).
The modes these artifacts serve are declared in `sparse.modes`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sparsealign.config import StrictModel

Prefill = Literal["dense", "sparse"]
# What can be thresholded (see docs/sparse.md): the FFN intermediate |act(gate x)| (CATS, per neuron), the FFN's
# hidden-state input x (TEAL: gate/up read only active columns), the attention block's input (q/k/v columns) and
# the attention output (o_proj columns).
Site = Literal["intermediate", "ffn_input", "attn_input", "attn_output"]
SITES: tuple[str, ...] = ("intermediate", "ffn_input", "attn_input", "attn_output")


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
    """Online per-row, per-channel threshold controller: log-scale tracker + Robbins-Monro bias correction."""

    step: float = Field(0.05, gt=0, le=1, description="eta: bias-correction change per token per unit of error")
    track: float = Field(0.2, gt=0, le=1, description="alpha: weight of each token's own quantile in the scale")
    warmup_tokens: int = Field(16, ge=0, description="first tokens of a row use the warmup_* rates")
    warmup_step: float = Field(0.2, gt=0, le=2, description="eta while warming up, for fast initial lock-on")
    warmup_track: float = Field(0.5, gt=0, le=1, description="alpha while warming up")
    band: float = Field(1.0, gt=0, description="correction learns only while |log q_k - log t_k| <= band")
    max_ratio: float = Field(16.0, gt=1, description="bias correction stays within [1/max_ratio, max_ratio]")
    ema: float = Field(0.95, ge=0, lt=1, description="smoothing of the realized sparsity reported in the trace")
    frozen: bool = Field(False, description="never update: identical to mode=static (the reproducible baseline)")


class SparsityConfig(StrictModel):
    """What to calibrate: target sparsity of the FFN intermediate, data budget, allocation and predictor settings."""

    target_sparsity: float = Field(0.5, ge=0, lt=1, description="fraction of FFN neurons skipped per token")
    sites: list[Site] = Field(["intermediate"], min_length=1,
                              description="what is thresholded: intermediate, ffn_input, attn_input, attn_output")
    input_sparsity: float | None = Field(None, ge=0, lt=1,
                                         description="target of the input sites (default: target_sparsity)")
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

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"sites {v}: each site at most once")
        return v

    def site_target(self, site: str) -> float:
        """Target sparsity of one site (0 for a site that is not sparsified)."""
        if site not in self.sites:
            return 0.0
        if site == "intermediate" or self.input_sparsity is None:
            return self.target_sparsity
        return self.input_sparsity
