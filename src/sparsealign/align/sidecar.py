"""What a trained model needs for its evaluation, written beside it: `<model>/sparsealign_alignment.json`.

An evaluator scores a model with the implicit reward of the loss it was trained with (DPO β·log π/π_ref, SimPO
β/|y|·log π, ORPO log-odds), so it needs the method, the β actually used, SimPO's γ/β and the reference model.
These are read back from the file, never re-derived from defaults (a `--set beta=0.2` run is scored with 0.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from sparsealign.align.config import AlignConfig, Method, facts
from sparsealign.config import StrictModel
from sparsealign.errors import UserError
from sparsealign.io import atomic_write_json

FILENAME = "sparsealign_alignment.json"


class AlignmentRecord(StrictModel):
    method: Method
    beta: float  # resolved: the β the loss used (ORPO's reward ignores it)
    lam: float
    gamma_beta_ratio: float
    reference: str | None  # the frozen reference policy (DPO/RDPO), None for reference-free methods
    rationale: Literal["none", "mean", "sum"]  # rationale NLL normalisation, "none" when the method has no rationale
    rationale_weight: float
    base_model: str
    seed: int


def record_of(cfg: AlignConfig) -> AlignmentRecord:
    loss = facts(cfg.method)  # the declared facts, not the loss object: readers of the record need no torch
    return AlignmentRecord(
        method=cfg.method, beta=loss.default_beta if cfg.beta is None else cfg.beta, lam=cfg.lam, gamma_beta_ratio=cfg.gamma_beta_ratio,
        reference=(cfg.ref_model or cfg.model) if loss.needs_reference else None,
        rationale=cfg.rationale_norm if loss.uses_rationale else "none", rationale_weight=cfg.rationale_weight,
        base_model=cfg.model, seed=cfg.seed,
    )


def write_record(model_dir: str | Path, cfg: AlignConfig) -> Path:
    return atomic_write_json(Path(model_dir) / FILENAME, record_of(cfg).model_dump(mode="json"))


def read_record(model: str | Path) -> AlignmentRecord | None:
    """The record beside a local model directory; None for a model this toolkit did not train (or a hub id)."""
    path = Path(model) / FILENAME
    if not path.is_file():
        return None
    try:
        return AlignmentRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        raise UserError(f"{path}: field '{field}': {err.get('msg')}",
                        hint="re-run the alignment that wrote it, or delete the file and pass --method/--beta") from None
