"""`AlignConfig`: everything one alignment cell needs (light module: pydantic only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from sparsealign.config import StrictModel


@dataclass(frozen=True)
class MethodFacts:
    """What a method is, declared once.  The loss objects (`sparsealign.align.losses.LOSSES`) are built from these
    and answer for them; light consumers (CLI choices, `study plan`, the study config) read them without torch."""

    base: str  # the preference loss: dpo, orpo or simpo
    needs_reference: bool  # DPO: the reward is relative to a frozen reference policy
    uses_rationale: bool  # R*: adds γ_r·NLL(rationale), needs a rationale per pair (arXiv 2407.14477)
    default_beta: float  # β when the config leaves it unset (SimPO paper: β in [2, 2.5] with γ/β = 0.5)
    reward_uses_beta: bool  # ORPO's log-odds reward carries no β
    label: str  # the name in help texts and docs: DPO, RSimPO, ...


# base loss: (needs a reference, default β, reward carries β, label); each also comes as its rationale variant r<base>
_BASES = {"dpo": (True, 0.1, True, "DPO"), "orpo": (False, 0.1, False, "ORPO"), "simpo": (False, 2.0, True, "SimPO")}
METHOD_FACTS = {
    f"{prefix}{base}": MethodFacts(base, ref, prefix == "r", beta, scaled, prefix.upper() + label)
    for prefix in ("", "r") for base, (ref, beta, scaled, label) in _BASES.items()
}
METHODS = tuple(METHOD_FACTS)  # dpo, orpo, simpo, rdpo, rorpo, rsimpo
Method = Literal[METHODS]  # type: ignore[valid-type]
RATIONALE_METHODS = tuple(m for m, f in METHOD_FACTS.items() if f.uses_rationale)
REFERENCE_METHODS = tuple(m for m, f in METHOD_FACTS.items() if f.needs_reference)
LABELS = ", ".join(f.label for f in METHOD_FACTS.values())  # DPO, ORPO, SimPO, RDPO, RORPO, RSimPO
# The method the others are measured against (the report's methods-vs table, the annotation saving of the rationale
# methods): DPO, the established baseline of preference alignment.
BASELINE_METHOD = "dpo"
assert BASELINE_METHOD in METHOD_FACTS


def facts(method: str) -> MethodFacts:
    if method not in METHOD_FACTS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return METHOD_FACTS[method]


class LoraSettings(StrictModel):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class AlignConfig(StrictModel):
    model_config = ConfigDict(**StrictModel.model_config, populate_by_name=True)

    method: Method = "dpo"
    model: str = Field(..., description="local path or hub id of a causal LM")
    ref_model: str | None = Field(None, description="reference for DPO/RDPO; default: the initial policy")
    data: str = Field(..., description="preference pairs (file or hub id, see `data inspect`)")
    data_split: str | None = None
    eval_data: str | None = None
    eval_split: str | None = None
    max_pairs: int | None = Field(None, gt=0)
    max_eval_pairs: int | None = Field(None, gt=0)
    # loss
    beta: float | None = Field(None, gt=0, description="DPO/SimPO β; default 0.1 (DPO) or 2.0 (SimPO)")
    lam: float = Field(0.1, ge=0, alias="lambda", description="ORPO λ (weight of the odds-ratio term)")
    gamma_beta_ratio: float = Field(0.5, ge=0, description="SimPO γ/β (TRL's simpo_gamma is the absolute γ)")
    rationale_weight: float = Field(1.0, ge=0, description="γ_r of the rationale NLL term")
    rationale_norm: Literal["mean", "sum"] = "mean"
    randomize_rationale_order: bool = True
    missing_rationales: Literal["error", "skip"] = Field(
        "error", description="rationale methods on pairs without a rationale: error (default), or skip = the "
        "rationale term is 0 for those pairs (mixed data, e.g. human pairs + execution-feedback code pairs)")
    # tokenisation
    max_length: int = Field(512, gt=1)
    max_prompt_length: int = Field(256, gt=0)
    max_rationale_tokens: int = Field(128, gt=0)
    rationale_max_length: int = Field(1024, gt=1)
    chat_template: bool = True
    # optimisation
    lr: float = Field(5e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    batch_size: int = Field(4, gt=0, description="per-device pairs per step")
    eval_batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    warmup: float = Field(0.0, ge=0, description="warmup steps (int) or ratio of total steps (<1)")
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False
    bf16: bool | None = Field(None, description="bf16 mixed precision; default: when the hardware has it")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    seed: int = 0
    # bookkeeping
    logging_steps: int = Field(10, gt=0)
    eval_steps: int | None = Field(None, gt=0, description="evaluate every N steps (default: start and end only)")
    save_steps: int = Field(200, gt=0)
    save_total_limit: int = Field(2, gt=0)
    report_to: list[str] = Field(default_factory=list, description="tensorboard, wandb, mlflow, ...")
    cell: str | None = Field(None, description="ledger cell / output folder name (default: the method)")

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_flag(cls, v: object) -> object:
        """`lora: true` (the study's spelling) = LoRA with default settings; `false` = full fine-tune."""
        if isinstance(v, bool):
            return {} if v else None
        return v

    @model_validator(mode="after")
    def _check(self) -> AlignConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})")
        return self

    @property
    def cell_name(self) -> str:
        return self.cell or self.method
