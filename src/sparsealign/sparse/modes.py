"""Sparsity modes, declared once (stdlib only: the CLIs read it without torch).

A mode is how the runtime picks, token by token, the FFN neurons it computes from calibrated artifacts.  Each mode
is one `ModeFacts` row of `MODE_FACTS`; everything else asks the facts, never the name:

    --mode / --modes choices and help        sparse.options, sparse.cli, sparse.bench.cli (MODES, mode_help)
    the typed configs (`Mode`)                sparse.spec.SparsitySpec, study.config (sparsity.modes, contrasts)
    the runtime                               sparse.runtime.patch / state: `facts(mode).controller`, `.predictor`
    FLOP counts, artifacts' usable modes      sparse.metrics.ffn_flops, sparse.spec.describe_artifacts
    the study's calibrate cell                study.cells: trains predictors when a mode of the grid needs them
    the report                                report.figures (line, marker), report.findings / scaling (DYNAMIC
                                              against its BASELINE: question (b))

Adding a mode is one row here, plus the runtime code of whatever new behaviour its facts combine
(docs/architecture.md, "Adding a sparsity mode").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from sparsealign.errors import UserError


@dataclass(frozen=True)
class ModeFacts:
    """What a sparsity mode is and needs."""

    help: str  # a phrase for --help and the docs
    controller: bool  # the thresholds move online (sparse.runtime.controller), starting from the calibrated ones
    predictor: bool  # a low-rank predictor picks the neurons computed: the artifacts must carry predictors
    # (calibrated with predictor.enabled; the study's calibrate cell trains them when a mode of its grid needs them)
    baseline: str | None = None  # the mode this one is contrasted with (the report's question (b))
    line: str = "-"  # the report's figures: matplotlib line style and marker
    marker: str = "o"


MODE_FACTS: dict[str, ModeFacts] = {
    "static": ModeFacts("calibrated per-layer thresholds", controller=False, predictor=False, line="--", marker="s"),
    "dynamic": ModeFacts("an online controller moves the thresholds to hold the target", controller=True,
                         predictor=False, baseline="static"),
    "predictor": ModeFacts("a low-rank predictor's active set, within the calibrated thresholds", controller=False,
                           predictor=True, line=":", marker="^"),
}
MODES: tuple[str, ...] = tuple(MODE_FACTS)
Mode = Literal[MODES]  # type: ignore[valid-type]

# The roles the study and the report compare by: the controller mode (the study's default sparse mode) against the
# fixed thresholds it starts from.
DYNAMIC = next(m for m, f in MODE_FACTS.items() if f.baseline is not None)
STATIC: str = MODE_FACTS[DYNAMIC].baseline  # type: ignore[assignment]


def facts(mode: str, where: str = "") -> ModeFacts:
    """The facts of `mode`; an unknown mode is a one-line error (prefixed by `where`, e.g. the flag) listing the
    declared ones."""
    if mode not in MODE_FACTS:
        raise UserError(f"{where + ': ' if where else ''}unknown sparsity mode {mode!r}; expected one of "
                        f"{', '.join(MODES)}")
    return MODE_FACTS[mode]


def needs_predictors(modes: Iterable[str]) -> bool:
    """Whether artifacts for these modes must carry predictors."""
    return any(facts(m).predictor for m in modes)


def usable_modes(has_predictors: bool) -> list[str]:
    """The modes artifacts with (or without) predictors can run."""
    return [m for m, f in MODE_FACTS.items() if has_predictors or not f.predictor]


def mode_help() -> str:
    """`static (calibrated per-layer thresholds), dynamic (...) or predictor (...)`: the --mode help."""
    parts = [f"{m} ({f.help})" for m, f in MODE_FACTS.items()]
    return ", ".join(parts[:-1]) + f" or {parts[-1]}" if len(parts) > 1 else parts[0]
