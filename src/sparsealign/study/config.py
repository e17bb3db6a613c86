"""The study config: which model family, which alignment methods, which sparsity grid, which evaluations, where.

One YAML file names the whole grid.  `sparsealign study` (no flags) loads the packaged `default.yaml`: the embedded
micro family, sized to finish in about 10 minutes on a 2-core laptop.  `paper.yaml` is the real study (Llama-2 /
ReluLLaMA 7B-70B on a cluster).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sparsealign.config import StrictModel

Method = Literal["dpo", "orpo", "simpo", "rdpo", "rorpo", "rsimpo"]
Mode = Literal["static", "dynamic", "predictor"]
RATIONALE_METHODS = {"rdpo", "rorpo", "rsimpo"}
PRESETS = ("default", "small", "paper")


def _distinct(values: list, fmt: str) -> list:
    """Each value names cells and directories: two that print the same would overwrite each other's results."""
    seen: dict[str, object] = {}
    for v in values:
        tag = fmt.format(v)
        if tag in seen:
            same = f"{v} is listed twice" if v == seen[tag] else f"{seen[tag]} and {v} name the same cells ({tag})"
            raise ValueError(f"{same}; list each value once")
        seen[tag] = v
    return values


class FamilyConfig(StrictModel):
    kind: Literal["micro", "hf"] = "micro"
    preset: str = Field("micro", description="micro-family preset passed to `sparsealign pretrain` (kind=micro)")
    sizes: list[str] = Field(default_factory=list, description="subset of the preset's sizes; empty = all")
    models: dict[str, str] = Field(
        default_factory=dict, description="kind=hf: size name -> local path or hub id (e.g. 7b: meta-llama/Llama-2-7b-hf)"
    )
    params: dict[str, float] = Field(default_factory=dict, description="kind=hf: size name -> parameter count")
    pretrain_steps: int | None = Field(None, ge=1, description="override the preset's pretraining steps")

    @model_validator(mode="after")
    def _hf_needs_models(self) -> FamilyConfig:
        if self.kind == "hf" and not self.models:
            raise ValueError("family.kind=hf needs family.models (size name -> path or hub id)")
        return self


class AlignmentConfig(StrictModel):
    methods: list[Method] = Field(default_factory=lambda: ["dpo", "orpo", "simpo", "rdpo", "rorpo"])
    preference_data: str = "hh-rlhf/helpful-base/test.jsonl.gz"
    max_pairs: int = Field(600, ge=8, description="preference pairs used for training (before subsetting)")
    heldout_pairs: int = Field(200, ge=8, description="held-out human pairs for accuracy / divergence")
    code_pair_tasks: int = Field(120, ge=4, description="MBPP train/validation + generated tasks sampled for code pairs")
    code_pair_samples: int = Field(4, ge=2, description="samples per task used to find a passing and a failing one")
    subsets: list[float] = Field(default_factory=lambda: [1 / 9, 1 / 3, 1.0])
    subset_methods: list[Method] = Field(default_factory=lambda: ["dpo", "rdpo"])
    settings: dict[str, object] = Field(default_factory=dict, description="AlignConfig overrides for every method")
    lora: bool = False

    @field_validator("methods", "subset_methods")
    @classmethod
    def _methods_distinct(cls, v: list[str]) -> list[str]:
        return _distinct(v, "{}")

    @field_validator("subsets")
    @classmethod
    def _subsets_range(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError("subsets must be fractions in (0, 1]")
        return _distinct(v, "{:.3f}")  # cell keys and directories carry f<frac:.3f>

    @model_validator(mode="after")
    def _subsets_valid(self) -> AlignmentConfig:
        if 1.0 not in self.subsets:
            self.subsets = [*self.subsets, 1.0]
        missing = set(self.subset_methods) - set(self.methods)
        if missing:
            raise ValueError(f"alignment.subset_methods {sorted(missing)} are not in alignment.methods")
        return self


class SparsityConfig(StrictModel):
    targets: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.9])
    modes: list[Mode] = Field(default_factory=lambda: ["static", "dynamic"])
    calibration_texts: int = Field(64, ge=4, description="code snippets (MBPP train solutions) for calibration")
    prefill: Literal["dense", "sparse"] = "dense"

    @field_validator("targets")
    @classmethod
    def _targets_valid(cls, v: list[float]) -> list[float]:
        if any(not 0 < t < 1 for t in v):
            raise ValueError("targets must be in (0, 1); dense (0) is always evaluated")
        return _distinct(v, "{:.2f}")  # cell keys and artifact dirs carry <target:.2f>

    @field_validator("modes")
    @classmethod
    def _modes_distinct(cls, v: list[str]) -> list[str]:
        return _distinct(v, "{}")


class EvaluationConfig(StrictModel):
    mbpp_split: Literal["test", "validation", "train"] = "test"
    mbpp_limit: int | None = Field(100, ge=1, description="MBPP tasks evaluated per cell (None = whole split)")
    generated_tasks: int = Field(100, ge=0, description="generated MBPP-format tasks (reported separately)")
    max_new_tokens: int = Field(96, ge=8)
    max_length: int = Field(256, ge=16, description="tokens of prompt + response scored per pair (align and eval)")
    max_prompt_length: int = Field(160, ge=8, description="prompt tokens kept (from the end) when a pair is too long")
    prompt_format: Literal["lm-eval", "bigcode"] = "lm-eval"
    shots: int = Field(3, ge=0, le=3, description="lm-eval few-shot examples (3 = the harness; the micro family "
                       "is pretrained on the 0-shot query)")
    preference_sets: list[str] = Field(
        default_factory=lambda: ["hh-rlhf/helpful-base/test.jsonl.gz", "ultrafeedback_binarized/train_clean.jsonl"]
    )
    bootstrap: int = Field(1000, ge=100)
    speed_tokens: int = Field(32, ge=4, description="decode tokens timed for tokens/s")
    sandbox_workers: int = Field(2, ge=1)


class ExecutorConfig(StrictModel):
    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster address (None = start a local Ray)")
    cpus_per_cell: float = Field(1.0, gt=0)
    gpus_per_cell: float = Field(0.0, ge=0)


# `--set beta=0.2` on a study means the alignment hyper-parameter, which lives in alignment.settings
_ALIGN_SETTING_ALIASES = {k: f"alignment.settings.{v}" for k, v in {
    "beta": "beta", "lr": "lr", "learning_rate": "lr", "batch_size": "batch_size",
    "per_device_train_batch_size": "batch_size", "grad_accum": "grad_accum", "gradient_accumulation_steps":
    "grad_accum", "epochs": "epochs", "num_train_epochs": "epochs", "lora_r": "lora.r"}.items()}


class StudyConfig(StrictModel):
    set_aliases = _ALIGN_SETTING_ALIASES
    name: str = "default"
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads per cell; default 1 for the micro family "
                                "(its matmuls are too small to gain from more; the sandbox uses the other core), "
                                "all cores for hf models")
    family: FamilyConfig = FamilyConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    sparsity: SparsityConfig = SparsityConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    executor: ExecutorConfig = ExecutorConfig()


def preset_path(name: str) -> Path:
    """Packaged study presets: default (micro, ~10 min on 2 cores), small (larger micro grid), paper (cluster)."""
    if name not in PRESETS:
        from sparsealign.errors import UserError

        raise UserError(f"unknown study preset {name!r}", hint=f"use one of {', '.join(PRESETS)} or a YAML path")
    return Path(str(resources.files("sparsealign") / "configs" / f"study-{name}.yaml"))
