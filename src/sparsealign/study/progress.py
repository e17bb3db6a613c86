"""The study's time-left estimate: each cell's work in its stage's units, priced by the ledger's measured seconds.

Cells differ by orders of magnitude (a pretrain lookup vs an eval cell generating 500 MBPP programs), so counting
cells says nothing about time.  `cell_units` sizes each cell from the config in units of its stage (generated tasks,
scored references and pairs for eval cells; pair-epochs for align cells; ...); `Eta` prices the cells not yet done
at the seconds per unit that the same stage's finished cells took (this run's ledger: a resumed run knows its rates
at once), falling back to the run's overall rate for a stage with nothing finished yet.  The unit weights inside an
eval cell are relative costs measured on SmolLM2-135M (docs/study.md, "Budget per unit"): one scored reference
solution ~0.4 and one scored pair ~0.3 of a generated MBPP task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sparsealign.align.config import facts
from sparsealign.study.cells import AlignCell, CalibrateCell, Cell, EvalCell, PairsCell
from sparsealign.study.config import DIALOGUE_SETS, StudyConfig

LIKELIHOOD_WEIGHT = 0.4  # one reference solution scored, in generated-task units
PAIR_WEIGHT = 0.3  # one held-out pair scored
RATIONALE_WEIGHT = 1.5  # a rationale method's pair-epoch (a third sequence per pair)
MBPP_TEST_TASKS = 500
HELD_OUT_MUTANTS = 600
MIN_PRICED_SECONDS = 30.0  # below this, the finished cells were lookups (a cached family): no rate to extrapolate


def _preference_pairs(cell: EvalCell, cfg: StudyConfig) -> float:
    ev, a = cell.evaluation, cfg.alignment
    # held-out code pairs: ~600 reference-vs-mutant pairs (500 MBPP + 200 generated tasks), or 20% of the own
    code = HELD_OUT_MUTANTS if ev.heldout_code == "mutants" else a.code_pair_tasks * 0.2
    sizes = {"hh": a.heldout_pairs, "uf": ev.uf_pairs or 1000, "code": code}
    if not cfg.family.reads_english:
        sizes.update(dict.fromkeys(DIALOGUE_SETS, 0))
    return sum(sizes[name] for name in cell.preference_sets)


def _eval_units(cell: EvalCell, cfg: StudyConfig) -> float:
    ev = cell.evaluation
    generates = cell.generates_mbpp
    mbpp = (ev.mbpp_base_tasks if cell.mbpp_full else ev.mbpp_limit) or MBPP_TEST_TASKS
    tasks = (min(mbpp, MBPP_TEST_TASKS) + ev.generated_tasks) if generates else 0
    likelihood = 0 if cell.subset != 1.0 else min(MBPP_TEST_TASKS, MBPP_TEST_TASKS if ev.likelihood_tasks is None
                                                  else ev.likelihood_tasks)
    return tasks + LIKELIHOOD_WEIGHT * likelihood + PAIR_WEIGHT * _preference_pairs(cell, cfg) + 1


def cell_units(cell: Cell, cfg: StudyConfig) -> float:
    """How much work `cell` is, in its own stage's unit (compared only with cells of the same stage)."""
    a = cfg.alignment
    if isinstance(cell, EvalCell):
        return _eval_units(cell, cfg)
    if isinstance(cell, AlignCell):
        pairs = (a.max_pairs if cfg.family.reads_english else 0) + a.code_pair_tasks
        epochs = a.settings.epochs or 1.0
        return pairs * cell.subset * epochs * (RATIONALE_WEIGHT if facts(cell.method).uses_rationale else 1.0)
    if isinstance(cell, PairsCell):
        rationales = a.max_pairs if a.hh_rationales == "self" and cfg.family.reads_english else 0
        return a.code_pair_tasks * a.code_pair_samples + rationales + 1
    if isinstance(cell, CalibrateCell):
        return cfg.sparsity.calibration_texts * max(1, len(cell.targets))
    return 1.0


@dataclass
class Eta:
    """Seconds left for the cells not yet finished, from the finished cells' measured seconds per unit."""

    units: dict[str, tuple[str, float]]  # cell id -> (stage, units)
    spent: dict[str, list[float]] = field(default_factory=dict)  # stage -> [seconds, units] of finished cells

    @classmethod
    def of(cls, cells: Iterable[Cell], cfg: StudyConfig) -> Eta:
        return cls({c.id: (c.stage, cell_units(c, cfg)) for c in cells})

    def finished(self, cell_id: str, seconds: float | None) -> None:
        stage, units = self.units.pop(cell_id, ("", 0.0))
        if seconds is not None and stage and units > 0:
            acc = self.spent.setdefault(stage, [0.0, 0.0])
            acc[0] += seconds
            acc[1] += units

    def seconds_left(self) -> float | None:
        """The cells left of stages with a measured rate, at that rate (a stage's units mean nothing in another
        stage: an unpriced stage is named by `unpriced`, not guessed); None until finished cells have taken
        MIN_PRICED_SECONDS (a cached lookup prices nothing)."""
        if sum(v[0] for v in self.spent.values()) < MIN_PRICED_SECONDS:
            return None
        left = 0.0
        for stage, units in self.units.values():
            seconds, done = self.spent.get(stage, (0.0, 0.0))
            left += units * seconds / done if done > 0 else 0.0
        return left

    def unpriced(self) -> list[str]:
        """Stages with cells left but none finished yet, in the order their cells come."""
        return list(dict.fromkeys(stage for stage, _ in self.units.values()
                                  if self.spent.get(stage, (0.0, 0.0))[1] <= 0))


def format_left(seconds: float | None, unpriced: Iterable[str] = ()) -> str:
    """`left ~1h07m`; with stages not priced yet, the priced part is a lower bound: `left > ~12m + eval (unpriced)`."""
    if seconds is None:
        return "left: estimating"
    minutes = round(seconds / 60)
    text = f"~{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"~{minutes}m"
    stages = ", ".join(unpriced)
    if stages and minutes == 0:  # nothing priced is left: the whole rest is unpriced
        return f"left: {stages} (unpriced)"
    return f"left > {text} + {stages} (unpriced)" if stages else f"left {text}"
