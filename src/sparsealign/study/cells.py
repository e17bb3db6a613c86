"""The study as a typed cell graph: each cell carries its own settings and its parent cells (objects, not keys).

A cell is the unit the ledger tracks and the executor schedules; its runner (`study.pipeline.RUNNERS[stage]`) reads
its parents' files from the run directory and writes its own.  Stages, in data-flow order, with the cell ids the
ledger, `--only` and `study plan` use:

    pretrain:family                          PretrainCell   base models (micro: pretrained here, cached; hf: paths)
    pairs:<size>                             PairsCell      HH train pairs + execution-feedback code pairs
    align:<size>/<method>/<frac>             AlignCell      aligned model (the base model is a PretrainCell)
    calibrate:<size>/<method>                CalibrateCell  sparsity artifacts (thresholds per target, predictors)
    eval:<size>/<method>/<frac>/<mode>/<s>   EvalCell       metrics for one model x one sparsity setting
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sparsealign.errors import ConfigError, UserError
from sparsealign.models.micro import get_recipe
from sparsealign.sparse.config import ControllerConfig
from sparsealign.sparse.modes import needs_predictors
from sparsealign.study.config import DIALOGUE_SETS, AlignSettings, EvaluationConfig, FamilyConfig, StudyConfig

BASE = "base"
PREFERENCE_SETS = (*DIALOGUE_SETS, "code")  # held-out preference sets, in the order an eval cell scores them


def frac_tag(frac: float) -> str:
    return f"f{frac:.3f}"


def seed_tag(seed: int) -> str:
    """Path segment of an alignment replicate: none for the first (keys of one-seed studies stay as they were),
    "/s<r>" after the subset for the others (`report.items.parse_cell_key` reads it back)."""
    return f"/s{seed}" if seed else ""


@dataclass(frozen=True, eq=False)
class Cell:
    stage: ClassVar[str] = ""
    size: str

    @property
    def parents(self) -> tuple[Cell, ...]:
        return ()

    @property
    def key(self) -> str:
        return self.size

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.key}"

    @property
    def deps(self) -> tuple[str, ...]:
        """Parent ids: what the ledger checks before the cell runs."""
        return tuple(p.id for p in self.parents)

    @property
    def method(self) -> str:
        """The method of the model this cell works on (`base` until a model-carrying cell says otherwise)."""
        return BASE


@dataclass(frozen=True, eq=False)
class PretrainCell(Cell):
    stage: ClassVar[str] = "pretrain"
    size: str = "*"
    sizes: tuple[str, ...] = ()
    family: FamilyConfig = field(default_factory=FamilyConfig)

    @property
    def key(self) -> str:
        return "family"


@dataclass(frozen=True, eq=False)
class PairsCell(Cell):
    stage: ClassVar[str] = "pairs"
    pretrain: PretrainCell = PretrainCell()

    @property
    def parents(self) -> tuple[Cell, ...]:
        return (self.pretrain,)


@dataclass(frozen=True, eq=False)
class AlignCell(Cell):
    stage: ClassVar[str] = "align"
    pairs: PairsCell = PairsCell("")
    method: str = ""  # type: ignore[assignment]
    subset: float = 1.0
    settings: AlignSettings | None = None  # type: ignore[valid-type]  (resolved from the study config)
    seed: int = 0  # replicate index: trained with study seed + seed

    @property
    def parents(self) -> tuple[Cell, ...]:
        return (self.pairs,)

    @property
    def key(self) -> str:
        return f"{self.size}/{self.method}/{frac_tag(self.subset)}{seed_tag(self.seed)}"


Model = PretrainCell | AlignCell  # where a model comes from: the base family or an alignment


def model_method(model: Model) -> str:
    return model.method if isinstance(model, AlignCell) else BASE


def model_subset(model: Model) -> float:
    return model.subset if isinstance(model, AlignCell) else 1.0


def model_seed(model: Model) -> int:
    return model.seed if isinstance(model, AlignCell) else 0


@dataclass(frozen=True, eq=False)
class CalibrateCell(Cell):
    stage: ClassVar[str] = "calibrate"
    model: Model = PretrainCell()
    targets: tuple[float, ...] = ()
    texts: int = 0
    predictor: bool = False
    controller: ControllerConfig = field(default_factory=ControllerConfig)  # dynamic mode settings, saved with the thresholds

    @property
    def method(self) -> str:  # type: ignore[override]
        return model_method(self.model)

    @property
    def parents(self) -> tuple[Cell, ...]:
        return (self.model,)

    @property
    def key(self) -> str:
        return f"{self.size}/{self.method}{seed_tag(model_seed(self.model))}"


@dataclass(frozen=True, eq=False)
class EvalCell(Cell):
    stage: ClassVar[str] = "eval"
    model: Model = PretrainCell()
    pairs: PairsCell = PairsCell("")
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    mode: str = "dense"
    sparsity: float = 0.0
    prefill: str = "dense"
    calibrate: CalibrateCell | None = None  # sparse cells: their thresholds
    dense: EvalCell | None = None  # sparse cells: the same model dense (flips are measured against it)
    reference: EvalCell | None = None  # dense cells of aligned models: the base model's dense cell, which writes
    # the reference log-probs of the held-out sets (DPO-style implicit rewards) and the base side of KL(aligned||base)


    @property
    def method(self) -> str:  # type: ignore[override]
        return model_method(self.model)

    @property
    def subset(self) -> float:
        return model_subset(self.model)

    @property
    def parents(self) -> tuple[Cell, ...]:
        if self.calibrate is not None and self.dense is not None:
            return (self.calibrate, self.dense)
        return (self.model, self.pairs) + ((self.reference,) if self.reference is not None else ())

    @property
    def preference_sets(self) -> list[str]:
        """Held-out sets this cell scores: all in dense full-data cells, `sparse_sets` elsewhere, never a
        `base_only_sets` one in an aligned model's cell."""
        ev, full = self.evaluation, self.calibrate is None and self.subset == 1.0
        return [n for n in PREFERENCE_SETS if (full or n in ev.sparse_sets)
                and (self.method == BASE or n not in ev.base_only_sets)]

    def _at(self, targets: list[float] | None) -> bool:
        """Dense, or a sparse cell at one of `targets` (None: every target)."""
        return self.calibrate is None or targets is None or any(abs(self.sparsity - t) < 1e-9 for t in targets)

    @property
    def mbpp_full(self) -> bool:
        """Whether this cell generates programs for `mbpp_base_tasks` tasks (dataset mbppfull): the base model
        dense and at the `mbpp_base_full_targets` (every target when unset); the others do `mbpp_limit` tasks."""
        ev = self.evaluation
        return bool(ev.mbpp_base_tasks) and self.method == BASE and self._at(ev.mbpp_base_full_targets)

    @property
    def generates_mbpp(self) -> bool:
        """Full-data cells generate MBPP programs, except aligned models' sparse cells under `sparse_mbpp: base`
        and sparse cells off the `sparse_mbpp_targets`."""
        ev = self.evaluation
        aligned_sparse = ev.sparse_mbpp == BASE and self.calibrate is not None and self.method != BASE
        return self.subset == 1.0 and not aligned_sparse and self._at(ev.sparse_mbpp_targets)

    @property
    def key(self) -> str:
        return (f"{self.size}/{self.method}/{frac_tag(self.subset)}{seed_tag(model_seed(self.model))}/{self.mode}/"
                f"{self.sparsity:.2f}")


def sizes_of(cfg: StudyConfig) -> list[str]:
    if cfg.family.kind != "micro":
        names = list(cfg.family.models)
    else:
        names = [spec.name for spec in get_recipe(cfg.family.preset).sizes]
    if cfg.family.sizes:
        unknown = [s for s in cfg.family.sizes if s not in names]
        if unknown:
            raise ConfigError(f"family.sizes: unknown size(s) {unknown}; allowed values: {', '.join(names)}")
        names = [s for s in names if s in cfg.family.sizes]
    return names


def expand(cfg: StudyConfig) -> list[Cell]:
    """All cells in a valid topological order (parents first)."""
    a, sp = cfg.alignment, cfg.sparsity
    sizes = sizes_of(cfg)
    pre = PretrainCell(sizes=tuple(sizes), family=cfg.family)
    cells: list[Cell] = [pre]
    settings = {m: cfg.align_settings(m) for m in a.methods}
    for size in sizes:
        pairs = PairsCell(size, pre)
        cells.append(pairs)
        models: list[Model] = [pre]
        for method in a.methods:
            for frac in sorted(set(a.subsets)) if method in a.subset_methods else [1.0]:
                for seed in range(a.seeds):
                    al = AlignCell(size, pairs, method, frac, settings[method], seed)
                    cells.append(al)
                    models.append(al)
        base_dense = None
        for model in models:
            reference = base_dense if isinstance(model, AlignCell) else None
            dense = EvalCell(size, model, pairs, cfg.evaluation, prefill=sp.prefill, reference=reference)
            base_dense = base_dense or dense
            cells.append(dense)
            if model_subset(model) != 1.0 or sp.methods is not None and model_method(model) not in {BASE, *sp.methods}:
                continue  # annotation-efficiency models (and methods left out of the sparse grid) stay dense
            cal = CalibrateCell(size, model, tuple(sp.targets), sp.calibration_texts, needs_predictors(sp.modes),
                                sp.controller)
            cells.append(cal)
            cells += [EvalCell(size, model, pairs, cfg.evaluation, mode, target, sp.prefill, cal, dense)
                      for mode in sp.modes for target in sp.targets]
    return cells


def select_cells(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    """`--only` values are cell ids (`eval:<key>`) or stage names; an unknown one is a one-line error."""
    if not only:
        return cells
    known = {c.id for c in cells} | {c.stage for c in cells}
    unknown = [o for o in only if o not in known]
    if unknown:
        raise UserError(f"--only {unknown[0]!r}: no such cell or stage in this study",
                        hint="give a stage (pretrain, pairs, align, calibrate, eval) or a cell id from `study plan`")
    wanted = set(only)
    return [c for c in cells if c.id in wanted or c.stage in wanted]
