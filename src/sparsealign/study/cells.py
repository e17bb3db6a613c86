"""Expand a study config into a DAG of cells.

A cell is the unit the ledger tracks and the executor schedules: it reads its dependencies' files from the run
directory and writes its own.  Stages, in data-flow order:

    pretrain:family                          base models (micro family: pretrained here, cached; hf: paths)
    pairs:<size>                             alignment data: HH train pairs + execution-feedback code pairs
    align:<size>/<method>/<frac>             aligned model (method 'base' = no alignment, not a cell)
    calibrate:<size>/<method>                sparsity artifacts (thresholds per target, predictors)
    eval:<size>/<method>/<frac>/<mode>/<s>   metrics for one model x one sparsity setting
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsealign.study.config import StudyConfig

BASE = "base"


@dataclass(frozen=True)
class Cell:
    stage: str
    key: str
    size: str
    method: str = BASE
    subset: float = 1.0
    mode: str = "dense"
    sparsity: float = 0.0
    deps: tuple[str, ...] = field(default=())

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.key}"


def frac_tag(frac: float) -> str:
    return f"f{frac:.3f}"


def sizes_of(cfg: StudyConfig) -> list[str]:
    if cfg.family.kind == "hf":
        names = list(cfg.family.models)
    else:
        from sparsealign.models.micro import get_recipe

        names = [spec.name for spec in get_recipe(cfg.family.preset).sizes]
    if cfg.family.sizes:
        unknown = [s for s in cfg.family.sizes if s not in names]
        if unknown:
            from sparsealign.errors import ConfigError

            raise ConfigError(f"family.sizes: unknown size(s) {unknown}; allowed values: {', '.join(names)}")
        names = [s for s in names if s in cfg.family.sizes]
    return names


def expand(cfg: StudyConfig) -> list[Cell]:
    """All cells in a valid topological order (dependencies first)."""
    cells: list[Cell] = []
    a, sp = cfg.alignment, cfg.sparsity
    pre = Cell("pretrain", "family", "*")
    cells.append(pre)
    for size in sizes_of(cfg):
        pairs = Cell("pairs", size, size, deps=(pre.id,))
        cells.append(pairs)
        models: list[tuple[str, float, tuple[str, ...]]] = [(BASE, 1.0, (pre.id,))]
        for method in a.methods:
            fracs = sorted(set(a.subsets)) if method in a.subset_methods else [1.0]
            for frac in fracs:
                al = Cell("align", f"{size}/{method}/{frac_tag(frac)}", size, method, frac, deps=(pairs.id,))
                cells.append(al)
                models.append((method, frac, (al.id,)))
        for method, frac, model_deps in models:
            ekey = f"{size}/{method}/{frac_tag(frac)}"
            dense = Cell("eval", f"{ekey}/dense/0.00", size, method, frac, deps=(*model_deps, pairs.id))
            cells.append(dense)
            if frac != 1.0:
                continue  # annotation-efficiency models are compared dense only
            cal = Cell("calibrate", f"{size}/{method}", size, method, frac, deps=model_deps)
            cells.append(cal)
            for mode in sp.modes:
                for target in sp.targets:
                    cells.append(
                        Cell("eval", f"{ekey}/{mode}/{target:.2f}", size, method, frac, mode, target,
                             deps=(cal.id, dense.id))
                    )
    return cells
